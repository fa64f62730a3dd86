// cn_clip's optimisation pieces that need no model: schedule, weight-decay rule, AdamW, loss,
// tensor <-> checkpoint conversion, autocast scope, data order.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include "clip/model/torch_compat.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "clip/base/error.h"
#include "clip/train/train.h"
#include "clip/model/tensor_torch.h"
#include "clip/train/train_internal.h"

#ifdef CLIP_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "clip/model/cuda/colsum.h"
#include "clip/model/model_parts.h"
#include "clip/train/cuda/adamw.h"
#endif

namespace clip {

double cosine_lr(double base_lr, int64_t warmup, int64_t total_steps, int64_t step) {
  if (step < warmup) return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  // Same operation order as cn_clip: 0.5 * (1 + cos(pi * e / es)) * base_lr.
  double e = static_cast<double>(step - warmup);
  double es = static_cast<double>(total_steps - warmup);
  if (es <= 0) return 0.0;  // cn_clip would divide by zero; no step runs there anyway
  return 0.5 * (1.0 + std::cos(M_PI * e / es)) * base_lr;
}

bool no_weight_decay(const std::string& n) {
  return n.find("bn") != std::string::npos || n.find("ln") != std::string::npos ||
         n.find("bias") != std::string::npos || n.find("logit_scale") != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// AdamW

AdamW::AdamW(const std::vector<std::pair<std::string, at::Tensor>>& named, const AdamWOptions& options)
    : options_(options) {
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& [name, t] : named) {
      if (no_weight_decay(name) != (pass == 0)) continue;
      Param p;
      p.name = name;
      p.tensor = t;
      params_.push_back(std::move(p));
    }
    if (pass == 0) n_no_decay_ = params_.size();
  }
}

void AdamW::set_lr(double lr) {
  options_.lr = lr;
  if (lr_t_.defined()) lr_t_.fill_(lr);
}

void AdamW::zero_grad() {
  for (auto& p : params_) {
    if (p.tensor.grad().defined()) p.tensor.mutable_grad() = at::Tensor();
  }
}

void AdamW::keep_master_weights() {
  at::NoGradGuard ng;
  for (auto& p : params_) {
    if (p.master.defined()) continue;
    if (p.tensor.scalar_type() != at::kFloat)
      throw ModelError("keep_master_weights: '" + p.name + "' is not float32 any more; keep the masters before the "
                       "model is converted");
    p.master = p.tensor.detach().clone(at::MemoryFormat::Contiguous);
    if (p.exp_avg.defined()) {
      p.exp_avg = p.exp_avg.to(at::kFloat);
      p.exp_avg_sq = p.exp_avg_sq.to(at::kFloat);
    }
  }
}

int64_t AdamW::step_count(const Param& p) const {
  // The fused path counts on the device (a skipped step, found_inf, is not counted there).
  return p.step_t.defined() ? static_cast<int64_t>(p.step_t.item<float>()) : p.step;
}

void AdamW::step(const at::Tensor& found_inf) {
  at::NoGradGuard ng;
  if (fused_step(found_inf)) return;
  if (found_inf.defined() && found_inf.item<float>() != 0) return;  // the scaler's skipped step
  const double lr = options_.lr, b1 = options_.beta1, b2 = options_.beta2, eps = options_.eps;
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    const at::Tensor& g = p.tensor.grad();
    if (!g.defined()) continue;
    at::Tensor w = weight(i);
    const at::Tensor grad = g.scalar_type() == w.scalar_type() ? g : g.to(w.scalar_type());
    if (!p.exp_avg.defined()) {
      p.exp_avg = at::zeros_like(w, at::MemoryFormat::Preserve);
      p.exp_avg_sq = at::zeros_like(w, at::MemoryFormat::Preserve);
    }
    const double wd = group_of(i) == 0 ? 0.0 : options_.weight_decay;
    p.step += 1;
    // torch/optim/adamw.py (1.13) _single_tensor_adamw, op for op.
    w.mul_(1 - lr * wd);
    p.exp_avg.mul_(b1).add_(grad, 1 - b1);
    p.exp_avg_sq.mul_(b2).addcmul_(grad, grad, 1 - b2);
    const double step = static_cast<double>(static_cast<float>(p.step));  // PyTorch counts in a float32 tensor
    const double bias_correction1 = 1 - std::pow(b1, step);
    const double bias_correction2 = 1 - std::pow(b2, step);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    at::Tensor denom = (p.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
    w.addcdiv_(p.exp_avg, denom, -step_size);
    if (p.master.defined()) p.tensor.copy_(p.master);
  }
}

std::vector<size_t> AdamW::packable_members(int group) const {
  // The group's low-precision parameters with master weights and a gradient (those a float32
  // island, such as logit_scale, is not).
  const size_t begin = group == 0 ? 0 : n_no_decay_, end = group == 0 ? n_no_decay_ : params_.size();
  std::vector<size_t> members;
  for (size_t i = begin; i < end; ++i) {
    const Param& p = params_[i];
    const at::Tensor& gr = p.tensor.grad();
    if (p.master.defined() && gr.defined() && gr.scalar_type() != at::kFloat && gr.scalar_type() == p.tensor.scalar_type() &&
        gr.is_contiguous() && p.tensor.is_contiguous())
      members.push_back(i);
  }
  return members;
}

std::vector<size_t> AdamW::pack_if_needed(int group) {
  std::vector<size_t> members = packable_members(group);
  if (members.size() < 2) return {};
  if (packed_[group].members != members) pack_group(group, members);
  return members;
}

int AdamW::pack_master_weights() {
  int packed = 0;
  for (int g = 0; g < 2; ++g) packed += static_cast<int>(pack_if_needed(g).size());
  return packed;
}

void AdamW::pack_group(int group, const std::vector<size_t>& members) {
  at::NoGradGuard ng;
  Packed& pk = packed_[group];
  int64_t total = 0;
  for (size_t i : members) total += params_[i].tensor.numel();
  const at::Tensor& first = params_[members.front()].tensor;
  pk.master = at::empty({total}, first.options().dtype(at::kFloat));
  pk.low = at::empty({total}, first.options());
  pk.grad32 = pk.exp_avg = pk.exp_avg_sq = at::Tensor();  // made when a step needs them
  pk.offsets.assign(1, 0);
  int64_t off = 0;
  for (size_t i : members) {
    Param& p = params_[i];
    const int64_t n = p.tensor.numel();
    const auto shape = p.tensor.sizes().vec();
    at::Tensor mv = pk.master.narrow(0, off, n).view(shape), lv = pk.low.narrow(0, off, n).view(shape);
    mv.copy_(p.master);
    lv.copy_(p.tensor);
    // set_data, not assignment: the same tensors become views into the buffers, so that every
    // holder keeps seeing them (the model its parameter, the trainer the masters it checkpoints).
    p.master.set_data(mv);
    p.tensor.set_data(lv);
    p.grad32 = at::Tensor();
    off += n;
    pk.offsets.push_back(off);
  }
  pk.members = members;
}

void AdamW::ensure_packed_grad32(int group) {
  Packed& pk = packed_[group];
  if (pk.grad32.defined()) return;
  pk.grad32 = at::empty_like(pk.master);
  for (size_t k = 0; k < pk.members.size(); ++k) {
    Param& p = params_[pk.members[k]];
    p.grad32 = pk.grad32.narrow(0, pk.offsets[k], p.tensor.numel()).view(p.tensor.sizes());
  }
}

bool AdamW::own_kernel_applies(int group, const at::Tensor& found_inf) const {
#ifdef CLIP_HAVE_CUDA_KERNELS
  const Packed& pk = packed_[group];
  // Every member has a gradient: fused_step calls this right after pack_if_needed, which keeps the pack
  // to the members with one (packable_members). A skip flag (a loss scale's found_inf, the deferred
  // step values' non-finite flag) is read by the kernel on the device, as PyTorch's fused AdamW reads it.
  const bool flag_ok = !found_inf.defined() || (found_inf.scalar_type() == at::kFloat && found_inf.numel() == 1 &&
                                                found_inf.device() == pk.master.device());
  return flag_ok && !pk.members.empty() && detail::lp_kernels() == detail::LpKernels::all &&
         (pk.low.scalar_type() == at::kBFloat16 || pk.low.scalar_type() == at::kHalf);
#else
  (void)group;
  (void)found_inf;
  return false;
#endif
}

void AdamW::own_kernel_step(int group, const at::Tensor& found_inf) {
#ifdef CLIP_HAVE_CUDA_KERNELS
  Packed& pk = packed_[group];
  const int dtype = pk.low.scalar_type() == at::kBFloat16 ? cuda::kBFloat16 : cuda::kFloat16;
  // The moments as views into the pack's two buffers: zeros before the first step, copied in where
  // they were replaced (a loaded optimizer state, a new pack).
  if (!pk.exp_avg.defined()) {
    pk.exp_avg = at::zeros_like(pk.master);
    pk.exp_avg_sq = at::zeros_like(pk.master);
  }
  std::vector<const void*> grads;
  std::vector<const float*> steps;
  for (size_t k = 0; k < pk.members.size(); ++k) {
    Param& p = params_[pk.members[k]];
    // Views are made only where the moments are not yet in the pack (the first step, a new state).
    if (!p.exp_avg.defined() || p.exp_avg.data_ptr() != pk.exp_avg.data_ptr<float>() + pk.offsets[k]) {
      const int64_t n = p.tensor.numel();
      at::Tensor m = pk.exp_avg.narrow(0, pk.offsets[k], n).view(p.tensor.sizes());
      at::Tensor v = pk.exp_avg_sq.narrow(0, pk.offsets[k], n).view(p.tensor.sizes());
      if (p.exp_avg.defined()) {
        m.copy_(p.exp_avg);
        v.copy_(p.exp_avg_sq);
      }
      p.exp_avg = m;
      p.exp_avg_sq = v;
    }
    grads.push_back(p.tensor.grad().data_ptr());
    steps.push_back(p.step_t.data_ptr<float>());
  }
  const int err = cuda::adamw_packed(static_cast<int>(pk.members.size()), grads.data(), pk.offsets.data(), steps.data(),
                                     dtype, pk.master.data_ptr<float>(), pk.exp_avg.data_ptr<float>(),
                                     pk.exp_avg_sq.data_ptr<float>(), pk.low.data_ptr(), lr_t_.data_ptr<float>(),
                                     found_inf.defined() ? found_inf.contiguous().data_ptr<float>() : nullptr,
                                     options_.beta1, options_.beta2, group == 0 ? 0.0 : options_.weight_decay,
                                     options_.eps, c10::cuda::getCurrentCUDAStream().stream());
  if (err != 0)
    throw ModelError(std::string("AdamW step: CUDA error ") + cudaGetErrorString(static_cast<cudaError_t>(err)));
#else
  (void)group;
  (void)found_inf;
  throw ModelError("AdamW: this build has no own CUDA kernels");
#endif
}

bool AdamW::fused_step(const at::Tensor& found_inf) {
#if TORCH_VERSION_MAJOR >= 2
  if (!options_.fused || params_.empty() || !weight(0).is_cuda()) return false;
  // The rate is read on the device (rounded to float32, as PyTorch's fused AdamW given a tensor lr), so
  // that a captured step replays with each step's rate.
  if (!lr_t_.defined()) lr_t_ = at::full({}, options_.lr, at::TensorOptions(at::kFloat).device(weight(0).device()));
  for (int g = 0; g < 2; ++g) {
    const size_t begin = g == 0 ? 0 : n_no_decay_, end = g == 0 ? n_no_decay_ : params_.size();
    // Packed (again when the set changed), so that the conversions below are one copy each.
    const std::vector<size_t> members = pack_if_needed(g);
    const bool packed = !members.empty();
    // The pack by the build's own kernel below (after the counts), or with the rest here.
    const bool own = packed && own_kernel_applies(g, found_inf);
    if (packed && !own) ensure_packed_grad32(g);
    std::vector<at::Tensor> w, grads, m, v, steps, all_steps, low, masters, low_grads, master_grads, packed_grads;
    for (size_t i = begin; i < end; ++i) {
      Param& p = params_[i];
      const at::Tensor& grad = p.tensor.grad();
      if (!grad.defined()) continue;
      const bool in_pack = packed && std::binary_search(members.begin(), members.end(), i);
      const at::Tensor& wt = weight(i);
      if (!p.step_t.defined())
        p.step_t = at::full({}, static_cast<double>(p.step), at::TensorOptions(at::kFloat).device(wt.device()));
      all_steps.push_back(p.step_t);  // every member with a gradient is counted
      if (in_pack && own) continue;
      steps.push_back(p.step_t);
      if (!p.exp_avg.defined()) {
        p.exp_avg = at::zeros_like(wt, at::MemoryFormat::Preserve);
        p.exp_avg_sq = at::zeros_like(wt, at::MemoryFormat::Preserve);
      }
      w.push_back(wt);
      if (in_pack) {  // converted below, with the rest of the pack, into its float32 view
        grads.push_back(p.grad32);
        packed_grads.push_back(grad.view({-1}));
      } else if (grad.scalar_type() == wt.scalar_type()) {
        grads.push_back(grad);
      } else {  // converted below by one multi-tensor copy into buffers kept across steps
        if (!p.grad32.defined()) p.grad32 = at::empty_like(wt, at::MemoryFormat::Contiguous);
        grads.push_back(p.grad32);
        low_grads.push_back(grad);
        master_grads.push_back(p.grad32);
      }
      m.push_back(p.exp_avg);
      v.push_back(p.exp_avg_sq);
      if (p.master.defined() && !in_pack) {
        low.push_back(p.tensor);
        masters.push_back(p.master);
      }
    }
    if (all_steps.empty()) continue;
    const double wd = g == 0 ? 0.0 : options_.weight_decay;
    // The pack's gradients gathered in one buffer of their dtype, then converted by one copy.
    if (packed && !own) packed_[g].grad32.copy_(at::cat(packed_grads));
    if (!low_grads.empty()) at::_foreach_copy_(master_grads, low_grads);
    at::_foreach_add_(all_steps, 1);
    if (own) own_kernel_step(g, found_inf);
    if (!w.empty()) {
      c10::optional<at::Tensor> inf;
      if (found_inf.defined()) inf = found_inf;
      at::_fused_adamw_(w, grads, m, v, at::TensorList(), steps, lr_t_, options_.beta1,
                        options_.beta2, wd, options_.eps, /*amsgrad=*/false, /*maximize=*/false,
                        /*grad_scale=*/c10::nullopt, inf);
    }
    if (found_inf.defined()) at::_foreach_sub_(all_steps, std::vector<at::Tensor>(all_steps.size(), found_inf));
    if (packed && !own) packed_[g].low.copy_(packed_[g].master);
    if (!low.empty()) at::_foreach_copy_(low, masters);
  }
  return true;
#else
  (void)found_inf;
  return false;
#endif
}

PyPtr AdamW::state_dict() const {
  auto state = PyValue::dict();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Param& p = params_[i];
    if (!p.exp_avg.defined()) continue;
    auto s = PyValue::dict();
    s->set("step", PyValue::from_tensor(to_tensor_data(at::scalar_tensor(static_cast<double>(step_count(p)),
                                                                                  at::TensorOptions(at::kFloat)))));
    s->set("exp_avg", PyValue::from_tensor(to_tensor_data(p.exp_avg)));
    s->set("exp_avg_sq", PyValue::from_tensor(to_tensor_data(p.exp_avg_sq)));
    state->set(PyValue::integer(static_cast<int64_t>(i)), s);
  }
  auto groups = PyValue::list();
  for (int g = 0; g < 2; ++g) {
    auto grp = PyValue::dict();
    grp->set("lr", PyValue::floating(options_.lr));
    grp->set("betas", PyValue::tuple({PyValue::floating(options_.beta1), PyValue::floating(options_.beta2)}));
    grp->set("eps", PyValue::floating(options_.eps));
    grp->set("weight_decay", PyValue::floating(g == 0 ? 0.0 : options_.weight_decay));
    grp->set("amsgrad", PyValue::boolean(false));
    grp->set("foreach", PyValue::none());
    grp->set("maximize", PyValue::boolean(false));
    grp->set("capturable", PyValue::boolean(false));
    auto idx = PyValue::list();
    size_t begin = g == 0 ? 0 : n_no_decay_, end = g == 0 ? n_no_decay_ : params_.size();
    for (size_t i = begin; i < end; ++i) idx->items.push_back(PyValue::integer(static_cast<int64_t>(i)));
    grp->set("params", idx);
    groups->items.push_back(grp);
  }
  auto root = PyValue::dict();
  root->set("state", state);
  root->set("param_groups", groups);
  return root;
}

void AdamW::load_state_dict(const PyValue& sd) {
  PyPtr groups = sd.get("param_groups");
  PyPtr state = sd.get("state");
  if (!groups || groups->kind != PyValue::Kind::list || !state || state->kind != PyValue::Kind::dict)
    throw ModelError("optimizer state: expected a dict with 'state' and 'param_groups' (torch.optim layout)");
  if (groups->items.size() != 2)
    throw ModelError(fmt::format("optimizer state: {} parameter groups, expected 2 (cn_clip's no-decay and decay "
                                 "groups); start without the optimizer state instead",
                                 groups->items.size()));
  // Map the file's parameter indices to ours by position inside each group.
  std::vector<int64_t> file_index(params_.size(), -1);
  for (int g = 0; g < 2; ++g) {
    PyPtr idx = groups->items[g]->get("params");
    if (!idx || idx->kind != PyValue::Kind::list || idx->items.size() != group_size(g))
      throw ModelError(fmt::format("optimizer state: group {} holds {} parameters, this model trains {}; was the file "
                                   "written for another model or with --freeze-vision set differently?",
                                   g, idx ? idx->items.size() : 0, group_size(g)));
    size_t base = g == 0 ? 0 : n_no_decay_;
    for (size_t k = 0; k < idx->items.size(); ++k) file_index[base + k] = idx->items[k]->i;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    PyPtr s = state->get(file_index[i]);
    p.exp_avg = at::Tensor();
    p.exp_avg_sq = at::Tensor();
    p.step = 0;
    if (!s) continue;
    PyPtr step = s->get("step"), m = s->get("exp_avg"), v = s->get("exp_avg_sq");
    if (!step || !m || !v || m->kind != PyValue::Kind::tensor || v->kind != PyValue::Kind::tensor)
      throw ModelError("optimizer state of '" + p.name + "': missing step/exp_avg/exp_avg_sq");
    at::Tensor mt = detail::from_tensor_data(m->tensor), vt = detail::from_tensor_data(v->tensor);
    if (mt.sizes() != p.tensor.sizes() || vt.sizes() != p.tensor.sizes())
      throw ModelError(fmt::format("optimizer state of '{}': moment shape {} does not match the parameter {}", p.name,
                                   m->tensor.shape_str(), detail::shape_str(p.tensor)));
    p.exp_avg = mt.to(weight(i).options()).contiguous();
    p.exp_avg_sq = vt.to(weight(i).options()).contiguous();
    p.step_t = at::Tensor();
    if (step->kind == PyValue::Kind::tensor) p.step = static_cast<int64_t>(detail::from_tensor_data(step->tensor).item<double>());
    else if (step->kind == PyValue::Kind::integer) p.step = step->i;
    else if (step->kind == PyValue::Kind::floating) p.step = static_cast<int64_t>(step->f);
  }
}

// ---------------------------------------------------------------------------------------------
// Loss and step

ContrastiveLoss contrastive_loss(const at::Tensor& image_features, const at::Tensor& text_features,
                                 const at::Tensor& scale) {
  ContrastiveLoss out;
  // cn_clip: logit_scale * all_image_features @ all_text_features.t()  (left to right)
  out.logits_per_image = at::matmul(scale.mean() * image_features, text_features.t());
  at::Tensor logits_per_text = out.logits_per_image.t();
  at::Tensor gt = at::arange(out.logits_per_image.size(0), at::TensorOptions(at::kLong).device(image_features.device()));
  out.loss = (at::cross_entropy_loss(out.logits_per_image, gt) + at::cross_entropy_loss(logits_per_text, gt)) / 2;
  return out;
}

namespace detail {

at::Tensor from_tensor_data(const TensorData& d) { return tensor_view(d).clone(at::MemoryFormat::Contiguous); }

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}


double grad_global_l2(const std::vector<at::Tensor>& params) {
  double sq = 0;
  for (const auto& p : params) {
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    double n = g.detach().to(at::kDouble).norm().item<double>();
    sq += n * n;
  }
  return std::sqrt(sq);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Data order

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<int64_t> epoch_order(int64_t num_samples, int64_t batch_size, uint64_t seed, int64_t epoch, bool shuffle) {
  if (num_samples <= 0) return {};
  if (batch_size <= 0) throw UsageError("batch size must be positive");
  const int64_t padded = (num_samples + batch_size - 1) / batch_size * batch_size;
  std::vector<int64_t> order(padded);
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle) {
    uint64_t state = seed * 0x2545F4914F6CDD1Dull ^ (static_cast<uint64_t>(epoch) + 0x632BE59BD9B4E019ull);
    for (int64_t i = padded - 1; i > 0; --i) {
      // Unbiased bounded draw (Lemire's multiply-shift; the bias at these sizes is far below 2^-40).
      uint64_t r = splitmix64(state);
      auto j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
      std::swap(order[i], order[j]);
    }
  }
  for (auto& v : order) v %= num_samples;  // cn_clip's padding: index i reads sample i % n
  return order;
}

}  // namespace clip
