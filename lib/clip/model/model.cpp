// ClipModel: the towers, projections and logit_scale; shared layers; gradient checkpointing;
// loading, state order, precision moves and cn_clip's random initialisation.
#include "clip/model/model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "clip/model/torch_compat.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <optional>
#include <mutex>
#include <set>

#include "clip/base/cpu.h"
#include "clip/base/error.h"
#include "clip/base/log.h"
#include "clip/model/model_parts.h"
#include "clip/model/tensor_torch.h"

namespace clip {

namespace {
thread_local ParamFill t_fill = ParamFill::values;
}

ParamFillScope::ParamFillScope(ParamFill f) : prev_(t_fill) { t_fill = f; }
ParamFillScope::~ParamFillScope() { t_fill = prev_; }

namespace detail {

at::Tensor new_param(at::IntArrayRef shape, double value, at::ScalarType dtype) {
  switch (t_fill) {
    case ParamFill::meta: return at::empty(shape, at::TensorOptions().dtype(dtype).device(at::kMeta));
    case ParamFill::uninitialised: return at::empty(shape, dtype);
    case ParamFill::values: break;
  }
  return at::full(shape, value, at::TensorOptions().dtype(dtype));
}

// ---- shared layers ---------------------------------------------------------------------------

Linear::Linear(int64_t in, int64_t out, bool with_bias) : in_features(in), out_features(out) {
  weight = register_parameter("weight", new_param({out, in}, 0));
  if (with_bias) bias = register_parameter("bias", new_param({out}, 0));
}

at::Tensor Linear::forward(const at::Tensor& x) const {
  return low_precision ? lp_linear(x, weight, bias) : at::linear(x, weight, bias);
}

LayerNorm::LayerNorm(int64_t size, double e, bool fp32) : n(size), eps(e), fp32_math(fp32) {
  weight = register_parameter("weight", new_param({size}, 1));
  bias = register_parameter("bias", new_param({size}, 0));
}

at::Tensor LayerNorm::forward(const at::Tensor& x) const {
  const auto dt = x.scalar_type();
  if (direct && dt != at::kFloat && at::isFloatingType(dt))
    return lp_layer_norm(x, n, weight.to(dt), bias.to(dt), eps);
  if (fp32_math || dt != weight.scalar_type()) {
    // cn_clip's vision LayerNorm: normalise in float32 whatever the activation dtype, cast back.
    auto y = at::layer_norm(x.to(at::kFloat), {n}, weight.to(at::kFloat), bias.to(at::kFloat), eps);
    return y.to(dt);
  }
  return at::layer_norm(x, {n}, weight, bias, eps);
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t s, int64_t p) : stride(s), padding(p) {
  weight = register_parameter("weight", new_param({out, in, kernel, kernel}, 0));
}

at::Tensor Conv2d::forward(const at::Tensor& x) const {
  return at::conv2d(x, weight, {}, {stride, stride}, {padding, padding});
}

BatchNorm2d::BatchNorm2d(int64_t n) {
  weight = register_parameter("weight", new_param({n}, 1));
  bias = register_parameter("bias", new_param({n}, 0));
  running_mean = register_buffer("running_mean", new_param({n}, 0));
  running_var = register_buffer("running_var", new_param({n}, 1));
  num_batches_tracked = register_buffer("num_batches_tracked", new_param({}, 0, at::kLong));
}

at::Tensor BatchNorm2d::forward(const at::Tensor& x) {
  const bool train = is_training();
  if (train) {
    at::NoGradGuard ng;
    num_batches_tracked.add_(1);
  }
  // Statistics in the parameters' dtype (float32 kept by ClipModelImpl::to), output in the input's.
  const auto dt = x.scalar_type();
  auto y = at::batch_norm(x.to(weight.scalar_type()), weight, bias, running_mean, running_var, train, 0.1, 1e-5,
                          /*cudnn_enabled=*/true);
  return y.to(dt);
}

Embedding::Embedding(int64_t num, int64_t dim, int64_t pad) : padding_idx(pad) {
  weight = register_parameter("weight", new_param({num, dim}, 0));
}

at::Tensor Embedding::forward(const at::Tensor& ids) const { return at::embedding(weight, ids, padding_idx); }

// ---- gradient checkpointing ------------------------------------------------------------------

namespace {

struct BlockFn : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> fn;
  at::Tensor rng_state;
  at::Device device{at::kCPU};
  compat::AutocastState autocast;
};

at::Tensor generator_state(const at::Device& d) {
  auto gen = at::globalContext().defaultGenerator(d);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(const at::Device& d, const at::Tensor& s) {
  auto gen = at::globalContext().defaultGenerator(d);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                            const c10::intrusive_ptr<BlockFn>& block) {
    block->device = x.device();
    block->rng_state = generator_state(x.device());
    block->autocast = compat::AutocastState::current();
    ctx->saved_data["block"] = c10::IValue::make_capsule(block);
    std::vector<at::Tensor> saved{x};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    // Function::apply runs this with gradients off: nothing is stored. Autocast's cache of bf16 weight
    // copies is off meanwhile: copies made here have no autograd history, and the recomputation in
    // backward would pick them up and give those weights no gradient.
    struct NoCastCache {
      bool prev = at::autocast::is_autocast_cache_enabled();
      NoCastCache() { at::autocast::set_autocast_cache_enabled(false); }
      ~NoCastCache() { at::autocast::set_autocast_cache_enabled(prev); }
    } no_cache;
    return block->fn(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto block = c10::static_intrusive_pointer_cast<BlockFn>(ctx->saved_data["block"].toCapsule());
    auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    at::Tensor xd = x.detach();
    xd.requires_grad_(x.requires_grad());
    at::Tensor out;
    {
      // Re-run with the forward's RNG (same dropout masks) and autocast state.
      at::Tensor now = generator_state(block->device);
      set_generator_state(block->device, block->rng_state);
      torch::autograd::AutoGradMode grad_on(true);
      compat::AutocastScope ac(block->autocast);
      try {
        out = block->fn(xd);
      } catch (...) {
        set_generator_state(block->device, now);
        throw;
      }
      set_generator_state(block->device, now);
    }
    std::vector<at::Tensor> inputs;
    std::vector<size_t> slot;  // index in the result for each entry of `inputs`
    if (xd.requires_grad()) {
      inputs.push_back(xd);
      slot.push_back(0);
    }
    for (size_t i = 1; i < saved.size(); ++i) {
      if (saved[i].requires_grad()) {
        inputs.push_back(saved[i]);
        slot.push_back(i);
      }
    }
    torch::autograd::variable_list result(saved.size() + 1);  // + the non-tensor block argument
    if (inputs.empty() || !out.requires_grad()) return result;
    auto grads = torch::autograd::grad({out}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    for (size_t i = 0; i < grads.size(); ++i) result[slot[i]] = grads[i];
    return result;
  }
};

}  // namespace

at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x,
                        const std::vector<at::Tensor>& params) {
  bool needs_grad = x.requires_grad();
  for (const auto& p : params) needs_grad = needs_grad || p.requires_grad();
  if (!torch::autograd::GradMode::is_enabled() || !needs_grad) return fn(x);
  auto block = c10::make_intrusive<BlockFn>();
  block->fn = fn;
  return CheckpointFunction::apply(x, at::TensorList(params), block);
}

}  // namespace detail

// ---- ClipModel ---------------------------------------------------------------------------------

struct ClipModelImpl::Towers_ {
  std::shared_ptr<detail::VisualTransformer> vit;
  std::shared_ptr<detail::ModifiedResNet> rn;
  std::shared_ptr<detail::BertModel> bert;
  at::Tensor text_projection;
  std::shared_ptr<torch::nn::Module> visual() const {
    if (vit) return vit;
    return rn;
  }
  bool has_visual() const { return vit || rn; }
};

ClipModelImpl::ClipModelImpl(const ModelConfig& cfg, Towers towers)
    : cfg_(cfg), towers_(std::make_shared<Towers_>()), loaded_(towers) {
  // Registration order = cn_clip's state_dict order: text_projection, logit_scale, visual.*, bert.*.
  if (has_text(towers))
    towers_->text_projection = register_parameter("text_projection", detail::new_param({cfg.text.hidden_size, cfg.vision.embed_dim}, 0));
  logit_scale_ = register_parameter("logit_scale", detail::new_param({}, std::log(1.0 / 0.07)));
  if (cfg.vision.resnet) {
    if (cfg.vision.resnet_layers.size() != 4)
      throw UsageError("vision config " + cfg.vision.name + ": a ModifiedResNet needs 4 stage depths in vision_layers");
    if (has_vision(towers)) towers_->rn = register_module("visual", std::make_shared<detail::ModifiedResNet>(cfg.vision));
  } else {
    if (cfg.vision.patch_size < 1 || cfg.vision.image_resolution % cfg.vision.patch_size != 0 ||
        cfg.vision.width % cfg.vision.head_width != 0)
      throw UsageError("vision config " + cfg.vision.name + " is inconsistent (resolution, patch size and head width must divide)");
    if (has_vision(towers)) towers_->vit = register_module("visual", std::make_shared<detail::VisualTransformer>(cfg.vision));
  }
  if (cfg.text.num_heads < 1 || cfg.text.hidden_size % cfg.text.num_heads != 0)
    throw UsageError("text config " + cfg.text.name + ": text_num_attention_heads must divide text_hidden_size");
  if (has_text(towers)) towers_->bert = register_module("bert", std::make_shared<detail::BertModel>(cfg.text));
}

ClipModelImpl::~ClipModelImpl() = default;

at::Tensor ClipModelImpl::encode_image(const at::Tensor& pixels) {
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != cfg_.vision.image_resolution ||
      pixels.size(3) != cfg_.vision.image_resolution)
    throw DataError("image batch of shape " + std::string(c10::str(pixels.sizes())) + " does not fit " + cfg_.vision.name +
                    ": expected [N, 3, " + std::to_string(cfg_.vision.image_resolution) + ", " +
                    std::to_string(cfg_.vision.image_resolution) + "]");
  if (!towers_->has_visual())
    throw UsageError("this model was loaded without its vision tower (a text-only job): images cannot be encoded");
  return towers_->vit ? towers_->vit->forward(pixels) : towers_->rn->forward(pixels);
}

at::Tensor ClipModelImpl::encode_text(const at::Tensor& ids) {
  if (ids.dim() != 2) throw DataError("token ids must be [N, L], got " + std::string(c10::str(ids.sizes())));
  if (!towers_->bert)
    throw UsageError("this model was loaded without its text tower (an image job): texts cannot be encoded");
  auto h = towers_->bert->forward(ids.to(at::kLong));
  auto cls = h.select(1, 0);
  return at::matmul(cls, towers_->text_projection.to(cls.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ClipModelImpl::forward(const at::Tensor& pixels, const at::Tensor& ids) {
  auto img = encode_image(pixels);
  auto txt = encode_text(ids);
  img = img / img.norm(2, {-1}, true);
  txt = txt / txt.norm(2, {-1}, true);
  return {img, txt, logit_scale_.exp()};
}

void ClipModelImpl::set_grad_checkpointing(bool on) {
  // cn_clip's ModifiedResNet ignores the flag ("FIXME support for non-transformer").
  grad_checkpointing_ = on;
  if (towers_->vit) towers_->vit->transformer->grad_checkpointing = on;
  if (towers_->bert) towers_->bert->encoder->grad_checkpointing = on;
}

void ClipModelImpl::set_low_precision_kernels(bool on) {
  std::function<void(torch::nn::Module&)> walk = [&](torch::nn::Module& m) {
    if (auto* ln = dynamic_cast<detail::LayerNorm*>(&m)) ln->direct = on;
    if (auto* mlp = dynamic_cast<detail::Mlp*>(&m)) mlp->silu_form = on;
    if (auto* sa = dynamic_cast<detail::BertSelfAttention*>(&m)) sa->fused_qkv = on;
    if (auto* li = dynamic_cast<detail::Linear*>(&m)) li->low_precision = on;
    if (auto* mha = dynamic_cast<detail::MultiheadAttention*>(&m)) mha->low_precision = on;
    if (auto* vit = dynamic_cast<detail::VisualTransformer*>(&m)) vit->patch_matmul = on;
    for (auto& c : m.children()) walk(*c);
  };
  walk(*this);
}

void ClipModelImpl::freeze_vision(bool on) {
  vision_frozen_ = on;
  if (towers_->has_visual())
    for (auto& p : towers_->visual()->parameters()) p.requires_grad_(!on);
  train(is_training());
}

void ClipModelImpl::train(bool on) {
  torch::nn::Module::train(on);
  // A frozen tower keeps its BatchNorm statistics: the ResNet's BNs stay in eval mode (the ViT has
  // no mode-dependent layer).
  if (on && vision_frozen_ && towers_->has_visual()) towers_->visual()->eval();
}

namespace {

// cn_clip's convert_weights keeps these in float32 when the rest goes to half precision.
bool keeps_fp32(const std::string& name) {
  auto ends = [&](const char* s) {
    size_t n = std::char_traits<char>::length(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (name == "logit_scale" || name == "visual.class_embedding" || name == "visual.positional_embedding" ||
      name == "visual.attnpool.positional_embedding")
    return true;
  if (name.rfind("visual.", 0) != 0) return false;
  for (const char* ln : {"ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias", "ln_1.weight", "ln_1.bias",
                         "ln_2.weight", "ln_2.bias"})
    if (ends(ln)) return true;
  // BatchNorm parameters and statistics (bn1..3 and downsample.1).
  for (const char* bn : {".weight", ".bias", ".running_mean", ".running_var"}) {
    if (!ends(bn)) continue;
    std::string stem = name.substr(0, name.size() - std::char_traits<char>::length(bn));
    size_t dot = stem.rfind('.');
    std::string last = stem.substr(dot + 1);
    if (last == "bn1" || last == "bn2" || last == "bn3") return true;
    if (last == "1" && stem.size() > 13 && stem.compare(stem.size() - 13, 13, ".downsample.1") == 0) return true;
  }
  return false;
}

void walk_state(torch::nn::Module& m, const std::string& prefix, std::vector<std::pair<std::string, at::Tensor>>& out) {
  for (const auto& p : m.named_parameters(false)) out.emplace_back(prefix + p.key(), p.value());
  for (const auto& b : m.named_buffers(false)) out.emplace_back(prefix + b.key(), b.value());
  for (const auto& c : m.named_children()) walk_state(*c.value(), prefix + c.key() + ".", out);
}

// The dtype `to(dtype)` gives the named tensor of type `t`: floating ones take `dtype` unless kept in
// float32 (keeps_fp32); integer buffers keep theirs.
at::ScalarType moved_dtype(const std::string& name, at::ScalarType t, at::ScalarType dtype) {
  if (!at::isFloatingType(t)) return t;
  return keeps_fp32(name) ? at::kFloat : dtype;
}

void move_all(ClipModelImpl& m, c10::optional<at::Device> device, c10::optional<at::ScalarType> dtype, bool non_blocking) {
  at::NoGradGuard ng;
  std::vector<std::pair<std::string, at::Tensor>> st;
  walk_state(m, "", st);
  for (auto& [name, t] : st) {
    if (t.is_meta()) continue;
    at::Device dev = device ? *device : t.device();
    const at::ScalarType dt = dtype ? moved_dtype(name, t.scalar_type(), *dtype) : t.scalar_type();
    if (dev == t.device() && dt == t.scalar_type()) continue;
    t.set_data(t.to(dev, dt, non_blocking));
  }
}

}  // namespace

void ClipModelImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  move_all(*this, device, dtype, non_blocking);
}
void ClipModelImpl::to(torch::Dtype dtype, bool non_blocking) { move_all(*this, c10::nullopt, dtype, non_blocking); }
void ClipModelImpl::to(torch::Device device, bool non_blocking) { move_all(*this, device, c10::nullopt, non_blocking); }

void ClipModelImpl::allocate_on(torch::Device device, torch::Dtype dtype) {
  std::vector<std::pair<std::string, at::Tensor>> st;
  walk_state(*this, "", st);
  for (auto& [name, t] : st)
    t.set_data(at::empty(t.sizes(), t.options().device(device).dtype(moved_dtype(name, t.scalar_type(), dtype))));
}

std::vector<std::function<at::Tensor()>> ClipModelImpl::warm_up_parts(int64_t images, int64_t texts, int64_t len) {
  std::vector<std::function<at::Tensor()>> parts;
  if (texts > 0 && towers_->bert && !towers_->bert->encoder->layer.items.empty()) {
    auto bert = towers_->bert;
    auto lay = bert->encoder->layer.items.front();
    const at::TensorOptions opt = bert->embeddings->word_embeddings->weight.options();
    const int64_t hid = cfg_.text.hidden_size;
    parts.push_back([bert, lay, opt, texts, len, hid] {
      const at::Tensor h = at::zeros({texts, len, hid}, opt);
      const at::Tensor mask = bert->additive_mask(at::ones({texts, len}, opt.dtype(at::kLong)));
      return lay->attention->output->forward(lay->attention->self_attn->forward(h, mask), h).sum();
    });
    parts.push_back([lay, opt, texts, len, hid] {
      const at::Tensor h = at::zeros({texts, len, hid}, opt);
      return lay->output->forward(detail::bert_activation(lay->act, lay->intermediate->dense->forward(h)), h).sum();
    });
  }
  if (images > 0 && towers_->vit && !towers_->vit->transformer->resblocks.items.empty()) {
    auto blk = towers_->vit->transformer->resblocks.items.front();
    const at::TensorOptions opt = blk->mlp->c_fc->weight.options();
    const int64_t grid = cfg_.vision.image_resolution / cfg_.vision.patch_size, n = grid * grid + 1, w = cfg_.vision.width;
    parts.push_back([blk, opt, images, n, w] {
      const at::Tensor x = at::zeros({images, n, w}, opt);
      return (x + blk->attn->forward(blk->ln_1->forward(x))).sum();
    });
    parts.push_back([blk, opt, images, n, w] {
      const at::Tensor x = at::zeros({images, n, w}, opt);
      return (x + blk->mlp->forward(blk->ln_2->forward(x))).sum();
    });
  }
  return parts;
}

bool ClipModelImpl::keeps_float32(const std::string& name) { return keeps_fp32(name); }

void ClipModelImpl::initialize_parameters(uint64_t seed) {
  at::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  // Values are drawn on the CPU in float32 and copied, so the result does not depend on the
  // model's device or dtype.
  auto normal = [&](at::Tensor& t, double std) { t.copy_(at::empty(t.sizes(), at::kFloat).normal_(0.0, std, gen)); };
  auto uniform = [&](at::Tensor& t, double bound) {
    t.copy_(at::empty(t.sizes(), at::kFloat).uniform_(-bound, bound, gen));
  };
  // PyTorch's default for Linear/Conv weights (kaiming_uniform, a=sqrt(5)) and biases: U(+-1/sqrt(fan_in)).
  auto default_linear = [&](detail::Linear& l) {
    uniform(l.weight, 1.0 / std::sqrt(static_cast<double>(l.in_features)));
    if (l.bias.defined()) uniform(l.bias, 1.0 / std::sqrt(static_cast<double>(l.in_features)));
  };
  auto default_conv = [&](detail::Conv2d& c) {
    uniform(c.weight, 1.0 / std::sqrt(static_cast<double>(c.weight.numel() / c.weight.size(0))));
  };
  auto reset_ln = [](detail::LayerNorm& ln) {
    ln.weight.fill_(1.0);
    ln.bias.zero_();
  };
  auto reset_bn = [](detail::BatchNorm2d& bn) {
    bn.weight.fill_(1.0);
    bn.bias.zero_();
    bn.running_mean.zero_();
    bn.running_var.fill_(1.0);
    bn.num_batches_tracked.zero_();
  };

  logit_scale_.fill_(std::log(1.0 / 0.07));
  if (auto& v = towers_->vit) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(v->cfg.width));
    default_conv(*v->conv1);
    normal(v->class_embedding, scale);
    normal(v->positional_embedding, scale);
    reset_ln(*v->ln_pre);
    for (auto& b : v->transformer->resblocks.items) {
      // nn.MultiheadAttention._reset_parameters: xavier_uniform in_proj, zero biases.
      const double w = static_cast<double>(b->attn->width);
      uniform(b->attn->in_proj_weight, std::sqrt(6.0 / (w + 3.0 * w)));
      b->attn->in_proj_bias.zero_();
      default_linear(*b->attn->out_proj);
      b->attn->out_proj->bias.zero_();
      reset_ln(*b->ln_1);
      default_linear(*b->mlp->c_fc);
      default_linear(*b->mlp->c_proj);
      reset_ln(*b->ln_2);
    }
    reset_ln(*v->ln_post);
    normal(v->proj, scale);
  } else if (towers_->rn) {
    auto& r = towers_->rn;
    for (auto* c : {r->conv1.get(), r->conv2.get(), r->conv3.get()}) default_conv(*c);
    for (auto* bn : {r->bn1.get(), r->bn2.get(), r->bn3.get()}) reset_bn(*bn);
    for (auto& stage : r->stages) {
      for (auto& b : stage.items) {
        for (auto* c : {b->conv1.get(), b->conv2.get(), b->conv3.get()}) default_conv(*c);
        for (auto* bn : {b->bn1.get(), b->bn2.get(), b->bn3.get()}) reset_bn(*bn);
        b->bn3->weight.zero_();  // CLIP.initialize_parameters: zero-init the last BN of each block
        if (b->downsample) {
          default_conv(*b->downsample->conv);
          reset_bn(*b->downsample->bn);
        }
      }
    }
    auto& ap = r->attnpool;
    normal(ap->positional_embedding, 1.0 / std::sqrt(static_cast<double>(ap->embed)));
    const double std = 1.0 / std::sqrt(static_cast<double>(ap->c_proj->in_features));
    for (auto* l : {ap->q_proj.get(), ap->k_proj.get(), ap->v_proj.get(), ap->c_proj.get()}) {
      default_linear(*l);  // biases keep nn.Linear's default
      normal(l->weight, std);
    }
  }
  // BertPreTrainedModel._init_weights: Linear/Embedding weights N(0, initializer_range), biases 0,
  // LayerNorm 1/0 (the padding row is overwritten too).
  auto& bert = towers_->bert;
  if (!bert) return;
  const double ir = cfg_.text.initializer_range;
  auto bert_linear = [&](detail::Linear& l) {
    normal(l.weight, ir);
    l.bias.zero_();
  };
  normal(bert->embeddings->word_embeddings->weight, ir);
  normal(bert->embeddings->position_embeddings->weight, ir);
  normal(bert->embeddings->token_type_embeddings->weight, ir);
  reset_ln(*bert->embeddings->layer_norm);
  for (auto& l : bert->encoder->layer.items) {
    bert_linear(*l->attention->self_attn->query);
    bert_linear(*l->attention->self_attn->key);
    bert_linear(*l->attention->self_attn->value);
    bert_linear(*l->attention->output->dense);
    reset_ln(*l->attention->output->layer_norm);
    bert_linear(*l->intermediate->dense);
    bert_linear(*l->output->dense);
    reset_ln(*l->output->layer_norm);
  }
  normal(towers_->text_projection, 1.0 / std::sqrt(static_cast<double>(cfg_.text.hidden_size)));
}

// ---- state -------------------------------------------------------------------------------------

std::vector<std::pair<std::string, at::Tensor>> model_state(ClipModel& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  walk_state(*model, "", out);
  return out;
}

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::string key_list(const std::vector<std::string>& keys) {
  std::string r;
  const size_t show = std::min<size_t>(keys.size(), 5);
  for (size_t i = 0; i < show; ++i) r += (i ? ", " : "") + keys[i];
  if (keys.size() > show) r += ", ... (" + std::to_string(keys.size() - show) + " more)";
  return r;
}

// True when a contiguous float32/float16/bfloat16 buffer holds a NaN or an infinity: all exponent bits
// set. One streaming pass with no temporary (at::isfinite would write a bool per value first).
template <typename U>
bool any_nonfinite_scalar(const U* x, int64_t n, U mask) {
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<U>((x[i] & mask) == mask);
  return bad != 0;
}

__attribute__((target("avx2"))) bool any_nonfinite_avx2(const uint8_t* p, int64_t bytes, int bits) {
  const __m256i m = bits == 32 ? _mm256_set1_epi32(0x7f800000) : _mm256_set1_epi16(static_cast<short>(bits == 16 ? 0x7c00 : 0x7f80));
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32));
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64));
    __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96));
    if (bits == 32) {
      acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(a, m), m),
                                                 _mm256_cmpeq_epi32(_mm256_and_si256(b, m), m)));
      acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_cmpeq_epi32(_mm256_and_si256(c, m), m),
                                                 _mm256_cmpeq_epi32(_mm256_and_si256(d, m), m)));
    } else {
      acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_cmpeq_epi16(_mm256_and_si256(a, m), m),
                                                 _mm256_cmpeq_epi16(_mm256_and_si256(b, m), m)));
      acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_cmpeq_epi16(_mm256_and_si256(c, m), m),
                                                 _mm256_cmpeq_epi16(_mm256_and_si256(d, m), m)));
    }
  }
  if (!_mm256_testz_si256(acc, acc)) return true;
  if (bits == 32) return any_nonfinite_scalar(reinterpret_cast<const uint32_t*>(p + i), (bytes - i) / 4, uint32_t(0x7f800000));
  return any_nonfinite_scalar(reinterpret_cast<const uint16_t*>(p + i), (bytes - i) / 2,
                              static_cast<uint16_t>(bits == 16 ? 0x7c00 : 0x7f80));
}

// Whether the stored tensor holds NaN/Inf, reading it once; std::nullopt when this fast path does not
// apply (another dtype, a strided view): the caller then uses at::isfinite.
std::optional<bool> any_nonfinite(const TensorData& t) {
  const int bits = t.dtype == DType::f32 ? 32 : t.dtype == DType::f16 ? 16 : t.dtype == DType::bf16 ? 17 : 0;
  if (!bits || !t.is_contiguous() || !t.data) return std::nullopt;
  const int64_t n = t.numel();
  if (cpu_features().avx2) return any_nonfinite_avx2(t.data, n * (bits == 32 ? 4 : 2), bits);
  if (bits == 32) return any_nonfinite_scalar(reinterpret_cast<const uint32_t*>(t.data), n, uint32_t(0x7f800000));
  return any_nonfinite_scalar(reinterpret_cast<const uint16_t*>(t.data), n, static_cast<uint16_t>(bits == 16 ? 0x7c00 : 0x7f80));
}

// Unmaps the whole pages inside [p, p + bytes) of a read-only file mapping (the pages stay in the page
// cache; the next read maps them again, with the same bytes). After the finiteness scan of a mapped
// tensor, so that only what the forward pass then reads counts in the process's memory: e.g. the rows of
// the word embedding that no token of the job uses. Only for tensors that nothing has written to (a
// fresh checkpoint mapping), where dropping a page loses nothing.
void drop_pages(const void* p, size_t bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

const char* kRemedy =
    "the checkpoint was made for another architecture: pass the --vision-model/--text-model it was trained with "
    "(official name or cn_clip JSON config), or omit them to infer the config from the checkpoint";

}  // namespace

void load_weights(ClipModel& model, const StateDict& sd, bool strict, WeightUse use,
                  const std::vector<std::pair<const void*, size_t>>& mapped_ranges) {
  auto in_mapping = [&](const TensorData& t) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data);
    for (const auto& [b, n] : mapped_ranges)
      if (p >= reinterpret_cast<uintptr_t>(b) && p < reinterpret_cast<uintptr_t>(b) + n) return true;
    return false;
  };
  const ModelConfig& cfg = model->config();
  auto state = model_state(model);
  std::vector<std::string> missing, unexpected;
  std::set<std::string> known;
  std::vector<std::tuple<std::string, at::Tensor*, const TensorData*>> todo;
  std::string first_mismatch;
  size_t mismatches = 0;
  for (auto& [name, t] : state) {
    known.insert(name);
    if (!sd.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const TensorData& src = sd.at(name);
    if (src.shape != t.sizes().vec()) {
      if (mismatches++ == 0) {
        std::string from = name.rfind("visual.", 0) == 0 ? cfg.vision.name : name.rfind("bert.", 0) == 0 ? cfg.text.name : cfg.name();
        first_mismatch = "checkpoint key '" + name + "': expected shape " + shape_str(t.sizes()) + " (from config " + from +
                         "), found " + src.shape_str();
      }
      continue;
    }
    todo.emplace_back(name, &t, &src);
  }
  const Towers loaded = model->towers();
  for (const auto& k : sd.keys)
    if (!known.count(k) && key_in_towers(k, loaded)) unexpected.push_back(k);  // the other tower's keys are not ours
  if (mismatches) {
    std::string more = mismatches > 1 ? " (and " + std::to_string(mismatches - 1) + " more mismatched keys)" : "";
    throw ModelError(first_mismatch + more + "; " + kRemedy);
  }
  if (strict && (!missing.empty() || !unexpected.empty())) {
    std::string msg = "checkpoint does not fit model " + cfg.name() + ":";
    if (!missing.empty()) msg += " " + std::to_string(missing.size()) + " missing keys (" + key_list(missing) + ");";
    if (!unexpected.empty()) msg += " " + std::to_string(unexpected.size()) + " unexpected keys (" + key_list(unexpected) + ");";
    throw ModelError(msg + " " + kRemedy);
  }
  if (!missing.empty()) log_warn("checkpoint lacks {} keys of model {}, left as they were: {}", missing.size(), cfg.name(), key_list(missing));
  if (!unexpected.empty()) log_warn("ignored {} checkpoint keys the model does not use: {}", unexpected.size(), key_list(unexpected));
  at::NoGradGuard ng;
  for (auto& [name, dst, src] : todo) {
    if (!at::isFloatingType(to_scalar_type(src->dtype)) && at::isFloatingType(dst->scalar_type()))
      throw ModelError("checkpoint key '" + name + "' holds " + dtype_name(src->dtype) + " values where float weights are expected");
  }
  log_debug("{} tensors to load", todo.size());
  for (auto& [name, dst, src] : todo) {
    const at::Tensor v = tensor_view(*src);
    const std::optional<bool> fast = v.numel() > 0 ? any_nonfinite(*src) : std::optional<bool>(false);
    if (at::isFloatingType(v.scalar_type()) && v.numel() > 0 && (fast ? *fast : !at::isfinite(v).all().item<bool>())) {
      const int64_t n = at::logical_not(at::isfinite(v)).sum().item<int64_t>();
      throw ModelError("checkpoint key '" + name + "' holds " + std::to_string(n) + " NaN or infinite value(s) of " +
                       std::to_string(v.numel()) + ": the weights are damaged (or came from a diverged run); use an "
                       "earlier checkpoint");
    }
    // In place: the parameter becomes the mapped bytes themselves when nothing needs converting.
    const bool mapped = in_mapping(*src);
    if (use == WeightUse::share && v.scalar_type() == dst->scalar_type() && dst->device().is_cpu() &&
        v.is_contiguous() && !dst->is_meta())
      dst->set_data(v);
    else
      dst->copy_(v);
    // The scan (and a copy) mapped every page of the tensor. A copied tensor's pages are not read again;
    // of a lookup table (BERT's word, position and token-type embeddings) the forward reads only the rows
    // of the tokens it sees: unmapped, neither counts in the job's memory. (Other shared weights are read
    // whole by every forward pass and stay mapped.)
    const bool lookup = name.size() > 18 && name.compare(name.size() - 18, 18, "_embeddings.weight") == 0;
    if (mapped && v.is_contiguous() && (lookup || dst->data_ptr() != v.data_ptr()))
      drop_pages(src->data, static_cast<size_t>(v.numel()) * v.element_size());
  }
}

}  // namespace clip
