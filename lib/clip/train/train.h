// cn_clip's fine-tuning recipe (cn_clip/training/{main,train,scheduler}.py) on LibTorch:
// symmetric InfoNCE over in-batch logits, AdamW with cn_clip's two weight-decay groups, linear
// warmup then cosine learning rate set before every step, logit_scale clamped to [0, 4.6052]
// after every step, optional feature-caching gradient accumulation (--accum-freq).
//
// A run writes one folder: params.json (resolved settings), metrics.jsonl (append-only, one JSON
// object per logged step and per validation), curves.svg (loss, lr, validation Recall@1 over steps)
// and checkpoints/ in cn_clip's layout ({epoch, step, name, state_dict with "module." keys,
// optimizer in torch.optim.AdamW.state_dict() layout}) plus a "clip_cpp_resume" entry holding what an
// exact resume needs (data position, schedule step, RNG state). torch.load reads every file.
//
// Deliberate difference from cn_clip: the per-epoch shuffle uses our own seeded generator, not
// torch's DistributedSampler, so the sample order differs from a Python run with the same seed (the
// set of samples per epoch and the padding rule are the same).
#pragma once
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "clip/base/runtime.h"
#include "clip/io/pyobj.h"
#include "clip/model/loader.h"

namespace clip {

class ClipModel;
class DistGroup;

// ---------------------------------------------------------------------------------------------
// Building blocks (each one reproduces a piece of cn_clip; the parity tests check them).

// cn_clip.training.scheduler.cosine_lr for one step (0-based): base*(step+1)/warmup while
// step < warmup, then 0.5*(1+cos(pi*(step-warmup)/(total-warmup)))*base, evaluated in the same
// floating-point order as the Python code.
double cosine_lr(double base_lr, int64_t warmup, int64_t total_steps, int64_t step);

// cn_clip's rule: no weight decay iff the name contains "bn", "ln", "bias" or "logit_scale"
// (case-sensitive substrings: BERT's "LayerNorm.weight" IS decayed).
bool no_weight_decay(const std::string& name);

// logit_scale.data = clamp(logit_scale, 0, 4.6052), as after every cn_clip optimizer step.
constexpr double kLogitScaleMax = 4.6052;
void clamp_logit_scale(ClipModel& model);

struct AdamWOptions {
  double lr = 5e-4;
  double beta1 = 0.9, beta2 = 0.98, eps = 1e-6;
  double weight_decay = 0.2;
  // One multi-tensor kernel per parameter group (PyTorch's fused AdamW) where the build has it
  // (PyTorch 2.x, CUDA tensors); elsewhere the single-tensor sequence below. Same formula; the
  // roundings differ, so the exact fp32 path keeps this off.
  bool fused = false;
};

// torch.optim.AdamW (torch 1.13, single-tensor path, amsgrad/maximize off), written out so that its
// state can be saved in PyTorch's layout and the update is bit-for-bit the same sequence of ATen ops:
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// Parameters are split like cn_clip's main.py: group 0 = names matched by no_weight_decay (wd 0),
// group 1 = the rest (wd). Parameters without a gradient are skipped (no state, as PyTorch).
class AdamW {
 public:
  struct Param {
    std::string name;
    at::Tensor tensor;
    // float32 master copy when `tensor` is kept in a lower precision (keep_master_weights): the
    // update runs on the master, then rounds into `tensor`.
    at::Tensor master;
    at::Tensor exp_avg, exp_avg_sq;  // undefined until the first step that sees a gradient
    int64_t step = 0;
    at::Tensor step_t;  // the fused path's count (float32, on the parameter's device)
    at::Tensor grad32;  // the fused path's float32 copy of a low-precision gradient
  };
  // `named`: the trainable parameters in cn_clip's state-dict order.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& named, const AdamWOptions& options);

  // Also fills the fused path's device copy of the rate (one small kernel on the current stream), which
  // a captured step (StepGraph) reads at each replay.
  void set_lr(double lr);
  double lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }
  void zero_grad();  // grads set to undefined, like zero_grad(set_to_none=True)
  // found_inf (optional, a 0-dim float tensor on the parameters' device): a non-zero value
  // skips the update (the loss scaler found an overflow), without a device sync on the fused path.
  void step(const at::Tensor& found_inf = at::Tensor());

  // Clones every parameter into a float32 master before the model is converted to a lower
  // precision (bf16 training): the moments and the update live in float32, the model's copy is
  // rounded from the master after each step. Call once, before the conversion.
  void keep_master_weights();
  bool has_master_weights() const { return !params_.empty() && params_.front().master.defined(); }
  // Packs, per group, the low-precision parameters with masters and a gradient into one buffer
  // each (masters, parameters, float32 gradient copies; see Packed below): the fused CUDA step
  // does it itself before its first update. The same tensors stay valid (they become views).
  // Returns how many parameters are packed.
  int pack_master_weights();
  // The float32 value of parameter i (its master when kept, else the tensor itself).
  const at::Tensor& weight(size_t i) const { return params_[i].master.defined() ? params_[i].master : params_[i].tensor; }
  // Parameters in PyTorch's index order (group 0 first); group_of(i) is 0 or 1.
  const std::vector<Param>& params() const { return params_; }
  size_t group_size(int group) const { return group == 0 ? n_no_decay_ : params_.size() - n_no_decay_; }
  int group_of(size_t i) const { return i < n_no_decay_ ? 0 : 1; }

  // torch.optim.AdamW.state_dict(): {"state": {idx: {"step": 0-dim float32 tensor, "exp_avg",
  // "exp_avg_sq"}}, "param_groups": [{"lr", "betas", "eps", "weight_decay", "amsgrad", "foreach",
  // "maximize", "capturable", "params": [idx...]}] x 2}. CPU tensors are shared, not copied:
  // serialise the result before the next step.
  PyPtr state_dict() const;
  // Restores moments and step counts (hyper-parameters stay those of this optimizer). Throws
  // ModelError when the group sizes or a tensor shape do not match.
  void load_state_dict(const PyValue& sd);

 private:
  bool fused_step(const at::Tensor& found_inf);
  std::vector<size_t> packable_members(int group) const;
  // The group's packable members, packed (again when the set changed); empty when fewer than two.
  std::vector<size_t> pack_if_needed(int group);
  void pack_group(int group, const std::vector<size_t>& members);
  void ensure_packed_grad32(int group);
  // Whether the build's own kernel updates the group's pack: only with detail::LpKernels::all, and
  // a skip flag (found_inf), if any, a float32 scalar on the pack's device, which the kernel reads.
  // Call right after pack_if_needed (every member then has a gradient).
  bool own_kernel_applies(int group, const at::Tensor& found_inf) const;
  void own_kernel_step(int group, const at::Tensor& found_inf);
  int64_t step_count(const Param& p) const;

  AdamWOptions options_;
  std::vector<Param> params_;
  // The fused path's learning rate as a float32 0-dim tensor on the parameters' device (PyTorch's
  // tensor-lr form of the fused AdamW, which a CUDA graph can replay with a new rate each step).
  at::Tensor lr_t_;
  size_t n_no_decay_ = 0;
  // The fused path with master weights keeps each group's masters, low-precision parameters and
  // float32 gradient copies as views into one buffer each (pack_group), so that the two
  // conversions of a step (gradients up, weights down) are one copy each, not one per parameter.
  // The master and parameter tensors keep their identity (set_data), so whoever holds them (the
  // model, the trainer's checkpoint weights) sees the packed values.
  // Where the build has its own CUDA kernels (and no loss scale is applied), one kernel updates a pack
  // from the members' gradients directly (train/cuda/adamw.cu), with the moments in two more buffers;
  // the float32 gradient copies are then never made.
  struct Packed {
    std::vector<size_t> members;  // parameter indices, in buffer order
    std::vector<int64_t> offsets;  // member k spans [offsets[k], offsets[k + 1]) of the buffers
    at::Tensor master, low, grad32, exp_avg, exp_avg_sq;
  };
  Packed packed_[2];
};

// Symmetric InfoNCE: logits_per_image = (scale * img) @ txt^T, logits_per_text its transpose,
// loss = (CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2. img/txt L2-normalised.
struct ContrastiveLoss {
  at::Tensor loss;              // 0-dim
  at::Tensor logits_per_image;  // [N, N]
};
ContrastiveLoss contrastive_loss(const at::Tensor& image_features, const at::Tensor& text_features,
                                 const at::Tensor& scale);

struct TrainBatch {
  at::Tensor pixels;  // [B, 3, R, R] float32, normalised
  at::Tensor ids;     // [B, L] int64
};

// torch.cuda.amp.GradScaler's dynamic loss scale, which cn_clip's --precision amp (fp16 autocast)
// uses: the loss is multiplied by `scale` before backward; the gradients are unscaled and checked;
// a step with an inf/NaN gradient is skipped and the scale multiplied by `backoff`; after
// `interval` good steps in a row it is multiplied by `growth`. All on the device, without a sync.
struct LossScaler {
  at::Tensor scale;           // float32 [1]
  at::Tensor growth_tracker;  // int32 [1]: good steps in a row
  double growth = 2.0, backoff = 0.5;
  int64_t interval = 2000;
  LossScaler(const at::Device& device, double initial_scale = 65536.0, int64_t good_steps = 0);
  double value() const;  // the current scale (a device sync)
  int64_t good_steps() const;
};

// What a training precision (--precision fp32 | amp | bf16 | amp-fp16) asks of the model, the
// optimizer and the step. Throws UsageError for an unknown name or amp-fp16 off CUDA.
struct PrecisionPlan {
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
  bool fused_adamw = false;   // CUDA and not fp32
  bool bf16_weights = false;  // bf16: model in bf16, float32 masters in the optimizer
  bool loss_scaler = false;   // amp-fp16
  bool training_kernels = false;  // CUDA and not fp32: ClipModelImpl::set_low_precision_kernels
  // Pixels are uploaded in this dtype (bf16/fp16 where the first convolution rounds them to it
  // anyway: the same values in half the bytes).
  at::ScalarType upload_dtype = at::kFloat;
};
PrecisionPlan precision_plan(const std::string& precision, const at::Device& device);

// bf16 training: keeps the optimizer's float32 masters, then converts the model to bf16 (float32
// where cn_clip's fp16 layout keeps it). Returns the float32 tensors that checkpoints hold in place
// of the model's (the masters, updated in place by each step, and copies of frozen tensors).
std::map<std::string, at::Tensor> convert_to_bf16_training(ClipModel& model, AdamW& optimizer);

class StepGraph;

struct StepOptions {
  bool autocast = false;       // autocast for the forward passes (CPU or CUDA, by the model's device)
  at::ScalarType autocast_dtype = at::kBFloat16;  // bf16 (--precision amp) or fp16 (amp-fp16, with a scaler)
  LossScaler* scaler = nullptr;
  bool compute_grad_norm = false;
  // Data-parallel (dist.h): the batches are this rank's slices of the global ones. Features of all
  // ranks are gathered (this rank's keep their gradients) so that the loss is the global batch's,
  // and the gradients are summed over ranks before the step (logit_scale's, which every rank
  // computes in full, is averaged): the step equals a single process's on the global batch.
  DistGroup* dist = nullptr;
  // Deferred statistics (the trainer sets it for the CUDA mixed precisions): nothing in the step
  // reads a value back from the device, so the host queues the next step while the device works.
  // The loss, accuracies and logit_scale stay on the device in StepStats::pending until settle(). A
  // non-finite loss sets *poison (a 0-dim float32 tensor on the device, 0 at the start), and while it
  // is set every optimizer step is skipped on the device (as a loss scaler skips one), so the weights
  // stay those of the last good step until the caller settles the stats and stops.
  at::Tensor* poison = nullptr;
  // CUDA graph of the step (see StepGraph): used where StepGraph::unsupported is empty, else the step
  // runs as usual.
  StepGraph* graph = nullptr;
};

struct StepStats {
  double loss = 0;        // loss of the (last) forward with gradients, as cn_clip logs it
  double i2t_acc = 0, t2i_acc = 0;
  double grad_l2 = -1;    // global L2 norm of all gradients (when requested)
  double logit_scale = 0; // after the step and the clamp
  at::Tensor pending;     // deferred: [loss, i2t_acc, t2i_acc, logit_scale] float32 on the device
};

// Reads the pending values of deferred steps (one device-to-host copy for all of them) into their
// fields. Returns the index of the first step whose loss is not finite, or -1.
int64_t settle(std::vector<StepStats>& steps);
// Throws the TrainingError of a non-finite loss (what train_step throws when not deferred).
void check_loss(double loss);

// One optimizer step with cn_clip's semantics (data-parallel when options.dist is set). One batch: forward, loss, backward. Several batches
// (--accum-freq): features of every batch are first computed without gradients, then each batch is
// re-run with gradients and its fresh features substituted into the cached set, one backward each,
// one optimizer step at the end. The learning rate is set to `lr` first; logit_scale is clamped
// after. A non-finite loss throws TrainingError BEFORE the optimizer step, leaving weights intact
// (deferred: see StepOptions::poison).
StepStats train_step(ClipModel& model, AdamW& optimizer, const std::vector<TrainBatch>& batches, double lr,
                     const StepOptions& options);

// The training step as one CUDA graph: after `warmup` ordinary steps (run on a side stream, which a
// capture needs), the next step is captured and every later one is a single graph launch, so that the
// host's kernel launches no longer pace a fast card. Each call is one real optimizer step either way,
// with the same kernels in the same order and the same random streams: the numbers are those of the
// ordinary step. Inputs are copied into static buffers; the learning rate is read on the device
// (AdamW::set_lr); StepStats::pending is copied out of the graph's output after each launch.
// What a graph cannot hold (a build without CUDA, the CPU, the unfused optimizer, accumulation over
// several batches, several processes, gradient checkpointing, per-step reads such as the gradient
// norm) is named by unsupported(); train_step then runs the step as usual. A capture that fails is
// reported once (log_warn) and the steps go on without a graph. clip-finetune uses it by default
// (--no-cuda-graph: not): on ViT-B-16 at batch 128 on an H100 the replayed step took 50.9 ms against
// 52.0 ms launched (docs/benchmarks.md).
class StepGraph {
 public:
  explicit StepGraph(int warmup = 2);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  // Empty when these steps can be captured, else why not.
  static std::string unsupported(ClipModel& model, const AdamW& optimizer, const std::vector<TrainBatch>& batches,
                                 const StepOptions& options);
  // One step (the learning rate already set); a batch of other shapes than the captured one runs as usual.
  StepStats step(ClipModel& model, AdamW& optimizer, const TrainBatch& batch, const StepOptions& options);
  bool captured() const;
  int64_t replays() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Checkpoints.

// Position of a run, stored under "clip_cpp_resume" in our checkpoints.
struct ResumeState {
  int64_t step = 0;            // optimizer steps done (the schedule's next step index)
  int64_t epoch = 0;           // 0-based epoch the next batch belongs to
  int64_t batch_in_epoch = 0;  // index of the next batch inside that epoch
  at::Tensor cpu_rng;          // torch's default CPU generator state (dropout)
  at::Tensor cuda_rng;         // CUDA generator state, undefined on CPU runs
  nlohmann::json extra;        // best validation so far, seed, run name ...
};

// Writes {epoch, step, name, state_dict ("module." + cn_clip keys, OrderedDict), optimizer,
// clip_cpp_resume} atomically with save_torch_zip. `optimizer`/`resume` may be null (weights-only
// file, like the released checkpoints).
// fp32_weights: float32 values that stand in for the model's tensors of the same name (the masters of
// a model trained in bf16), so that the file holds float32 weights whatever the training precision.
void save_training_checkpoint(const std::string& path, ClipModel& model, const AdamW* optimizer,
                              int64_t epoch, int64_t step, const std::string& name, const ResumeState* resume,
                              const std::map<std::string, at::Tensor>* fp32_weights = nullptr);

// Reads a clip_cpp_resume entry and the optimizer state from the unpickled checkpoint root.
// Returns false when the file carries no resume information (e.g. written by cn_clip).
bool read_resume_state(const PyPtr& root, ResumeState& out);

// ---------------------------------------------------------------------------------------------
// Data order.

// The pair indices of one epoch: cn_clip pads the dataset to a multiple of the (global) batch by
// wrapping (padded index i -> sample i % n), then shuffles the padded index list. Our shuffle is a
// Fisher-Yates over a splitmix64 stream seeded by (seed, epoch) — reproducible, not torch's.
std::vector<int64_t> epoch_order(int64_t num_samples, int64_t batch_size, uint64_t seed, int64_t epoch,
                                 bool shuffle = true);

// ---------------------------------------------------------------------------------------------
// Training curves: an SVG chart of train/val loss, learning rate and validation Recall@1 over steps.

struct CurvePoint {
  int64_t step;
  double value;
};
struct CurveSeries {
  std::string label, color;
  std::vector<CurvePoint> points;
  bool markers = false;  // dots at each point (sparse series such as validations)
};
struct CurvePanel {
  std::string title, y_label;
  std::vector<CurveSeries> series;
  bool log_y = false;
};
std::string render_curves_svg(const std::string& title, const std::vector<CurvePanel>& panels, int64_t max_step);

// ---------------------------------------------------------------------------------------------
// The whole run (clip-finetune).

struct TrainOptions {
  // model: checkpoint to start from (empty = scratch; then both towers are required), towers, vocab
  // (default: beside the checkpoint / the text config / in the data folder), context length
  ModelOptions model;
  // data
  std::string data_dir, train_split = "train", val_split = "valid";
  std::string on_error = "stop";  // "skip": bad TSV/JSONL lines of the splits are skipped (images still stop)
  bool no_validation = false;
  // optimisation (negative = cn_clip's default for the architecture)
  double lr = -1, wd = 0.2, beta1 = -1, beta2 = -1, eps = -1;
  int64_t warmup = 500;
  int valid_batch_size = 64;
  int64_t max_epochs = 32, max_steps = -1;
  int accum_freq = 1;
  bool use_augment = false, freeze_vision = false, grad_checkpointing = false;
  // CUDA mixed precisions: replay the step as a CUDA graph (StepGraph) where it can run. On by default;
  // cuda_graph_asked (not saved): the user named --cuda-graph, so a run where it cannot be used says why.
  bool cuda_graph = true, cuda_graph_asked = false;
  uint64_t seed = 123;
  // schedule of side tasks (<= 0: off)
  int64_t valid_step_interval = 0, valid_epoch_interval = 1;
  int64_t save_step_frequency = -1, save_epoch_frequency = 1;
  int64_t log_interval = 10;
  int64_t stop_after_steps = 0;           // leave the run after N steps of this session (resumable)
  bool save_init = false;                 // also save the starting weights as checkpoints/epoch0.pt
  // runtime: precision fp32 | amp (bf16 autocast), device, threads, batch size (per step), verbosity
  RuntimeOptions runtime;
  int workers = 0;                        // decode threads (0 = as many as --threads)
  // run folder
  std::string output_dir;                 // default runs/<date>-<vision>-lr<lr>-bs<bs>
  std::string name;                       // cn_clip's experiment name (stored in checkpoints); default: folder name
  std::string resume;                     // run folder or checkpoint to continue exactly
  // data-parallel (docs/distributed.md): batch_size is per process, the global batch world x batch
  int nproc_per_node = 0;                 // > 0: start this many local workers (0: one process, or torchrun's env)
  std::string dist_backend;               // gloo | nccl (empty: nccl on cuda, gloo on the CPU)
  int dist_timeout_s = 1800;              // rendezvous and every collective

  nlohmann::json to_json() const;
  static TrainOptions from_json(const nlohmann::json& j);  // unknown keys ignored
  // The options stored in the run folder of `resume` (a run folder or a checkpoint inside one).
  static TrainOptions stored_for_resume(const std::string& resume);
};

struct TrainSummary {
  std::string run_dir;
  int64_t steps = 0, epochs = 0;
  double last_loss = 0;
  nlohmann::json last_validation;  // empty when no validation ran
  bool stopped_early = false;      // --stop-after-steps or an interrupt
  bool interrupted = false;        // SIGINT/SIGTERM: a resumable checkpoint was saved
};

// Runs (or resumes) a fine-tuning run. Throws UsageError / DataError / ModelError / IoError, and
// TrainingError for a non-finite loss (the last good checkpoint stays) or an existing run folder.
TrainSummary run_finetune(const TrainOptions& options);

}  // namespace clip
