// cn_clip's VisualTransformer (OpenAI-CLIP style ViT: pre-LN blocks, QuickGELU, ln_post on the
// class token, projection without bias).
#include "clip/model/model_parts.h"
#include "clip/model/torch_compat.h"

namespace clip::detail {

MultiheadAttention::MultiheadAttention(int64_t w, int64_t h) : width(w), heads(h) {
  in_proj_weight = register_parameter("in_proj_weight", at::zeros({3 * w, w}));
  in_proj_bias = register_parameter("in_proj_bias", at::zeros({3 * w}));
  out_proj = register_module("out_proj", std::make_shared<Linear>(w, w));
}

at::Tensor MultiheadAttention::forward(const at::Tensor& x) const {
  const int64_t b = x.size(0), l = x.size(1), d = width / heads;
  // unbind, not three selects: its backward writes the three gradients into one packed [B, L, 3, H, D]
  // tensor (a stack), where each select's backward would fill a zero tensor of that size and add.
  auto qkv = (low_precision ? lp_linear(x, in_proj_weight, in_proj_bias) : at::linear(x, in_proj_weight, in_proj_bias))
                 .view({b, l, 3, heads, d})
                 .unbind(2);  // 3 x [B, L, H, D]
  auto ctx = compat::attention(qkv[0].transpose(1, 2), qkv[1].transpose(1, 2), qkv[2].transpose(1, 2),
                               at::Tensor());  // [B, H, L, D]
  return out_proj->forward(ctx.transpose(1, 2).reshape({b, l, width}));
}

Mlp::Mlp(int64_t w, int64_t hidden) {
  c_fc = register_module("c_fc", std::make_shared<Linear>(w, hidden));
  c_proj = register_module("c_proj", std::make_shared<Linear>(hidden, w));
}

at::Tensor Mlp::forward(const at::Tensor& x) const {
  if (silu_form) {
    constexpr double k = 1.702;
    auto h = at::silu(lp_linear(x, c_fc->weight * k, c_fc->bias * k));
    return lp_linear(h, c_proj->weight * (1.0 / k), c_proj->bias);
  }
  auto h = c_fc->forward(x);
  h = h * at::sigmoid(h * 1.702);  // QuickGELU
  return c_proj->forward(h);
}

ResidualAttentionBlock::ResidualAttentionBlock(int64_t w, int64_t h, int64_t mlp_width) {
  attn = register_module("attn", std::make_shared<MultiheadAttention>(w, h));
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(w, 1e-5, true));
  mlp = register_module("mlp", std::make_shared<Mlp>(w, mlp_width));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(w, 1e-5, true));
}

at::Tensor ResidualAttentionBlock::forward(const at::Tensor& x) const {
  auto y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

VisionTransformerStack::VisionTransformerStack(int64_t w, int64_t layers, int64_t h, int64_t mlp_width) {
  for (int64_t i = 0; i < layers; ++i) resblocks.push_back(std::make_shared<ResidualAttentionBlock>(w, h, mlp_width));
  register_module("resblocks", resblocks.holder);
}

at::Tensor VisionTransformerStack::forward(const at::Tensor& x) const {
  at::Tensor h = x;
  for (const auto& blk : resblocks.items) {
    if (grad_checkpointing) {
      auto* b = blk.get();
      h = checkpointed([b](const at::Tensor& t) { return b->forward(t); }, h, blk->parameters());
    } else {
      h = blk->forward(h);
    }
  }
  return h;
}

VisualTransformer::VisualTransformer(const VisionConfig& c) : cfg(c) {
  const int64_t w = c.width, grid = c.image_resolution / c.patch_size;
  class_embedding = register_parameter("class_embedding", at::zeros({w}));
  positional_embedding = register_parameter("positional_embedding", at::zeros({grid * grid + 1, w}));
  proj = register_parameter("proj", at::zeros({w, c.embed_dim}));
  conv1 = register_module("conv1", std::make_shared<Conv2d>(3, w, c.patch_size, c.patch_size, 0));
  ln_pre = register_module("ln_pre", std::make_shared<LayerNorm>(w, 1e-5, true));
  transformer = register_module("transformer", std::make_shared<VisionTransformerStack>(w, c.layers, c.heads(), c.mlp()));
  ln_post = register_module("ln_post", std::make_shared<LayerNorm>(w, 1e-5, true));
}

at::Tensor VisualTransformer::forward(const at::Tensor& pixels) {
  const at::Tensor px = pixels.to(conv1->weight.scalar_type());
  at::Tensor x;
  if (patch_matmul) {
    // [B, 3, g*p, g*p] -> patches [B, g*g, 3*p*p] (channel, row, column: the kernel's order) -> [B, g*g, W].
    // Rows and columns past the last whole patch are dropped, as the convolution drops them.
    const int64_t b = px.size(0), c = px.size(1), p = conv1->weight.size(-1), gh = px.size(2) / p, gw = px.size(3) / p;
    const at::Tensor patches = px.narrow(2, 0, gh * p).narrow(3, 0, gw * p).reshape({b, c, gh, p, gw, p})
                                   .permute({0, 2, 4, 1, 3, 5}).reshape({b, gh * gw, c * p * p});
    x = at::matmul(patches, conv1->weight.reshape({conv1->weight.size(0), -1}).t());
  } else {
    x = conv1->forward(px);  // [B, W, g, g]
    x = x.reshape({x.size(0), x.size(1), -1}).permute({0, 2, 1});  // [B, g*g, W]
  }
  const int64_t b = x.size(0), w = x.size(2);
  auto cls = class_embedding.to(x.scalar_type()).view({1, 1, w}).expand({b, 1, w});
  x = at::cat({cls, x}, 1) + positional_embedding.to(x.scalar_type());
  x = ln_pre->forward(x);
  x = transformer->forward(x);
  x = ln_post->forward(x.select(1, 0));
  return at::matmul(x, proj.to(x.scalar_type()));
}

}  // namespace clip::detail
