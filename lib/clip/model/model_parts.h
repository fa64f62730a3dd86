// Internal to the model implementation (model*.cpp): the building blocks of cn_clip's towers as
// LibTorch modules whose registered names reproduce cn_clip's state-dict keys. Parameters are
// registered in cn_clip's __init__ order so that a walk (own parameters, own buffers, children)
// gives cn_clip's state_dict order.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "clip/model/config.h"

namespace clip::detail {

using ModulePtr = std::shared_ptr<torch::nn::Module>;

// A new parameter/buffer of `shape` filled with `value`, or (ParamFillScope, model.h) left unfilled
// when a checkpoint overwrites it, or a shape on the meta device (no memory).
at::Tensor new_param(at::IntArrayRef shape, double value, at::ScalarType dtype = at::kFloat);

// Runs fn(x) without keeping its activations; backward re-runs it with the forward's RNG and
// autocast state and differentiates with respect to x and `params` (the tensors fn reads that need
// gradients). Falls back to a plain call when no gradient is being recorded.
at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x,
                        const std::vector<at::Tensor>& params);

// Training with the low-precision kernels (ClipModelImpl::set_low_precision_kernels): at::linear and
// at::layer_norm, except that where gradients are recorded for bf16/fp16 activations and parameters of
// the same dtype on CUDA, this build's CUDA kernels (model_cuda.cpp) sum the bias and LayerNorm weight
// gradients in one pass instead of ATen's reductions, and with LpKernels::all also run LayerNorm's rows
// (forward; backward with its weight gradients in the same pass). Elsewhere, and in builds without the
// kernels (lp_kernels_built() false), exactly the ATen functions.
at::Tensor lp_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
at::Tensor lp_layer_norm(const at::Tensor& x, int64_t n, const at::Tensor& w, const at::Tensor& b, double eps);
bool lp_kernels_built();
// Which of the build's kernels the low-precision forms use where they apply: none (ATen's forms
// throughout), the gradient sums (colsum.cu: bias gradients, LayerNorm's weight gradients), or
// also LayerNorm's rows (layernorm.cu) and the optimizer's packed update (train/cuda/adamw.cu): all,
// the default. bench_train selects with --own-kernels; the environment variable CLIP_OWN_KERNELS
// (none, sums or all) sets the starting choice in every tool.
enum class LpKernels { none, sums, all };
void set_lp_kernels(LpKernels k);
LpKernels lp_kernels();

// A plain container whose children are named "0", "1", ... (nn.Sequential / nn.ModuleList keys).
template <typename T>
struct IndexedList {
  ModulePtr holder = std::make_shared<torch::nn::Module>();
  std::vector<std::shared_ptr<T>> items;
  void push_back(std::shared_ptr<T> m) {
    holder->register_module(std::to_string(items.size()), m);
    items.push_back(std::move(m));
  }
};

struct Linear : torch::nn::Module {
  Linear(int64_t in, int64_t out, bool with_bias = true);
  at::Tensor forward(const at::Tensor& x) const;
  int64_t in_features, out_features;
  at::Tensor weight, bias;
  bool low_precision = false;  // lp_linear (set_low_precision_kernels)
};

// fp32_math: cn_clip's vision LayerNorm subclass (normalise in float32, cast back). BERT uses the
// plain torch LayerNorm (math in the activation dtype).
struct LayerNorm : torch::nn::Module {
  LayerNorm(int64_t n, double eps, bool fp32_math);
  at::Tensor forward(const at::Tensor& x) const;
  int64_t n;
  double eps;
  bool fp32_math;
  // Low-precision kernels (ClipModelImpl::set_low_precision_kernels): a bf16/fp16 activation is
  // normalised by one kernel in its own dtype (float32 math inside, weight and bias rounded to it)
  // instead of cast to float32 and back.
  bool direct = false;
  at::Tensor weight, bias;
};

struct Conv2d : torch::nn::Module {  // bias-free, as every conv in cn_clip
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding);
  at::Tensor forward(const at::Tensor& x) const;
  int64_t stride, padding;
  at::Tensor weight;
};

struct BatchNorm2d : torch::nn::Module {  // eps 1e-5, momentum 0.1, running stats tracked
  explicit BatchNorm2d(int64_t n);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;
};

struct Embedding : torch::nn::Module {
  Embedding(int64_t num, int64_t dim, int64_t padding_idx = -1);
  at::Tensor forward(const at::Tensor& ids) const;
  int64_t padding_idx;
  at::Tensor weight;
};

// ---- VisualTransformer ---------------------------------------------------------------------

struct MultiheadAttention : torch::nn::Module {  // nn.MultiheadAttention(width, heads), batch-first here
  MultiheadAttention(int64_t width, int64_t heads);
  at::Tensor forward(const at::Tensor& x) const;  // [B, L, W] self-attention, no mask
  int64_t width, heads;
  at::Tensor in_proj_weight, in_proj_bias;
  std::shared_ptr<Linear> out_proj;
  bool low_precision = false;  // lp_linear for in_proj (set_low_precision_kernels)
};

struct Mlp : torch::nn::Module {  // c_fc: width -> hidden, QuickGELU, c_proj: hidden -> width
  Mlp(int64_t width, int64_t hidden);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<Linear> c_fc, c_proj;
  // Low-precision kernels: QuickGELU(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702, with
  // 1.702 folded into c_fc's weight and bias and 1/1.702 into c_proj's weight, so that the activation
  // is one fused kernel forward and one backward (silu) instead of three and five.
  bool silu_form = false;
};

struct ResidualAttentionBlock : torch::nn::Module {
  ResidualAttentionBlock(int64_t width, int64_t heads, int64_t mlp_width);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<MultiheadAttention> attn;
  std::shared_ptr<LayerNorm> ln_1;
  std::shared_ptr<Mlp> mlp;
  std::shared_ptr<LayerNorm> ln_2;
};

struct VisionTransformerStack : torch::nn::Module {  // cn_clip's Transformer (holds "resblocks")
  VisionTransformerStack(int64_t width, int64_t layers, int64_t heads, int64_t mlp_width);
  at::Tensor forward(const at::Tensor& x) const;
  IndexedList<ResidualAttentionBlock> resblocks;
  bool grad_checkpointing = false;
};

struct VisualTransformer : torch::nn::Module {
  explicit VisualTransformer(const VisionConfig& c);
  at::Tensor forward(const at::Tensor& pixels);
  VisionConfig cfg;
  std::shared_ptr<Conv2d> conv1;
  at::Tensor class_embedding, positional_embedding, proj;
  std::shared_ptr<LayerNorm> ln_pre;
  std::shared_ptr<VisionTransformerStack> transformer;
  std::shared_ptr<LayerNorm> ln_post;
  // Low-precision kernels: the patch embedding (a convolution whose stride is its kernel) as one
  // matrix product over the image's patches, instead of cuDNN's layout change and convolution.
  bool patch_matmul = false;
};

// ---- ModifiedResNet ------------------------------------------------------------------------

struct Downsample : torch::nn::Module {  // Sequential("-1" AvgPool2d(stride), "0" conv1x1, "1" BN)
  Downsample(int64_t in, int64_t out, int64_t stride);
  at::Tensor forward(const at::Tensor& x);
  int64_t stride;
  std::shared_ptr<Conv2d> conv;
  std::shared_ptr<BatchNorm2d> bn;
};

struct Bottleneck : torch::nn::Module {
  Bottleneck(int64_t inplanes, int64_t planes, int64_t stride);
  at::Tensor forward(const at::Tensor& x);
  int64_t stride;
  std::shared_ptr<Conv2d> conv1, conv2, conv3;
  std::shared_ptr<BatchNorm2d> bn1, bn2, bn3;
  std::shared_ptr<Downsample> downsample;  // null when the shapes already match
};

struct AttentionPool2d : torch::nn::Module {
  AttentionPool2d(int64_t spatial, int64_t embed, int64_t heads, int64_t out);
  at::Tensor forward(const at::Tensor& x) const;  // [N, C, H, W] -> [N, out]
  int64_t embed, heads;
  at::Tensor positional_embedding;
  std::shared_ptr<Linear> k_proj, q_proj, v_proj, c_proj;
};

struct ModifiedResNet : torch::nn::Module {
  explicit ModifiedResNet(const VisionConfig& c);
  at::Tensor forward(const at::Tensor& pixels);
  VisionConfig cfg;
  std::shared_ptr<Conv2d> conv1, conv2, conv3;
  std::shared_ptr<BatchNorm2d> bn1, bn2, bn3;
  std::vector<IndexedList<Bottleneck>> stages;  // layer1..layer4
  std::shared_ptr<AttentionPool2d> attnpool;
};

// ---- BERT ----------------------------------------------------------------------------------

at::Tensor bert_activation(const std::string& act, const at::Tensor& x);

struct BertEmbeddings : torch::nn::Module {
  explicit BertEmbeddings(const TextConfig& c);
  at::Tensor forward(const at::Tensor& ids);
  TextConfig cfg;
  std::shared_ptr<Embedding> word_embeddings, position_embeddings, token_type_embeddings;
  std::shared_ptr<LayerNorm> layer_norm;
};

struct BertSelfAttention : torch::nn::Module {
  explicit BertSelfAttention(const TextConfig& c);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);
  int64_t heads;
  double dropout;
  std::shared_ptr<Linear> query, key, value;
  // Low-precision kernels: query, key and value as one product of their concatenated
  // weights (the same sums, which a GPU library may block differently).
  bool fused_qkv = false;
};

struct BertDenseNorm : torch::nn::Module {  // BertSelfOutput / BertOutput: dense -> dropout -> LN(x + residual)
  BertDenseNorm(int64_t in, int64_t out, const TextConfig& c);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual);
  double dropout;
  std::shared_ptr<Linear> dense;
  std::shared_ptr<LayerNorm> layer_norm;
};

struct BertAttention : torch::nn::Module {
  explicit BertAttention(const TextConfig& c);
  std::shared_ptr<BertSelfAttention> self_attn;  // registered as "self"
  std::shared_ptr<BertDenseNorm> output;
};

struct BertIntermediate : torch::nn::Module {
  explicit BertIntermediate(const TextConfig& c);
  std::shared_ptr<Linear> dense;
};

struct BertLayer : torch::nn::Module {
  explicit BertLayer(const TextConfig& c);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);
  std::string act;
  std::shared_ptr<BertAttention> attention;
  std::shared_ptr<BertIntermediate> intermediate;
  std::shared_ptr<BertDenseNorm> output;
};

struct BertEncoder : torch::nn::Module {
  explicit BertEncoder(const TextConfig& c);
  IndexedList<BertLayer> layer;
  bool grad_checkpointing = false;
};

struct BertModel : torch::nn::Module {
  explicit BertModel(const TextConfig& c);
  // [B, L] ids -> last hidden state [B, L, H]; mask from ids != 0, additive (1 - m) * -10000.
  at::Tensor forward(const at::Tensor& ids);
  at::Tensor additive_mask(const at::Tensor& ids) const;  // forward's [B, 1, 1, L] mask of ids [B, L]
  TextConfig cfg;
  std::shared_ptr<BertEmbeddings> embeddings;
  std::shared_ptr<BertEncoder> encoder;
};

}  // namespace clip::detail
