// The Chinese-CLIP model in LibTorch: VisualTransformer / ModifiedResNet, BERT, projections and
// logit_scale, exactly as cn_clip/clip/model.py and modeling_bert.py compute them.
//
// Parameter and buffer names as returned by named_parameters()/named_buffers() are cn_clip's own
// state-dict keys without "module." (e.g. "visual.transformer.resblocks.0.attn.in_proj_weight",
// "bert.encoder.layer.0.attention.self.query.weight", "visual.layer1.0.downsample.0.weight"),
// so checkpoints, weight-decay groups and exports all use one naming.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "clip/io/checkpoint.h"
#include "clip/model/config.h"

namespace clip {

// How the constructor fills new parameters (thread-local, for the scope's lifetime): cn_clip's
// zeros/ones (values, the default), unfilled memory for weights a checkpoint overwrites at once
// (uninitialised: no page is touched), or shapes only on the meta device (meta: no memory).
enum class ParamFill { values, uninitialised, meta };
class ParamFillScope {
 public:
  explicit ParamFillScope(ParamFill f);
  ~ParamFillScope();
  ParamFillScope(const ParamFillScope&) = delete;
  ParamFillScope& operator=(const ParamFillScope&) = delete;

 private:
  ParamFill prev_;
};

class ClipModelImpl : public torch::nn::Module {
 public:
  // towers: a text-only model has no visual.* (encode_image throws UsageError), an image-only one
  // no bert.* and no text_projection (encode_text throws); logit_scale always.
  explicit ClipModelImpl(const ModelConfig& cfg, Towers towers = Towers::both);
  ~ClipModelImpl() override;

  // [N,3,R,R] float (normalised pixels) -> [N,E] unnormalised image features.
  at::Tensor encode_image(const at::Tensor& pixels);
  // [N,L] int64 token ids (0 = padding) -> [N,E] unnormalised text features ([CLS] @ text_projection).
  at::Tensor encode_text(const at::Tensor& ids);
  // Training/eval forward: (L2-normalised image features, L2-normalised text features, exp(logit_scale)).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& pixels, const at::Tensor& ids);

  const ModelConfig& config() const { return cfg_; }
  Towers towers() const { return loaded_; }
  at::Tensor& logit_scale() { return logit_scale_; }

  // Recompute each transformer block / BERT layer in backward instead of storing activations.
  void set_grad_checkpointing(bool on);
  bool grad_checkpointing() const { return grad_checkpointing_; }
  // Kernels for bf16/fp16 on GPUs, in training and inference (see LayerNorm::direct, Mlp::silu_form,
  // BertSelfAttention::fused_qkv and VisualTransformer::patch_matmul): the same functions in fewer,
  // fused kernels, rounded differently. Off by default and for fp32, so that the CPU and the fp32
  // step keep cn_clip's numbers.
  void set_low_precision_kernels(bool on);
  // requires_grad=false on visual.*; ModifiedResNet BatchNorms stay in eval mode while training.
  void freeze_vision(bool on);
  bool vision_frozen() const { return vision_frozen_; }
  void train(bool on = true) override;

  // cn_clip's random initialisation (CLIP.initialize_parameters and BERT's init), for training from scratch.
  // Deterministic for a seed (drawn on the CPU in float32, whatever the model's device/dtype). A freshly
  // constructed model holds zeros (LayerNorm/BatchNorm at 1/0) until this or load_weights is called.
  void initialize_parameters(uint64_t seed);

  // Moves/casts like torch::nn::Module::to, but as cn_clip's convert_weights does for half precision:
  // logit_scale, the ViT's class/positional embeddings and LayerNorms, and the ResNet's BatchNorms and
  // attention-pool positional embedding stay float32 (the layers compute in float32 and cast back);
  // integer buffers (num_batches_tracked) keep their type.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;
  // Replaces every parameter and buffer by an unfilled one of the same shape on `device`, in the dtype
  // to(device, dtype) would give it: nothing is copied. For a stand-in model whose only use is to run
  // the kernels once (Encoder's warm-up) before the real weights arrive.
  void allocate_on(torch::Device device, torch::Dtype dtype);
  // Stand-in passes through the first layer of each loaded transformer tower, in parts that do not
  // depend on each other (the layer's attention half and its feed-forward half, on activations of
  // `images` images or `texts` texts of `len` tokens; a count of 0 skips that tower), each a job
  // returning a scalar to wait on. Encoder's warm-up runs them on threads of their own beside the
  // whole towers: the kernels' first use (CUDA's lazy loading, the libraries' set-up) overlaps
  // across threads. For a model without gradients (each job's thread sets none); the values mean
  // nothing. A ResNet tower has none.
  std::vector<std::function<at::Tensor()>> warm_up_parts(int64_t images, int64_t texts, int64_t len);
  // Whether `to(dtype)` leaves the named tensor in float32 (see above).
  static bool keeps_float32(const std::string& name);

 private:
  struct Towers_;
  ModelConfig cfg_;
  std::shared_ptr<Towers_> towers_;
  Towers loaded_ = Towers::both;
  at::Tensor logit_scale_;
  bool vision_frozen_ = false;
  bool grad_checkpointing_ = false;
};
TORCH_MODULE(ClipModel);

// Loads the tensors of `sd` (cn_clip names) into the model, casting float16/bfloat16 to the
// model's dtype. strict: every model key must be present and no unknown key may remain (keys of a
// tower the model was built without are skipped). A shape mismatch throws ModelError naming the
// key, the expected and the found shape.
// `mapped`: the [begin, begin + size) ranges of the read-only file mappings the tensors may point into
// (Checkpoint::maps); after its finiteness scan, a copied tensor or a lookup table (embeddings) in one
// of them has its pages unmapped again (they stay in the page cache), so that the pages the job does
// not read again do not count in its memory.
void load_weights(ClipModel& model, const StateDict& sd, bool strict = true, WeightUse use = WeightUse::copy,
                  const std::vector<std::pair<const void*, size_t>>& mapped = {});

// The model's parameters and buffers under cn_clip names, in cn_clip's state_dict order.
std::vector<std::pair<std::string, at::Tensor>> model_state(ClipModel& model);

// SHA-256 (hex, first 16 chars) over the names, shapes and bytes of the float32 weights: identifies
// the weights in feature stores.
std::string weights_hash(ClipModel& model);
// The same digest computed from a checkpoint's tensors for a model of `cfg` with both towers (as
// weights_hash of that model after a strict load_weights), without building it: for one-tower
// models, whose hash still names the whole checkpoint. Reads every tensor's bytes.
std::string weights_hash(const ModelConfig& cfg, const StateDict& sd);
// The definition of that digest: part of the key under which the encoder caches it (digest_cache.h).
// Change it whenever the digest would change for the same file (what is hashed, how a checkpoint's
// tensors are read), so that no cached value of the old definition is found.
constexpr int kWeightsHashScheme = 1;

}  // namespace clip
