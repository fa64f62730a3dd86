// cn_clip's ModifiedResNet (OpenAI CLIP's RN): 3-conv stem, anti-aliased strided Bottlenecks,
// attention pooling.
#include "clip/model/model_parts.h"
#include "clip/model/torch_compat.h"

namespace clip::detail {

Downsample::Downsample(int64_t in, int64_t out, int64_t s) : stride(s) {
  // "-1" is the parameter-free AvgPool2d(stride): nothing to register.
  conv = register_module("0", std::make_shared<Conv2d>(in, out, 1, 1, 0));
  bn = register_module("1", std::make_shared<BatchNorm2d>(out));
}

at::Tensor Downsample::forward(const at::Tensor& x) {
  at::Tensor h = stride > 1 ? at::avg_pool2d(x, {stride, stride}) : x;
  return bn->forward(conv->forward(h));
}

Bottleneck::Bottleneck(int64_t inplanes, int64_t planes, int64_t s) : stride(s) {
  conv1 = register_module("conv1", std::make_shared<Conv2d>(inplanes, planes, 1, 1, 0));
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(planes));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(planes, planes, 3, 1, 1));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(planes));
  conv3 = register_module("conv3", std::make_shared<Conv2d>(planes, planes * 4, 1, 1, 0));
  bn3 = register_module("bn3", std::make_shared<BatchNorm2d>(planes * 4));
  if (s > 1 || inplanes != planes * 4) downsample = register_module("downsample", std::make_shared<Downsample>(inplanes, planes * 4, s));
}

at::Tensor Bottleneck::forward(const at::Tensor& x) {
  auto out = at::relu(bn1->forward(conv1->forward(x)));
  out = at::relu(bn2->forward(conv2->forward(out)));
  if (stride > 1) out = at::avg_pool2d(out, {stride, stride});
  out = bn3->forward(conv3->forward(out));
  out = out + (downsample ? downsample->forward(x) : x);
  return at::relu(out);
}

AttentionPool2d::AttentionPool2d(int64_t spatial, int64_t e, int64_t h, int64_t out) : embed(e), heads(h) {
  positional_embedding = register_parameter("positional_embedding", at::zeros({spatial * spatial + 1, e}));
  k_proj = register_module("k_proj", std::make_shared<Linear>(e, e));
  q_proj = register_module("q_proj", std::make_shared<Linear>(e, e));
  v_proj = register_module("v_proj", std::make_shared<Linear>(e, e));
  c_proj = register_module("c_proj", std::make_shared<Linear>(e, out));
}

at::Tensor AttentionPool2d::forward(const at::Tensor& x) const {
  const int64_t n = x.size(0), c = x.size(1), d = c / heads;
  auto t = x.reshape({n, c, -1}).permute({0, 2, 1});                 // [N, HW, C]
  t = at::cat({t.mean(1, /*keepdim=*/true), t}, 1);                   // mean token first
  t = t + positional_embedding.to(t.scalar_type());
  const int64_t l = t.size(1);
  auto split = [&](const at::Tensor& y) { return y.view({n, l, heads, d}).transpose(1, 2); };
  auto q = split(q_proj->forward(t)), k = split(k_proj->forward(t)), v = split(v_proj->forward(t));
  auto ctx = compat::attention(q.narrow(2, 0, 1), k, v, at::Tensor());  // only token 0 is returned
  return c_proj->forward(ctx.transpose(1, 2).reshape({n, c}));
}

ModifiedResNet::ModifiedResNet(const VisionConfig& c) : cfg(c) {
  const int64_t w = c.width;
  conv1 = register_module("conv1", std::make_shared<Conv2d>(3, w / 2, 3, 2, 1));
  bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(w / 2));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(w / 2, w / 2, 3, 1, 1));
  bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(w / 2));
  conv3 = register_module("conv3", std::make_shared<Conv2d>(w / 2, w, 3, 1, 1));
  bn3 = register_module("bn3", std::make_shared<BatchNorm2d>(w));
  int64_t inplanes = w;
  stages.resize(4);
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = w << s;
    for (int b = 0; b < c.resnet_layers.at(s); ++b) {
      stages[s].push_back(std::make_shared<Bottleneck>(inplanes, planes, b == 0 && s > 0 ? 2 : 1));
      inplanes = planes * 4;
    }
    register_module("layer" + std::to_string(s + 1), stages[s].holder);
  }
  attnpool = register_module("attnpool", std::make_shared<AttentionPool2d>(c.image_resolution / 32, w * 32, c.heads(), c.embed_dim));
}

at::Tensor ModifiedResNet::forward(const at::Tensor& pixels) {
  auto x = pixels.to(conv1->weight.scalar_type());
  x = at::relu(bn1->forward(conv1->forward(x)));
  x = at::relu(bn2->forward(conv2->forward(x)));
  x = at::relu(bn3->forward(conv3->forward(x)));
  x = at::avg_pool2d(x, {2, 2});
  for (auto& stage : stages)
    for (auto& blk : stage.items) x = blk->forward(x);
  return attnpool->forward(x);
}

}  // namespace clip::detail
