// clip-finetune's run: model and data set-up, the epoch/step loop of cn_clip's main.py + train.py,
// validation, checkpoints, metrics and curves.
#include "clip/train/train.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/stat.h>
#include <torch/version.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <future>
#include <thread>

#include "clip/data/augment.h"
#include "clip/io/checkpoint.h"
#include "clip/data/dataset.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/model/tensor_torch.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/retrieval/metrics.h"
#include "clip/model/loader.h"
#include "clip/model/model.h"
#include "clip/base/pipeline.h"
#include "clip/base/runtime.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/indexing.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"
#include "clip/text/tokenizer.h"
#include "clip/train/dist.h"
#include "clip/train/train_internal.h"

namespace clip {

namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

// SIGINT/SIGTERM finish the current step, save a resumable checkpoint and stop; a second one kills.
class InterruptScope {
 public:
  InterruptScope() {
    g_interrupted = false;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~InterruptScope() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

bool dir_has_entries(const std::string& dir) {
  return file_exists(path_join(dir, "params.json")) || file_exists(path_join(dir, "metrics.jsonl")) ||
         is_directory(path_join(dir, "checkpoints"));
}

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  return buf;
}

std::string sanitize(std::string s) {
  for (auto& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '-';
  return s;
}

void append_line(const std::string& path, const std::string& line) {
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (!f) throw_io_error("open for appending", path);
  bool ok = std::fwrite(line.data(), 1, line.size(), f) == line.size() && std::fputc('\n', f) != EOF;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw_io_error("write", path);
}

// cn_clip's params.py defaults per architecture (get_default_params).
struct ArchDefaults {
  double lr, beta1, beta2, eps;
  bool known;
};
ArchDefaults arch_defaults(const VisionConfig& v) {
  ArchDefaults d{5e-4, 0.9, v.resnet ? 0.999 : 0.98, v.resnet ? 1e-8 : 1e-6, false};
  for (const char* n : {"ViT-B-32", "ViT-B-16", "ViT-H-14", "RN50"})
    if (v.name == n) d.known = true;
  if (v.name == "ViT-L-14" || v.name == "ViT-L-14-336") d.lr = 4e-4, d.known = true;
  return d;
}

class Trainer {
 public:
  explicit Trainer(const TrainOptions& o) : o_(o) {}
  TrainSummary run();

 private:
  void setup_dist();
  void setup_run_dir();
  void setup_model();
  void setup_data();
  void setup_schedule();
  void write_params();
  void restore_metrics(int64_t upto_step);
  void train_epoch(int64_t epoch, int64_t first_batch);
  nlohmann::json validate(int64_t epoch, int64_t step);
  void save(const std::string& file, int64_t epoch_1based, int64_t batch_pos_epoch, int64_t batch_pos);
  void redraw_curves();
  at::Tensor tokens_of(const std::vector<size_t>& text_indices) const;

  TrainOptions o_;
  TrainSummary summary_;
  // data-parallel: this process is rank_ of world_; it reads rows [rank_*B, (rank_+1)*B) of each
  // global batch of gbs_ = world_*B pairs. Only rank 0 writes the run folder and validates.
  std::unique_ptr<DistGroup> dist_;
  int world_ = 1, rank_ = 0;
  int64_t gbs_ = 0;
  bool lead() const { return rank_ == 0; }
  std::string run_dir_, ckpt_dir_, metrics_path_, resume_ckpt_;
  bool restart_ = false;  // a fresh run in a folder left by a run that saved no checkpoint
  at::Device device_{at::kCPU};
  std::optional<ClipModel> model_;
  std::unique_ptr<AdamW> opt_;
  PrecisionPlan plan_;
  std::optional<LossScaler> scaler_;                  // --precision amp-fp16
  at::Tensor poison_;                                 // deferred step values: a non-finite loss seen (StepOptions)
  StepGraph graph_;                                   // the step as a CUDA graph where it can be (StepOptions::graph)
  bool graph_logged_ = false;
  std::map<std::string, at::Tensor> fp32_weights_;   // --precision bf16: what checkpoints hold
  std::shared_ptr<const Tokenizer> tok_;
  std::unique_ptr<DatasetSplit> train_, val_;
  std::vector<int64_t> train_tokens_, val_tokens_;  // [texts, context] per split
  AugmentConfig aug_;
  ArchDefaults defaults_{};
  double lr_ = 0, beta1_ = 0, beta2_ = 0, eps_ = 0;
  int64_t num_batches_ = 0, steps_per_epoch_ = 0, max_steps_ = 0, max_epochs_ = 0;
  int64_t step_ = 0, start_epoch_ = 0, start_batch_ = 0, session_steps_ = 0;
  bool stop_ = false, interrupted_ = false, epoch_finished_ = false;
  nlohmann::json resolved_, best_;
  std::string model_source_;
  // curves
  std::vector<CurvePoint> c_loss_, c_lr_, c_val_loss_, c_i2t_, c_t2i_;
  // interval accumulators
  double loss_sum_ = 0;
  int64_t loss_n_ = 0, samples_since_log_ = 0;
  double data_s_ = 0, step_s_ = 0;
  std::chrono::steady_clock::time_point log_t0_;
  std::unique_ptr<Progress> progress_;
  bool tty_ = false;
  int64_t first_step_ = 0;
};

void Trainer::setup_dist() {
  std::optional<DistEnv> env = dist_env_from_environment();
  if (!env) {
    if (o_.nproc_per_node > 0)
      throw UsageError("--nproc-per-node: internal: the workers were not started (clip-finetune starts them)");
    gbs_ = o_.runtime.batch_size;
    return;
  }
  std::string backend = o_.dist_backend;
  if (backend.empty()) backend = device_.is_cuda() ? "nccl" : "gloo";
  if (backend != "gloo" && backend != "nccl") throw UsageError("--dist-backend must be gloo or nccl, not '" + backend + "'");
  if (backend == "nccl" && !device_.is_cuda())
    throw UsageError("--dist-backend nccl needs --device cuda (NCCL reduces GPU tensors); use gloo on the CPU");
  // Rank r trains on cuda:LOCAL_RANK.
  if (device_.is_cuda()) device_ = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env->local_rank));
  world_ = env->world_size;
  rank_ = env->rank;
  // Only rank 0 talks (its errors, and every rank's errors and warnings, still come through).
  if (!lead() && !o_.runtime.verbose) set_log_level(std::min(log_level(), LogLevel::warn));
  // Without --threads the cores are shared by this machine's workers.
  if (o_.runtime.threads <= 0 && env->local_world_size > 1)
    set_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / env->local_world_size));
  dist_ = DistGroup::join(*env, backend, o_.dist_timeout_s);
  gbs_ = o_.runtime.batch_size * world_;
  log_info("distributed: rank {} of {} ({}, {}), rendezvous {}:{}; batch {} per rank, {} in all", rank_, world_,
           backend, device_.str(), env->master_addr, env->master_port, o_.runtime.batch_size, gbs_);
}

// The most recently written *.pt file of a checkpoints folder ("" when there is none).
static std::string newest_checkpoint(const std::string& dir) {
  std::string best;
  struct timespec best_t {};
  DIR* d = ::opendir(dir.c_str());
  if (!d) return best;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() < 4 || name.compare(name.size() - 3, 3, ".pt") != 0 || name[0] == '.') continue;
    const std::string p = path_join(dir, name);
    struct stat st;
    if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    const auto& t = st.st_mtim;
    if (best.empty() || t.tv_sec > best_t.tv_sec || (t.tv_sec == best_t.tv_sec && t.tv_nsec > best_t.tv_nsec) ||
        (t.tv_sec == best_t.tv_sec && t.tv_nsec == best_t.tv_nsec && p > best)) {
      best = p;
      best_t = t;
    }
  }
  ::closedir(d);
  return best;
}

void Trainer::setup_run_dir() {
  if (!o_.resume.empty()) {
    run_dir_ = o_.output_dir.empty() ? detail::resume_run_dir(o_.resume) : o_.output_dir;
    resume_ckpt_ = is_directory(o_.resume) ? path_join(path_join(o_.resume, "checkpoints"), "epoch_latest.pt") : o_.resume;
    if (is_directory(o_.resume) && !file_exists(resume_ckpt_)) {
      // A kill between writing epoch_E_S.pt and epoch_latest.pt: every checkpoint is written
      // atomically, so the newest one under its final name is complete and resumes as well.
      const std::string newest = newest_checkpoint(path_join(o_.resume, "checkpoints"));
      if (!newest.empty()) {
        log_warn("--resume {}: no epoch_latest.pt; resuming from the newest complete checkpoint, {}", o_.resume, newest);
        resume_ckpt_ = newest;
      }
    }
    if (!file_exists(resume_ckpt_))
      throw UsageError("--resume " + o_.resume + ": no checkpoint '" + resume_ckpt_ +
                       "' (the run saved none yet); start it again without --resume in a new --output-dir");
  } else {
    run_dir_ = o_.output_dir;
    if (run_dir_.empty()) throw UsageError("no run folder (internal: output_dir not resolved)");
    if (lead() && is_directory(run_dir_) && dir_has_entries(run_dir_)) {
      // A folder with a checkpoint (or a finished run) holds work worth keeping: refused. One
      // without (a run that failed or was stopped before its first save) is started afresh.
      const std::string ck = newest_checkpoint(path_join(run_dir_, "checkpoints"));
      if (!ck.empty() || file_exists(path_join(run_dir_, "DONE")))
        throw TrainingError("run folder '" + run_dir_ + "' already holds a run" +
                            (ck.empty() ? std::string(" (finished)") : " (checkpoint " + ck + ")") +
                            "; continue it with --resume " + run_dir_ + ", or choose another --output-dir");
      log_warn("run folder '{}' holds no checkpoint (an earlier run stopped before saving one): starting it afresh",
               run_dir_);
      restart_ = true;
    }
  }
  ckpt_dir_ = path_join(run_dir_, "checkpoints");
  // Created in write_params(), once the model and the data are known to be usable: a failed start
  // leaves no folder behind that would then refuse the corrected command.
  metrics_path_ = path_join(run_dir_, "metrics.jsonl");
  if (o_.name.empty()) o_.name = path_basename(run_dir_);
}

void Trainer::setup_model() {
  // The one model loader (model/loader.h), as every tool: flags, then the config the checkpoint
  // carries, then shape inference; on --resume the weights come from the run's checkpoint and the
  // run's recorded config stands in for checkpoints that carry none.
  ModelOptions mo = o_.model;
  if (!resume_ckpt_.empty()) {
    mo.checkpoint = resume_ckpt_;
    const std::string params = path_join(run_dir_, "params.json");
    nlohmann::json stored;
    if (file_exists(params))
      stored = nlohmann::json::parse(read_file(params), nullptr, false).value("resolved", nlohmann::json());
    if (stored.is_object() && stored.contains("vision_config") && stored.contains("text_config")) {
      ModelConfig known;
      known.vision = vision_config_from_json(stored["vision_config"], stored.value("vision_name", std::string("vision")));
      known.text = text_config_from_json(stored["text_config"], stored.value("text_name", std::string("text")));
      mo.known_config = known;
      mo.known_config_source = params;
    }
  } else if (mo.checkpoint.empty() && (mo.vision_model.empty() || mo.text_model.empty())) {
    throw UsageError("training from scratch needs --vision-model and --text-model (official names or cn_clip JSON "
                     "configs); or start from weights with --checkpoint");
  }
  model_source_ = mo.checkpoint.empty() ? "scratch (seed " + std::to_string(o_.seed) + ")" : mo.checkpoint;
  ModelSource src = resolve_model(mo, /*need_vocab=*/true, {o_.data_dir});
  std::optional<Checkpoint>& ck = src.checkpoint;
  const ModelConfig& cfg = src.config;
  tok_ = std::make_shared<const Tokenizer>(Tokenizer::load(src.vocab_path));
  o_.model.vocab = src.vocab_path;
  check_vocab_fits(*tok_, cfg.text);
  model_.emplace(build_model(src));
  ClipModel& m = *model_;
  if (!ck) m->initialize_parameters(o_.seed);
  m->to(device_);
  if (o_.grad_checkpointing) m->set_grad_checkpointing(true);
  if (o_.freeze_vision) m->freeze_vision(true);
  if (plan_.training_kernels) m->set_low_precision_kernels(true);

  defaults_ = arch_defaults(cfg.vision);
  lr_ = o_.lr > 0 ? o_.lr : defaults_.lr;
  beta1_ = o_.beta1 >= 0 ? o_.beta1 : defaults_.beta1;
  beta2_ = o_.beta2 >= 0 ? o_.beta2 : defaults_.beta2;
  eps_ = o_.eps > 0 ? o_.eps : defaults_.eps;
  if (!defaults_.known && (o_.lr <= 0 || o_.beta1 < 0 || o_.beta2 < 0 || o_.eps <= 0))
    log_info("{} is not an official cn_clip model: the {} family's defaults fill in what was not given (lr {}, "
             "betas {}/{}, eps {})",
             cfg.vision.name, cfg.vision.resnet ? "ResNet" : "ViT", lr_, beta1_, beta2_, eps_);

  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (auto& [name, t] : model_state(m))
    if (t.requires_grad()) trainable.emplace_back(name, t);
  // Mixed precisions use PyTorch's fused multi-tensor AdamW on CUDA (as cn_clip's best flags do);
  // fp32 keeps the single-tensor sequence that matches cn_clip's step to the last digit.
  AdamWOptions ao{lr_, beta1_, beta2_, eps_, o_.wd};
  ao.fused = plan_.fused_adamw;
  opt_ = std::make_unique<AdamW>(trainable, ao);
  if (plan_.loss_scaler) scaler_.emplace(device_);

  if (!resume_ckpt_.empty()) {
    ResumeState rs;
    if (!read_resume_state(ck->root, rs))
      throw UsageError("--resume " + resume_ckpt_ +
                       ": the file has no clip-finetune resume information (a cn_clip checkpoint?); start a new run "
                       "from its weights with --checkpoint instead");
    PyPtr osd = ck->root ? ck->root->get("optimizer") : nullptr;
    if (!osd) throw ModelError(resume_ckpt_ + ": no optimizer state to resume from");
    opt_->load_state_dict(*osd);
    // The data order depends on the global batch only: a run continues exactly with any world size
    // whose world x batch equals the run's (the per-rank batch is adjusted to keep it).
    const int64_t old_world = rs.extra.value("world_size", int64_t{1});
    const int64_t old_global = rs.extra.value("global_batch", rs.extra.value("batch_size", int64_t(o_.runtime.batch_size)));
    if (old_global != int64_t(o_.runtime.batch_size) * world_) {
      if (old_global % world_ != 0)
        throw UsageError(fmt::format("--resume {}: the run used a global batch of {} ({} x {}); {} processes cannot "
                                     "split it evenly. Resume with a world size that divides {} (e.g. {})",
                                     resume_ckpt_, old_global, old_world, old_global / std::max<int64_t>(1, old_world),
                                     world_, old_global, old_world));
      if (lead())
        log_warn("--resume: the run used {} process{} with batch {} (global {}); now {} process{}: the batch per process "
                 "becomes {} so that the global batch, the data order and the schedule stay the same",
                 old_world, old_world > 1 ? "es" : "", old_global / std::max<int64_t>(1, old_world), old_global, world_,
                 world_ > 1 ? "es" : "", old_global / world_);
      o_.runtime.batch_size = static_cast<int>(old_global / world_);
      gbs_ = old_global;
    }
    step_ = rs.step;
    start_epoch_ = rs.epoch;
    start_batch_ = rs.batch_in_epoch;
    // A distributed run stores one generator state per rank (rows); a rank without its own row
    // (the world size changed) derives a fresh stream from the seed, the step and its rank.
    auto rank_state = [&](const at::Tensor& t) -> at::Tensor {
      if (t.dim() == 1) return rank_ == 0 ? t : at::Tensor();
      return rank_ < t.size(0) && t.size(0) == world_ ? t[rank_].contiguous() : (rank_ == 0 ? t[0].contiguous() : at::Tensor());
    };
    at::Tensor cpu_state = rs.cpu_rng.defined() ? rank_state(rs.cpu_rng) : at::Tensor();
    if (cpu_state.defined()) {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(cpu_state);
    } else if (rs.cpu_rng.defined()) {
      at::manual_seed(o_.seed + static_cast<uint64_t>(rank_) + 1000003ull * static_cast<uint64_t>(rs.step));
    }
    at::Tensor cuda_state = rs.cuda_rng.defined() ? rank_state(rs.cuda_rng) : at::Tensor();
    if (cuda_state.defined() && device_.is_cuda()) {
      auto gen = at::globalContext().defaultGenerator(device_);
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(cuda_state);
    }
    best_ = rs.extra.value("best", nlohmann::json());
    if (scaler_ && rs.extra.contains("loss_scale"))
      scaler_.emplace(device_, rs.extra.value("loss_scale", 65536.0), rs.extra.value("loss_scale_good_steps", int64_t{0}));
    log_info("resuming {} at step {} (epoch {}, batch {})", resume_ckpt_, step_, start_epoch_ + 1, start_batch_);
  } else {
    // Dropout draws from torch's default generator: seed it so that runs repeat (each rank its own
    // stream, as its rows differ).
    at::manual_seed(o_.seed + static_cast<uint64_t>(rank_));
  }
  if (dist_) {
    // Identical starting weights on every rank (as DDP does), whatever each rank loaded.
    std::vector<at::Tensor> ts;
    for (auto& [name, t] : model_state(m)) ts.push_back(t);
    dist_->broadcast_from_rank0(ts);
  }
  // bf16: bf16 weights and activations for the forward and backward, float32 masters and moments
  // in the optimizer; checkpoints keep the float32 values (fp32_weights_).
  if (plan_.bf16_weights) fp32_weights_ = convert_to_bf16_training(m, *opt_);
  log_info("model {} from {}: {} trainable tensors ({} without weight decay)", cfg.name(), model_source_,
           opt_->params().size(), opt_->group_size(0));
}

void Trainer::setup_data() {
  ClipModel& m = *model_;
  const bool strict = o_.on_error != "skip";
  train_ = std::make_unique<DatasetSplit>(open_split(o_.data_dir, o_.train_split, strict));
  if (train_->pairs.empty())
    throw DataError("training split '" + o_.train_split + "' in " + o_.data_dir + " has no (text, image) pair");
  bool want_val = !o_.no_validation && (o_.valid_epoch_interval > 0 || o_.valid_step_interval > 0);
  if (want_val && ((file_exists(split_images_path(o_.data_dir, o_.val_split)) &&
                    file_exists(split_texts_path(o_.data_dir, o_.val_split))) ||
                   has_lmdb_split(o_.data_dir, o_.val_split))) {
    val_ = std::make_unique<DatasetSplit>(open_split(o_.data_dir, o_.val_split, strict));
  } else if (want_val) {
    log_info("no '{}' split in {}: validation is off", o_.val_split, o_.data_dir);
  }
  const int ctx = o_.model.context_length;
  auto tokenize_all = [&](const DatasetSplit& s, std::vector<int64_t>& out) {
    out.assign(s.texts.size() * ctx, 0);
    for (size_t i = 0; i < s.texts.size(); ++i) tok_->encode_into(preprocess_text(s.texts[i].text), ctx, &out[i * ctx]);
  };
  tokenize_all(*train_, train_tokens_);
  if (val_) tokenize_all(*val_, val_tokens_);
  aug_.resolution = m->config().vision.image_resolution;
}

void Trainer::setup_schedule() {
  const int64_t n = static_cast<int64_t>(train_->pairs.size());
  num_batches_ = (n + gbs_ - 1) / gbs_;
  steps_per_epoch_ = num_batches_ / o_.accum_freq;
  if (steps_per_epoch_ == 0)
    throw UsageError(fmt::format("{} training pairs make {} batches of {}, fewer than --accum-freq {}: lower "
                                 "--batch-size or --accum-freq",
                                 n, num_batches_, gbs_, o_.accum_freq));
  if (o_.max_steps > 0) {
    max_steps_ = o_.max_steps;
    max_epochs_ = (max_steps_ * o_.accum_freq + num_batches_ - 1) / num_batches_;
  } else {
    max_epochs_ = o_.max_epochs;
    max_steps_ = steps_per_epoch_ * max_epochs_;
  }
  if (o_.warmup >= max_steps_ && lead())
    log_warn("--warmup {} is not below the {} training steps: the learning rate never decays", o_.warmup, max_steps_);
}

void Trainer::write_params() {
  TrainOptions stored = o_;
  stored.resume.clear();
  const ModelConfig& cfg = (*model_)->config();
  resolved_ = {
      {"lr", lr_},
      {"betas", {beta1_, beta2_}},
      {"eps", eps_},
      {"max_steps", max_steps_},
      {"max_epochs", max_epochs_},
      {"train_pairs", train_->pairs.size()},
      {"train_images", train_->images->size()},
      {"train_texts", train_->texts.size()},
      {"batches_per_epoch", num_batches_},
      {"steps_per_epoch", steps_per_epoch_},
      {"val_images", val_ ? val_->images->size() : 0},
      {"val_texts", val_ ? val_->texts.size() : 0},
      {"model", cfg.name()},
      {"model_source", model_source_},
      {"vision_name", cfg.vision.name},
      {"text_name", cfg.text.name},
      {"vision_config", to_json(cfg.vision)},
      {"text_config", to_json(cfg.text)},
      {"device", o_.runtime.device},
      {"world_size", world_},
      {"global_batch", gbs_},
      {"dist_backend", dist_ ? dist_->backend() : std::string()},
      {"threads", at::get_num_threads()},
      {"torch_version", TORCH_VERSION},
      {"version", CLIP_VERSION},
      {"data_order", "pairs padded to a multiple of the batch by wrapping, shuffled per epoch by a splitmix64 "
                     "Fisher-Yates keyed by (seed, epoch) (not torch's DistributedSampler)"},
  };
  make_dirs(ckpt_dir_);
  // The checkpoints folder gets the vocab and the model configs, so that clip-index/clip-eval/clip-export
  // find the vocab beside a checkpoint and can be given the exact configs (--vision-model/--text-model).
  std::string vocab_copy = path_join(ckpt_dir_, "vocab.txt");
  if (!file_exists(vocab_copy)) write_file_atomic(vocab_copy, tok_->vocab_text());  // vocab.txt even from a tokenizer.json
  // (named <config name>.json: a config's name is its file stem, so the model keeps its name.)
  write_file_atomic(path_join(ckpt_dir_, sanitize(cfg.vision.name) + ".json"), to_json(cfg.vision).dump(2) + "\n");
  write_file_atomic(path_join(ckpt_dir_, sanitize(cfg.text.name) + ".json"), to_json(cfg.text).dump(2) + "\n");

  if (restart_) {  // the earlier attempt's metrics and curves are not this run's
    ::unlink(metrics_path_.c_str());
    ::unlink(path_join(run_dir_, "curves.svg").c_str());
  }
  nlohmann::json j = {{"options", stored.to_json()}, {"resolved", resolved_}};
  write_file_atomic(path_join(run_dir_, "params.json"), j.dump(2) + "\n");
  log_info("run folder {}: {} pairs, {} steps/epoch, {} steps over {} epochs, lr {} (warmup {}), batch {}{}",
           run_dir_, train_->pairs.size(), steps_per_epoch_, max_steps_, max_epochs_, lr_, o_.warmup, o_.runtime.batch_size,
           o_.accum_freq > 1 ? fmt::format(" x {} accumulated", o_.accum_freq) : std::string());
}

// On resume, metrics logged after the checkpoint are dropped (they will be produced again) and the
// curves are rebuilt from what remains.
void Trainer::restore_metrics(int64_t upto_step) {
  if (!file_exists(metrics_path_)) return;
  std::string kept;
  std::string all = read_file(metrics_path_);
  size_t pos = 0;
  while (pos < all.size()) {
    size_t nl = all.find('\n', pos);
    std::string line = all.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? all.size() : nl + 1;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || j.value("step", int64_t{0}) > upto_step) continue;
    kept += line + "\n";
    int64_t s = j.value("step", int64_t{0});
    if (j.value("type", "") == "train") {
      c_loss_.push_back({s, j.value("loss_avg", j.value("loss", 0.0))});
      c_lr_.push_back({s, j.value("lr", 0.0)});
    } else if (j.value("type", "") == "val") {
      if (j.contains("val_loss")) c_val_loss_.push_back({s, j["val_loss"].get<double>()});
      if (j.contains("i2t_r1")) c_i2t_.push_back({s, j["i2t_r1"].get<double>()});
      if (j.contains("t2i_r1")) c_t2i_.push_back({s, j["t2i_r1"].get<double>()});
    }
  }
  write_file_atomic(metrics_path_, kept);
}

at::Tensor Trainer::tokens_of(const std::vector<size_t>& text_indices) const {
  const int ctx = o_.model.context_length;
  at::Tensor ids = at::empty({static_cast<int64_t>(text_indices.size()), ctx}, at::kLong);
  int64_t* p = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < text_indices.size(); ++i)
    std::copy_n(&train_tokens_[text_indices[i] * ctx], ctx, p + i * ctx);
  return ids;
}

void Trainer::save(const std::string& file, int64_t epoch_1based, int64_t next_epoch, int64_t next_batch) {
  ResumeState rs;
  rs.step = step_;
  rs.epoch = next_epoch;
  rs.batch_in_epoch = next_batch;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    rs.cpu_rng = gen.get_state();
  }
  if (device_.is_cuda()) {
    auto gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    rs.cuda_rng = gen.get_state();
  }
  if (dist_) {
    // Each rank's generator (dropout): one row per rank.
    auto rows = [&](const at::Tensor& t) {
      at::Tensor local = t.unsqueeze(0);
      if (dist_->backend() == "nccl") local = local.to(device_);
      return dist_->all_gather_rows(local).to(at::kCPU).contiguous();
    };
    rs.cpu_rng = rows(rs.cpu_rng);
    if (rs.cuda_rng.defined()) rs.cuda_rng = rows(rs.cuda_rng);
  }
  if (!lead()) return;
  rs.extra = {{"seed", o_.seed}, {"batch_size", o_.runtime.batch_size}, {"world_size", world_},
              {"global_batch", gbs_}, {"best", best_}};
  if (scaler_) {
    rs.extra["loss_scale"] = scaler_->value();
    rs.extra["loss_scale_good_steps"] = scaler_->good_steps();
  }
  auto t0 = std::chrono::steady_clock::now();
  std::string path = path_join(ckpt_dir_, file);
  save_training_checkpoint(path, *model_, opt_.get(), epoch_1based, step_, o_.name, &rs,
                           fp32_weights_.empty() ? nullptr : &fp32_weights_);
  log_info("saved {} (epoch {} @ {} steps, {:.1f}s)", path, epoch_1based, step_,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

nlohmann::json Trainer::validate(int64_t epoch, int64_t step) {
  if (!val_ || !lead()) return {};
  ClipModel& m = *model_;
  auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard ng;
  m->eval();
  const DatasetSplit& v = *val_;
  // Features through the retrieval layer's encoders, as clip-index computes them (eval transform,
  // L2-normalised, float32), from the training model itself.
  Encoder enc(m, tok_, o_.model.context_length, o_.valid_batch_size, o_.runtime.precision != "fp32");
  at::Tensor img = encode_images(enc, *v.images, o_.workers, /*skip_errors=*/false).features.to(device_);
  const int ctx = o_.model.context_length;
  std::vector<at::Tensor> tparts;
  for (size_t s = 0; s < v.texts.size(); s += o_.valid_batch_size) {
    int64_t n = static_cast<int64_t>(std::min(v.texts.size(), s + o_.valid_batch_size) - s);
    tparts.push_back(enc.encode_ids(at::from_blob(const_cast<int64_t*>(&val_tokens_[s * ctx]), {n, ctx}, at::kLong)));
  }
  at::Tensor txt = at::cat(tparts).to(device_);
  at::Tensor scale = m->logit_scale().exp().to(at::kFloat);
  // Validation loss: cn_clip's in-batch loss over the pairs, in file order, weighted by batch size.
  double loss_sum = 0;
  int64_t loss_n = 0;
  for (size_t s = 0; s < v.pairs.size(); s += o_.valid_batch_size) {
    size_t e = std::min(v.pairs.size(), s + o_.valid_batch_size);
    std::vector<int64_t> ti, ii;
    for (size_t k = s; k < e; ++k) ti.push_back(static_cast<int64_t>(v.pairs[k].first)), ii.push_back(static_cast<int64_t>(v.pairs[k].second));
    at::Tensor tix = at::tensor(ti, at::kLong).to(device_), iix = at::tensor(ii, at::kLong).to(device_);
    ContrastiveLoss l = contrastive_loss(img.index_select(0, iix), txt.index_select(0, tix), scale);
    loss_sum += l.loss.item<double>() * static_cast<double>(e - s);
    loss_n += static_cast<int64_t>(e - s);
  }
  // Recall both ways over all val images / texts: clip-eval's ranking and scoring code.
  const int64_t dim = img.size(1);
  at::Tensor img_cpu = img.to(at::kCPU).contiguous(), txt_cpu = txt.to(at::kCPU).contiguous();
  std::vector<int64_t> image_ids(v.images->size()), text_ids(v.texts.size());
  for (size_t i = 0; i < image_ids.size(); ++i) image_ids[i] = v.images->id(i);
  for (size_t i = 0; i < text_ids.size(); ++i) text_ids[i] = v.texts[i].text_id;
  StoreMeta im_meta, tx_meta;
  im_meta.kind = "image";
  tx_meta.kind = "text";
  FeatureSet img_fs = make_feature_set(image_ids, img_cpu.data_ptr<float>(), dim, StoreDtype::f32, im_meta);
  FeatureSet txt_fs = make_feature_set(text_ids, txt_cpu.data_ptr<float>(), dim, StoreDtype::f32, tx_meta);
  // Gold from the pairs actually loaded (texts and images that passed validation).
  Ranking t2i_gold, i2t_gold;
  std::vector<int64_t> t2i_order, i2t_order;
  for (const auto& [t, i] : v.pairs) {
    int64_t tid = v.texts[t].text_id, iid = v.images->id(i);
    if (!t2i_gold.count(tid)) t2i_order.push_back(tid);
    if (!i2t_gold.count(iid)) i2t_order.push_back(iid);
    t2i_gold[tid].push_back(iid);
    i2t_gold[iid].push_back(tid);
  }
  Recall t2i = compute_recall(t2i_order, t2i_gold, topk_predictions(txt_fs, img_fs, 10).ranked, "validation text->image");
  Recall i2t = compute_recall(i2t_order, i2t_gold, topk_predictions(img_fs, txt_fs, 10).ranked, "validation image->text");
  m->train();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j = {{"type", "val"},
                      {"step", step},
                      {"epoch", epoch + 1},
                      {"val_loss", loss_n ? loss_sum / loss_n : 0.0},
                      {"t2i_r1", t2i.r1},
                      {"t2i_r5", t2i.r5},
                      {"t2i_r10", t2i.r10},
                      {"i2t_r1", i2t.r1},
                      {"i2t_r5", i2t.r5},
                      {"i2t_r10", i2t.r10},
                      {"t2i_mean_recall", t2i.mean_recall},
                      {"i2t_mean_recall", i2t.mean_recall},
                      {"mean_recall", (t2i.mean_recall + i2t.mean_recall) / 2},
                      {"logit_scale", m->logit_scale().item<double>()},
                      {"val_images", v.images->size()},
                      {"val_texts", v.texts.size()},
                      {"time_s", secs}};
  append_line(metrics_path_, j.dump());
  c_val_loss_.push_back({step, j["val_loss"].get<double>()});
  c_i2t_.push_back({step, i2t.r1});
  c_t2i_.push_back({step, t2i.r1});
  if (best_.is_null() || j["mean_recall"].get<double>() > best_.value("mean_recall", -1.0))
    best_ = {{"step", step}, {"mean_recall", j["mean_recall"]}};
  log_info("validation (epoch {} @ {} steps): loss {:.4f} | text->image R@1/5/10 {:.2f}/{:.2f}/{:.2f} | "
           "image->text R@1/5/10 {:.2f}/{:.2f}/{:.2f} | {:.1f}s",
           epoch + 1, step, j["val_loss"].get<double>(), t2i.r1, t2i.r5, t2i.r10, i2t.r1, i2t.r5, i2t.r10, secs);
  redraw_curves();
  summary_.last_validation = j;
  return j;
}

void Trainer::redraw_curves() {
  if (!lead()) return;
  std::vector<CurvePanel> panels;
  panels.push_back({"Loss", "contrastive loss",
                    {{"train (mean per log interval)", "#1f77b4", c_loss_, false},
                     {"validation", "#d62728", c_val_loss_, true}},
                    false});
  panels.push_back({"Learning rate", "lr", {{"lr", "#2ca02c", c_lr_, false}}, false});
  if (val_)
    panels.push_back({"Validation Recall@1", "R@1 (%)",
                      {{"text -> image", "#9467bd", c_t2i_, true}, {"image -> text", "#ff7f0e", c_i2t_, true}},
                      false});
  std::string title = fmt::format("{} - {} (lr {}, batch {})", o_.name, (*model_)->config().name(), lr_, o_.runtime.batch_size);
  write_file_atomic(path_join(run_dir_, "curves.svg"), render_curves_svg(title, panels, max_steps_));
}

void Trainer::train_epoch(int64_t epoch, int64_t first_batch) {
  ClipModel& m = *model_;
  epoch_finished_ = false;
  m->train();
  const int R = aug_.resolution;
  const size_t item = 3 * size_t(R) * R;  // bytes: 8-bit planar RGB
  // The workers stop at 8-bit pixels (a quarter of the floats' bytes to copy and upload, no float
  // conversion on the CPU); the step's device normalises them by a lookup in the float32 values the
  // CPU computes for each byte (normalize_table: to_chw_normalized's own values), so the model sees
  // the same pixels bit for bit.
  const at::Tensor norm_table = normalize_table_on(device_);
  const int64_t bs = o_.runtime.batch_size;
  const int64_t n_batches_used = steps_per_epoch_ * o_.accum_freq;  // trailing micro-batches never step (cn_clip)
  // The order of the global batches (gbs_ = world x bs); this rank reads its slice of each.
  std::vector<int64_t> order = epoch_order(static_cast<int64_t>(train_->pairs.size()), gbs_, o_.seed, epoch);
  const size_t n_items = static_cast<size_t>((n_batches_used - first_batch) * bs);
  // Position in the epoch's order of this rank's i-th item from `first_batch` on.
  auto position = [&](size_t i) {
    return static_cast<size_t>((first_batch + static_cast<int64_t>(i) / bs) * gbs_ + rank_ * bs +
                               static_cast<int64_t>(i) % bs);
  };
  const DatasetSplit& tr = *train_;
  BytePipeline pipe(
      n_items, static_cast<size_t>(bs), o_.workers,
      [&](size_t i, uint8_t* dst) {
        size_t pos = position(i);
        size_t img = tr.pairs[static_cast<size_t>(order[pos])].second;
        Image im = tr.images->decode(img);  // a DataError names the TSV, its line and the image_id
        if (o_.use_augment) augment_to_chw_u8(im, aug_, o_.seed, static_cast<uint64_t>(epoch), pos, dst);
        else preprocess_eval_u8(im, R, dst);
      },
      item, /*queue_batches=*/8);
  StepOptions so;
  so.autocast = plan_.autocast;
  so.autocast_dtype = plan_.autocast_dtype;
  so.scaler = scaler_ ? &*scaler_ : nullptr;
  so.dist = dist_.get();
  // CUDA mixed precisions: the step's values stay on the device until a log line, a checkpoint, a
  // validation or the end needs them (StepOptions::poison), so that the host never waits for the
  // device between steps.
  if (plan_.fused_adamw && !poison_.defined()) poison_ = at::zeros({}, at::TensorOptions(at::kFloat).device(device_));
  if (plan_.fused_adamw) so.poison = &poison_;
  if (o_.cuda_graph) so.graph = &graph_;
  std::vector<StepStats> pending;
  std::vector<int64_t> pending_steps;
  StepStats last;  // the last settled step
  auto fail = [&](int64_t step, const TrainingError& e) {
    std::string latest = path_join(ckpt_dir_, "epoch_latest.pt");
    throw TrainingError(fmt::format("step {} (epoch {}): {}; {}", step, epoch + 1, e.what(),
                                    file_exists(latest) ? "the last good checkpoint is " + latest
                                                        : std::string("no checkpoint was saved yet")));
  };
  auto settle_pending = [&] {
    const int64_t bad = settle(pending);
    if (bad >= 0) {
      try {
        check_loss(pending[static_cast<size_t>(bad)].loss);
      } catch (const TrainingError& e) {
        fail(pending_steps[static_cast<size_t>(bad)], e);
      }
    }
    for (const StepStats& p : pending) {
      summary_.last_loss = p.loss;
      loss_sum_ += p.loss;
      ++loss_n_;
    }
    if (!pending.empty()) last = pending.back();
    pending.clear();
    pending_steps.clear();
  };
  std::vector<TrainBatch> micro;
  int64_t batch_index = first_batch;
  auto t_wait = std::chrono::steady_clock::now();
  // The next batch is taken from the pipeline and copied out of its recycled buffer (CUDA: into
  // page-locked memory, for an asynchronous upload; one plain copy, no ATen operation that would
  // start its own threads beside the busy workers) by a helper thread while this one runs the
  // current step, so that the device does not wait for the copy.
  struct Staged {
    BytePipeline::Batch batch;
    at::Tensor pixels;  // [n, 3, R, R] uint8
    bool ok = false;
  };
  auto fetch = [&pipe, R, this]() {
    Staged s;
    s.ok = pipe.next(s.batch);
    if (s.ok) {
      s.pixels = at::empty({static_cast<int64_t>(s.batch.items.size()), 3, R, R},
                           at::TensorOptions(at::kByte).pinned_memory(device_.is_cuda()));
      std::memcpy(s.pixels.data_ptr<uint8_t>(), s.batch.data.data(), s.batch.data.size());
    }
    return s;
  };
  std::future<Staged> ahead = std::async(std::launch::async, fetch);
  for (;; ++batch_index) {
    Staged cur = ahead.get();
    if (!cur.ok) break;
    ahead = std::async(std::launch::async, fetch);
    const BytePipeline::Batch& b = cur.batch;
    data_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_wait).count();
    std::vector<size_t> texts;
    for (size_t k = 0; k < b.items.size(); ++k) texts.push_back(tr.pairs[static_cast<size_t>(order[position(b.items[k])])].first);
    TrainBatch tb;
    if (device_.is_cuda()) {
      // Both copies from page-locked memory, queued without waiting for the step before them (a
      // pageable copy would wait for the device to finish it); then the normalisation and the
      // cast to the upload dtype (as the CPU cast them before: the same values) on the device.
      tb.pixels = normalize_pixels_u8(cur.pixels.to(device_, /*non_blocking=*/true), norm_table).to(plan_.upload_dtype);
      tb.ids = stage_for_upload(tokens_of(texts), at::kLong).to(device_, /*non_blocking=*/true);
    } else {
      tb.pixels = normalize_pixels_u8(cur.pixels, norm_table);
      tb.ids = tokens_of(texts);
    }
    micro.push_back(std::move(tb));
    if (static_cast<int64_t>(micro.size()) < o_.accum_freq) {
      t_wait = std::chrono::steady_clock::now();
      continue;
    }
    if (step_ >= max_steps_) return;
    if (so.graph && !graph_logged_) {
      const std::string why = StepGraph::unsupported(m, *opt_, micro, so);
      if (!why.empty() && o_.cuda_graph_asked) log_warn("--cuda-graph: not here ({}); the steps run as usual", why);
      else if (!why.empty()) log_debug("no CUDA graph: {}", why);
      graph_logged_ = !why.empty();
    }
    auto t_step = std::chrono::steady_clock::now();
    const double lr = cosine_lr(lr_, o_.warmup, max_steps_, step_);
    try {
      pending.push_back(train_step(m, *opt_, micro, lr, so));
    } catch (const TrainingError& e) {
      fail(step_ + 1, e);
    }
    if (graph_.captured() && !graph_logged_) {
      log_info("step {} on: each step is one launch of a CUDA graph (--cuda-graph)", step_ + 1);
      graph_logged_ = true;
    }
    const int64_t samples = gbs_ * o_.accum_freq;
    step_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_step).count();
    micro.clear();
    ++step_;
    ++session_steps_;
    pending_steps.push_back(step_);
    summary_.steps = step_;
    samples_since_log_ += samples;
    const bool log_now = lead() && (step_ % o_.log_interval == 0 || step_ == max_steps_);
    const bool validate_now = val_ && o_.valid_step_interval > 0 && step_ % o_.valid_step_interval == 0;
    const bool save_now = o_.save_step_frequency > 0 && step_ % o_.save_step_frequency == 0;
    // Also at every epoch's last step and every 64 steps (bounded memory), and before a stop below.
    if (!so.poison || log_now || validate_now || save_now || step_ >= max_steps_ || pending.size() >= 64 ||
        batch_index + 1 >= n_batches_used)
      settle_pending();
    const StepStats& st = last;
    if (log_now) {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - log_t0_).count();
      nlohmann::json j = {{"type", "train"},
                          {"step", step_},
                          {"epoch", epoch + 1},
                          {"loss", st.loss},
                          {"loss_avg", loss_sum_ / loss_n_},
                          {"lr", lr},
                          {"logit_scale", st.logit_scale},
                          {"i2t_acc", st.i2t_acc},
                          {"t2i_acc", st.t2i_acc},
                          {"samples_per_s", secs > 0 ? samples_since_log_ / secs : 0.0},
                          {"data_wait_s", data_s_},  // waiting for decoded batches since the last log line
                          {"step_s", step_s_},       // forward + backward + optimizer since the last log line
                          {"cuda_graph", graph_.captured()}};  // the step replays a CUDA graph (StepGraph)
      append_line(metrics_path_, j.dump());
      c_loss_.push_back({step_, loss_sum_ / loss_n_});
      c_lr_.push_back({step_, lr});
      log_debug("step {}/{} | epoch {} [{}/{}] | loss {:.6f} | lr {:.6g} | logit_scale {:.3f} | {:.1f} samples/s",
                step_, max_steps_, epoch + 1, (batch_index + 1) / o_.accum_freq, steps_per_epoch_, st.loss, lr,
                st.logit_scale, j["samples_per_s"].get<double>());
      loss_sum_ = 0;
      loss_n_ = 0;
      data_s_ = step_s_ = 0;
      samples_since_log_ = 0;
      log_t0_ = std::chrono::steady_clock::now();
    }
    // Terminal: a bar redrawn every step. Otherwise: one parseable line per log step.
    progress_->set_extra(fmt::format("step={}/{} epoch={} loss={:.4f} lr={:.3g} logit_scale={:.3f}", step_, max_steps_,
                                     epoch + 1, st.loss, lr, st.logit_scale));
    if (tty_ || step_ % o_.log_interval == 0 || step_ == max_steps_) progress_->set(step_ - first_step_);
    const int64_t next_batch = batch_index + 1;
    if (validate_now) validate(epoch, step_);
    if (save_now) {
      save(fmt::format("epoch_{}_{}.pt", epoch + 1, step_), epoch + 1, epoch, next_batch);
      save("epoch_latest.pt", epoch + 1, epoch, next_batch);
    }
    t_wait = std::chrono::steady_clock::now();
    // Every rank stops at the same step: a signal on any of them counts for all.
    const bool signalled = dist_ ? dist_->any(g_interrupted) : g_interrupted.load();
    if (signalled || (o_.stop_after_steps > 0 && session_steps_ >= o_.stop_after_steps)) {
      interrupted_ = signalled;
      settle_pending();
      if (step_ < max_steps_) {
        stop_ = true;
        // At the end of an epoch, the epoch's validation and checkpoints come first (run()).
        if (next_batch >= n_batches_used) {
          epoch_finished_ = true;
          return;
        }
        save("epoch_latest.pt", epoch + 1, epoch, next_batch);
        return;
      }
    }
  }
  settle_pending();
  epoch_finished_ = true;
}

TrainSummary Trainer::run() {
  if (o_.runtime.quiet) set_log_level(LogLevel::error);
  else if (o_.runtime.verbose) set_log_level(LogLevel::debug);
  set_threads(o_.runtime.threads);
  device_ = parse_device(o_.runtime.device);
  if (o_.accum_freq < 1 || o_.runtime.batch_size < 1 || o_.log_interval < 1)
    throw UsageError("--batch-size, --accum-freq and --log-interval must be positive");
  if (o_.data_dir.empty()) throw UsageError("--data DIR is required (folder with {split}_imgs.tsv and {split}_texts.jsonl)");
  plan_ = precision_plan(o_.runtime.precision, device_);
  if (o_.resume.empty() && o_.output_dir.empty()) {
    // The vision name is known only once the model is resolved: a provisional name from the flags.
    std::string vision = !o_.model.vision_model.empty() ? path_basename(o_.model.vision_model) : (!o_.model.checkpoint.empty() ? path_basename(o_.model.checkpoint) : "model");
    if (vision.size() > 5 && vision.compare(vision.size() - 5, 5, ".json") == 0) vision.resize(vision.size() - 5);
    if (vision.size() > 3 && vision.compare(vision.size() - 3, 3, ".pt") == 0) vision.resize(vision.size() - 3);
    o_.output_dir = path_join("runs", sanitize(fmt::format("{}-{}-lr{}-bs{}", timestamp(), vision,
                                                           o_.lr > 0 ? fmt::format("{:g}", o_.lr) : "default", o_.runtime.batch_size)));
  }
  setup_dist();
  setup_run_dir();
  setup_model();
  setup_data();
  setup_schedule();
  if (lead()) write_params();
  if (!resume_ckpt_.empty() && lead()) restore_metrics(step_);
  summary_.run_dir = run_dir_;
  summary_.steps = step_;

  InterruptScope interrupts;
  log_t0_ = std::chrono::steady_clock::now();
  tty_ = stderr_is_tty();
  first_step_ = step_;
  if (o_.save_init && resume_ckpt_.empty()) save("epoch0.pt", 0, 0, 0);
  progress_ = std::make_unique<Progress>("train", max_steps_ - step_, "steps");
  for (int64_t epoch = start_epoch_; epoch < max_epochs_ && !stop_; ++epoch) {
    if (step_ >= max_steps_) break;
    const int64_t steps_before = step_;
    train_epoch(epoch, epoch == start_epoch_ ? start_batch_ : 0);
    summary_.epochs = epoch + 1;
    const bool mid_epoch_stop = stop_ && !epoch_finished_;
    if (mid_epoch_stop) break;
    const bool stepped = step_ > steps_before;
    if (val_ && o_.valid_epoch_interval > 0 && (epoch + 1) % o_.valid_epoch_interval == 0) validate(epoch, step_);
    if (stepped) {
      if (epoch + 1 == max_epochs_ || (o_.save_epoch_frequency > 0 && (epoch + 1) % o_.save_epoch_frequency == 0))
        save(fmt::format("epoch{}.pt", epoch + 1), epoch + 1, epoch + 1, 0);
      save("epoch_latest.pt", epoch + 1, epoch + 1, 0);
    }
    if (stop_) break;
  }
  progress_->finish();
  if (c_loss_.size() || c_val_loss_.size()) redraw_curves();
  summary_.stopped_early = stop_;
  summary_.interrupted = interrupted_;
  if (stop_)
    log_info("stopped after step {} of {}: continue with --resume {}", step_, max_steps_, run_dir_);
  else {
    if (lead())
      write_file_atomic(path_join(run_dir_, "DONE"), fmt::format("{{\"steps\": {}, \"epochs\": {}}}\n", step_, max_epochs_));
    log_info("finished: {} steps, last loss {:.4f}; checkpoints in {}", step_, summary_.last_loss, ckpt_dir_);
  }
  return summary_;
}

}  // namespace

TrainSummary run_finetune(const TrainOptions& options) {
  tune_malloc();
  Trainer t(options);
  return t.run();
}

}  // namespace clip
