// clip-finetune's flags (cn_clip's training/params.py names, dashes kept) and their JSON form.
#include <CLI/CLI.hpp>

#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/train.h"
#include "clip/train_internal.h"

namespace clip {

void TrainOptions::add_to(CLI::App& app) {
  auto* g = app.add_option_group("Model");
  g->add_option("--checkpoint,-c", checkpoint,
                "Start from these weights: cn_clip .pt (official or fine-tuned), Hugging Face folder, model.safetensors "
                "or pytorch_model.bin. Without it the model is trained from scratch (cn_clip's initialisation)");
  g->add_option("--vision-model", vision_model,
                "Vision tower: official name (ViT-B-16, ...) or cn_clip JSON config; required from scratch, otherwise "
                "inferred from the checkpoint");
  g->add_option("--text-model", text_model, "Text tower: official name or cn_clip JSON config (as --vision-model)");
  g->add_option("--vocab", vocab,
                "BERT vocab.txt (default: vocab.txt beside the checkpoint, the --text-model config or the data)");
  g->add_option("--context-length", context_length, "Text context length in tokens, [CLS] and [SEP] included")
      ->capture_default_str()
      ->check(CLI::Range(3, 512));

  auto* d = app.add_option_group("Data");
  // Required, but checked by run_finetune: on --resume it comes from the run's params.json.
  d->add_option("--data", data_dir, "Dataset folder: {split}_imgs.tsv and {split}_texts.jsonl (Flickr30k-CN layout)");
  d->add_option("--train-split", train_split, "Training split name")->capture_default_str();
  d->add_option("--val-split", val_split, "Validation split name (skipped when its files are absent)")
      ->capture_default_str();
  d->add_flag("--no-validation", no_validation, "Never validate");
  d->add_flag("--use-augment", use_augment,
              "cn_clip's training augmentation (RandomResizedCrop 0.9-1, flip, AutoAugment), per (seed, epoch, sample)");

  auto* o = app.add_option_group("Optimisation (cn_clip defaults)");
  o->add_option("--lr", lr, "Peak learning rate (default by model: 5e-4, 4e-4 for ViT-L-14*)");
  o->add_option("--wd", wd, "AdamW weight decay (not for bn/ln/bias/logit_scale parameters)")->capture_default_str();
  o->add_option("--beta1", beta1, "AdamW beta1 (default 0.9)");
  o->add_option("--beta2", beta2, "AdamW beta2 (default 0.98 ViT, 0.999 ResNet)");
  o->add_option("--eps", eps, "AdamW eps (default 1e-6 ViT, 1e-8 ResNet)");
  o->add_option("--warmup", warmup, "Linear warmup steps before the cosine decay")->capture_default_str();
  o->add_option("--batch-size,-b", batch_size, "Batch size (per step and micro-batch)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  o->add_option("--valid-batch-size", valid_batch_size, "Batch size of the validation loss")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  o->add_option("--max-epochs", max_epochs, "Epochs (ignored when --max-steps is given)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  o->add_option("--max-steps", max_steps, "Optimizer steps in total; the cosine schedule ends here")
      ->check(CLI::PositiveNumber);
  o->add_option("--accum-freq", accum_freq,
                "Gradient accumulation with feature caching: one step every N micro-batches, contrasting all N*B")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  o->add_flag("--freeze-vision", freeze_vision, "Train the text tower only (vision frozen, ResNet BN in eval mode)");
  o->add_flag("--grad-checkpointing", grad_checkpointing, "Recompute activations in backward to save memory");
  o->add_option("--seed", seed, "Seed of the data order, augmentation, dropout and from-scratch initialisation")
      ->capture_default_str();

  auto* s = app.add_option_group("Schedule of validation, checkpoints and logs");
  s->add_option("--valid-step-interval", valid_step_interval, "Validate every N steps (0 = only per epoch)");
  s->add_option("--valid-epoch-interval", valid_epoch_interval, "Validate every N epochs (0 = never)")
      ->capture_default_str();
  s->add_option("--save-step-frequency", save_step_frequency, "Save epoch_<E>_<S>.pt every N steps (-1 = never)")
      ->capture_default_str();
  s->add_option("--save-epoch-frequency", save_epoch_frequency, "Save epoch<E>.pt every N epochs (and the last)")
      ->capture_default_str();
  s->add_option("--log-interval", log_interval, "Log a metrics line every N steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  s->add_flag("--save-init", save_init, "Also save the starting weights as checkpoints/epoch0.pt (a before/after baseline)");
  s->add_option("--stop-after-steps", stop_after_steps,
                "Leave after N steps of this session, with a checkpoint that --resume continues exactly");

  auto* r = app.add_option_group("Runtime");
  r->add_option("--precision", precision, "fp32, or amp (bfloat16 autocast on CPU and CUDA)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "amp"}));
  r->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
  r->add_option("--threads,-j", threads, "CPU threads for the model (0 = all cores)")->capture_default_str();
  r->add_option("--workers", workers, "Image decoding threads (0 = as many as --threads)")->capture_default_str();
  r->add_flag("--quiet,-q", quiet, "Only errors on stderr");
  r->add_flag("--verbose,-v", verbose, "Debug messages on stderr");

  auto* f = app.add_option_group("Run folder");
  f->add_option("--output-dir,-o", output_dir, "Run folder (default runs/<date>-<vision>-lr<lr>-bs<batch>)");
  f->add_option("--name", name, "Experiment name stored in the checkpoints (default: the run folder's name)");
  f->add_option("--resume", resume,
                "Continue a run exactly: its folder or one of its checkpoints. Settings come from its params.json; "
                "flags given now override them (e.g. --max-epochs to train longer)");
}

nlohmann::json TrainOptions::to_json() const {
  return nlohmann::json{
      {"checkpoint", checkpoint},
      {"vision_model", vision_model},
      {"text_model", text_model},
      {"vocab", vocab},
      {"context_length", context_length},
      {"data_dir", data_dir},
      {"train_split", train_split},
      {"val_split", val_split},
      {"no_validation", no_validation},
      {"lr", lr},
      {"wd", wd},
      {"beta1", beta1},
      {"beta2", beta2},
      {"eps", eps},
      {"warmup", warmup},
      {"batch_size", batch_size},
      {"valid_batch_size", valid_batch_size},
      {"max_epochs", max_epochs},
      {"max_steps", max_steps},
      {"accum_freq", accum_freq},
      {"use_augment", use_augment},
      {"freeze_vision", freeze_vision},
      {"grad_checkpointing", grad_checkpointing},
      {"seed", seed},
      {"valid_step_interval", valid_step_interval},
      {"valid_epoch_interval", valid_epoch_interval},
      {"save_step_frequency", save_step_frequency},
      {"save_epoch_frequency", save_epoch_frequency},
      {"log_interval", log_interval},
      {"precision", precision},
      {"device", device},
      {"threads", threads},
      {"workers", workers},
      {"output_dir", output_dir},
      {"name", name},
  };
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
  TrainOptions o;
  auto get = [&](const char* k, auto& field) {
    if (j.contains(k) && !j[k].is_null()) j[k].get_to(field);
  };
  get("checkpoint", o.checkpoint);
  get("vision_model", o.vision_model);
  get("text_model", o.text_model);
  get("vocab", o.vocab);
  get("context_length", o.context_length);
  get("data_dir", o.data_dir);
  get("train_split", o.train_split);
  get("val_split", o.val_split);
  get("no_validation", o.no_validation);
  get("lr", o.lr);
  get("wd", o.wd);
  get("beta1", o.beta1);
  get("beta2", o.beta2);
  get("eps", o.eps);
  get("warmup", o.warmup);
  get("batch_size", o.batch_size);
  get("valid_batch_size", o.valid_batch_size);
  get("max_epochs", o.max_epochs);
  get("max_steps", o.max_steps);
  get("accum_freq", o.accum_freq);
  get("use_augment", o.use_augment);
  get("freeze_vision", o.freeze_vision);
  get("grad_checkpointing", o.grad_checkpointing);
  get("seed", o.seed);
  get("valid_step_interval", o.valid_step_interval);
  get("valid_epoch_interval", o.valid_epoch_interval);
  get("save_step_frequency", o.save_step_frequency);
  get("save_epoch_frequency", o.save_epoch_frequency);
  get("log_interval", o.log_interval);
  get("precision", o.precision);
  get("device", o.device);
  get("threads", o.threads);
  get("workers", o.workers);
  get("output_dir", o.output_dir);
  get("name", o.name);
  return o;
}

std::string detail::resume_run_dir(const std::string& resume) {
  if (is_directory(resume)) return resume;
  // <run>/checkpoints/<file>.pt
  std::string dir = path_dirname(resume);
  if (dir.size() >= 11 && dir.compare(dir.size() - 11, 11, "checkpoints") == 0) return path_dirname(dir);
  return dir;
}

TrainOptions TrainOptions::stored_for_resume(const std::string& resume) {
  std::string run = detail::resume_run_dir(resume);
  std::string path = path_join(run, "params.json");
  if (!file_exists(path))
    throw UsageError("--resume " + resume + ": no params.json in '" + run +
                     "' (not a clip-finetune run folder); to start new training from a checkpoint's weights use "
                     "--checkpoint instead");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(path + ": not valid JSON (" + e.what() + ")");
  }
  TrainOptions o = from_json(j.value("options", nlohmann::json::object()));
  o.resume = resume;
  o.output_dir = run;
  return o;
}

}  // namespace clip
