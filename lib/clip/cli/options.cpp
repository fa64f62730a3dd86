#include "clip/cli/options.h"

#include "clip/retrieval/collection.h"
#include "clip/train/train.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace clip {

namespace {

std::string fmt_number(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

// A number that must be finite and above (or at least) `lo`: CLI11's own PositiveNumber lets NaN
// through (NaN <= 0 is false), so the checks here parse and test the value themselves.
CLI::Validator finite_number(double lo, bool inclusive, double hi = 0, bool has_hi = false) {
  std::string desc = std::string("finite, ") + (inclusive ? ">= " : "> ") + fmt_number(lo);
  if (has_hi) desc += ", < " + fmt_number(hi);
  return CLI::Validator(
      [=](std::string& in) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double v = std::strtod(in.c_str(), &end);
        if (in.empty() || end != in.c_str() + in.size()) return "'" + in + "' is not a number";
        if (!std::isfinite(v)) return "'" + in + "' is not a finite number";
        if (inclusive ? v < lo : v <= lo)
          return "'" + in + "' must be " + (inclusive ? "at least " : "greater than ") + fmt_number(lo);
        if (has_hi && v >= hi) return "'" + in + "' must be less than " + fmt_number(hi);
        return std::string();
      },
      desc);
}

}  // namespace

void add_version_flag(CLI::App& app) { app.set_version_flag("--version", app.get_name() + " " + CLIP_VERSION); }

void add_search_options(CLI::App& app, std::vector<std::string>& index, SearchOptions& so, const std::string& index_help) {
  app.add_option("--index", index, index_help + "; repeat it to search several stores (shards) as one, ids unique across them")
      ->required();
  app.add_flag("--exact", so.exact, "Scan the float rows even when an approximate index (STORE.ann) or int8 file (STORE.i8) is beside the store");
  app.add_option("--nprobe", so.ann.nprobe, "IVF lists an approximate index visits per query (default: faiss's, 1)")
      ->check(CLI::PositiveNumber);
  app.add_option("--ef", so.ann.ef, "HNSW efSearch of an approximate index (default: faiss's, 16)")->check(CLI::PositiveNumber);
  app.add_option("--candidates", so.candidates,
                 "Rows an approximate or int8 search re-scores exactly per query (default max(4k, 64))")
      ->check(CLI::PositiveNumber);
  app.add_option("--search-device", so.device,
                 "Where the store is searched: cpu, cuda or cuda:N (default: --device). On a GPU the rows are held "
                 "there in float16 and searched exactly");
}

void add_model_options(CLI::App& app, ModelOptions& mo, bool checkpoint_required, const std::string& checkpoint_help) {
  auto* c = app.add_option("--checkpoint,-c", mo.checkpoint,
                           checkpoint_help.empty()
                               ? "Checkpoint: cn_clip .pt (torch.save), or a Hugging Face ChineseCLIP folder, "
                                 "model.safetensors or pytorch_model.bin"
                               : checkpoint_help);
  if (checkpoint_required) c->required();
  app.add_option("--vision-model", mo.vision_model,
                 "Vision tower: an official name (ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336, ViT-H-14, RN50) or a "
                 "cn_clip JSON config. Default: the config the checkpoint carries, else inferred from its shapes");
  app.add_option("--text-model", mo.text_model,
                 "Text tower: an official name (RoBERTa-wwm-ext-base-chinese, RoBERTa-wwm-ext-large-chinese, "
                 "RBT3-chinese) or a cn_clip JSON config. Default: as --vision-model");
  app.add_option("--vocab", mo.vocab,
                 "BERT vocab.txt or a Hugging Face tokenizer.json (default: vocab.txt, else tokenizer.json, beside the "
                 "checkpoint, beside the --text-model config, or in the data folder)");
  app.add_option("--context-length", mo.context_length, "Text context length in tokens, [CLS] and [SEP] included")
      ->capture_default_str()
      ->check(CLI::Range(3, 512));
}

void add_runtime_options(CLI::App& app, RuntimeOptions& ro, const RuntimeFlags& f) {
  if (!f.default_precision.empty()) ro.precision = f.default_precision;
  app.add_option("--threads,-j", ro.threads, "CPU threads (0 = all cores)")->capture_default_str()->check(CLI::NonNegativeNumber);
  if (f.device) app.add_option("--device", ro.device, "cpu, cuda or cuda:N")->capture_default_str();
  if (f.precision) {
    std::string help = "Precision:";
    for (const auto& p : f.precisions) help += " " + p;
    help += " " + f.precision_help;
    app.add_option("--precision", ro.precision, help)->capture_default_str()->check(CLI::IsMember(f.precisions));
  }
  if (f.batch_size)
    app.add_option("--batch-size,-b", ro.batch_size, f.batch_help)->capture_default_str()->check(CLI::PositiveNumber);
  app.add_flag("--quiet,-q", ro.quiet, "Only errors on stderr");
  app.add_flag("--verbose,-v", ro.verbose, "Debug messages on stderr");
}

void add_image_options(CLI::App& app, ImageOptions& io) {
  app.add_option_function<std::string>(
         "--decode", [&io](const std::string& v) { parse_decode_mode(v, io.decode); },
         "Image decoding for the model: exact (Pillow's settings, pixels bit-identical to cn_clip), fast (JPEG: "
         "libjpeg-turbo decodes at the smallest scale M/8 keeping both sides >= the model resolution, fast IDCT, no "
         "fancy upsampling; other formats as exact) or device (decoded as exact, the bicubic resize on the model's "
         "device: the GPU with --device cuda; clip-index only, elsewhere as exact); their distance to exact: "
         "docs/benchmarks.md")
      ->check(CLI::IsMember({"exact", "fast", "device"}))
      ->type_name("MODE")
      ->default_str("exact");
  app.add_flag("--exif-transpose", io.exif_transpose,
               "Turn each image upright by its EXIF orientation (JPEG, PNG, WebP) before the model sees it, as Pillow's "
               "ImageOps.exif_transpose does: for phone photos stored sideways. cn_clip does not (off: its pixels); "
               "recorded in a store's metadata, and queries against such a store follow it");
}

void add_data_options(CLI::App& app, DataOptions& d, bool with_split) {
  app.add_option("--data", d.data_dir,
                 "Dataset folder in the Flickr30k-CN layout ({split}_imgs.tsv, {split}_texts.jsonl) or cn_clip's LMDB "
                 "layout (lmdb/{split}/imgs and pairs)");
  if (with_split) app.add_option("--split", d.split, "Split name inside --data")->capture_default_str();
  app.add_option("--images", d.images,
                 "Images: a TSV (image_id<TAB>base64), a folder of photos (recursive; JPEG, PNG, WebP, GIF; ids are the "
                 "paths relative to it), a file list (one path per line) or an LMDB imgs folder");
  app.add_option("--texts", d.texts, "Texts JSONL ({\"text_id\", \"text\", \"image_ids\"})");
  app.add_flag("--strict", d.strict, "Stop at the first bad line or image (the default; kept for old scripts)");
  add_on_error_option(app, d.on_error);
}

void add_on_error_option(CLI::App& app, std::string& on_error, const std::string& help) {
  app.add_option("--on-error", on_error,
                 help.empty() ? "A malformed TSV/JSONL line or an undecodable image: stop (default: the run fails naming "
                                "file, line and id, and writes nothing) or skip (leave it out, count it, summarise per "
                                "reason at the end, exit 0)"
                              : help)
      ->capture_default_str()
      ->check(CLI::IsMember({"stop", "skip"}));
}

void add_train_options(CLI::App& app, TrainOptions& o) {
  auto* g = app.add_option_group("Model");
  add_model_options(*g, o.model, /*checkpoint_required=*/false,
                    "Start from these weights: cn_clip .pt (official or fine-tuned), Hugging Face folder, "
                    "model.safetensors or pytorch_model.bin. Without it the model is trained from scratch (cn_clip's "
                    "initialisation; then --vision-model and --text-model are required)");

  auto* d = app.add_option_group("Data");
  // Required, but checked by run_finetune: on --resume it comes from the run's params.json.
  d->add_option("--data", o.data_dir,
                "Dataset folder: {split}_imgs.tsv and {split}_texts.jsonl (Flickr30k-CN layout), or cn_clip's LMDB "
                "layout lmdb/{split}/imgs and lmdb/{split}/pairs");
  d->add_option("--train-split", o.train_split, "Training split name")->capture_default_str();
  d->add_option("--val-split", o.val_split, "Validation split name (skipped when its files are absent)")
      ->capture_default_str();
  d->add_flag("--no-validation", o.no_validation, "Never validate");
  add_on_error_option(*d, o.on_error,
                      "A malformed line of the splits' TSV/JSONL: stop (default, naming file, line and id) or skip "
                      "(count and summarise per reason). An undecodable image always stops training");
  d->add_flag("--use-augment", o.use_augment,
              "cn_clip's training augmentation (RandomResizedCrop 0.9-1, flip, AutoAugment), per (seed, epoch, sample)");

  auto* op = app.add_option_group("Optimisation (cn_clip defaults)");
  op->add_option("--lr", o.lr, "Peak learning rate (default by model: 5e-4, 4e-4 for ViT-L-14*)")
      ->check(finite_number(0, false));
  op->add_option("--wd", o.wd, "AdamW weight decay (not for bn/ln/bias/logit_scale parameters)")
      ->capture_default_str()
      ->check(finite_number(0, true));
  op->add_option("--beta1", o.beta1, "AdamW beta1 (default 0.9)")->check(finite_number(0, true, 1, true));
  op->add_option("--beta2", o.beta2, "AdamW beta2 (default 0.98 ViT, 0.999 ResNet)")->check(finite_number(0, true, 1, true));
  op->add_option("--eps", o.eps, "AdamW eps (default 1e-6 ViT, 1e-8 ResNet)")->check(finite_number(0, false));
  op->add_option("--warmup", o.warmup, "Linear warmup steps before the cosine decay")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  op->add_option("--valid-batch-size", o.valid_batch_size, "Batch size of the validation loss")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  op->add_option("--max-epochs", o.max_epochs, "Epochs (ignored when --max-steps is given)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  op->add_option("--max-steps", o.max_steps, "Optimizer steps in total; the cosine schedule ends here")
      ->check(CLI::PositiveNumber);
  op->add_option("--accum-freq", o.accum_freq,
                 "Gradient accumulation with feature caching: one step every N micro-batches, contrasting all N*B")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  op->add_flag("--freeze-vision", o.freeze_vision, "Train the text tower only (vision frozen, ResNet BN in eval mode)");
  op->add_flag("--grad-checkpointing", o.grad_checkpointing, "Recompute activations in backward to save memory");
  CLI::Option* graph = op->add_flag("--cuda-graph,!--no-cuda-graph", o.cuda_graph,
                                    "Capture the step once as a CUDA graph and replay it where it can run (CUDA mixed "
                                    "precisions; the same numbers; on by default; --cuda-graph says why where it cannot)");
  app.parse_complete_callback([graph, &o] { o.cuda_graph_asked = o.cuda_graph && graph->count() > 0; });
  op->add_option("--seed", o.seed, "Seed of the data order, augmentation, dropout and from-scratch initialisation")
      ->capture_default_str();

  auto* s = app.add_option_group("Schedule of validation, checkpoints and logs");
  s->add_option("--valid-step-interval", o.valid_step_interval, "Validate every N steps (0 = only per epoch)");
  s->add_option("--valid-epoch-interval", o.valid_epoch_interval, "Validate every N epochs (0 = never)")
      ->capture_default_str();
  s->add_option("--save-step-frequency", o.save_step_frequency, "Save epoch_<E>_<S>.pt every N steps (-1 = never)")
      ->capture_default_str();
  s->add_option("--save-epoch-frequency", o.save_epoch_frequency, "Save epoch<E>.pt every N epochs (and the last)")
      ->capture_default_str();
  s->add_option("--log-interval", o.log_interval, "Log a metrics line every N steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  s->add_flag("--save-init", o.save_init, "Also save the starting weights as checkpoints/epoch0.pt (a before/after baseline)");
  s->add_option("--stop-after-steps", o.stop_after_steps,
                "Leave after N steps of this session, with a checkpoint that --resume continues exactly");

  auto* r = app.add_option_group("Runtime");
  RuntimeFlags rf;
  rf.precisions = {"fp32", "amp", "bf16", "amp-fp16"};
  rf.default_precision.clear();  // keep o's: fp32 for a new run, the run's own precision on --resume
  rf.precision_help =
      "(fp32: cn_clip's step to the last digit; amp: bf16 autocast; bf16: bf16 weights and activations with float32 "
      "master weights, the fastest on GPUs; amp-fp16: cn_clip's own --precision amp, fp16 autocast with a dynamic loss "
      "scale, CUDA only. On CUDA the mixed precisions use the fused AdamW)";
  rf.batch_help = "Batch size (per step and micro-batch; per process when data-parallel)";
  add_runtime_options(*r, o.runtime, rf);
  r->add_option("--workers", o.workers, "Image decoding threads (0 = as many as --threads)")->capture_default_str();

  auto* dp = app.add_option_group("Data-parallel (docs/distributed.md)");
  dp->add_option("--nproc-per-node", o.nproc_per_node,
                 "Start N worker processes on this machine (ranks 0..N-1; rank r on cuda:r with --device cuda). "
                 "--batch-size is per process: the global batch is N x batch. A process started with torchrun's "
                 "variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) joins that group instead")
      ->check(CLI::NonNegativeNumber);
  dp->add_option("--dist-backend", o.dist_backend, "c10d backend: nccl (default with --device cuda) or gloo (CPU default)")
      ->check(CLI::IsMember({"gloo", "nccl"}));
  dp->add_option("--dist-timeout", o.dist_timeout_s,
                 "Seconds a rank waits for the others to join, and for any collective, before the run fails")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  auto* f = app.add_option_group("Run folder");
  f->add_option("--output-dir,-o", o.output_dir, "Run folder (default runs/<date>-<vision>-lr<lr>-bs<batch>)");
  f->add_option("--name", o.name, "Experiment name stored in the checkpoints (default: the run folder's name)");
  f->add_option("--resume", o.resume,
                "Continue a run exactly: its folder or one of its checkpoints. Settings come from its params.json; "
                "flags given now override them (e.g. --max-epochs to train longer)");
}

}  // namespace clip
