// The few API differences between Debian's LibTorch 1.13 (CPU, CI) and the PyTorch 2.x LibTorch
// (CUDA, GPU machine) live here and nowhere else.
#pragma once
#include <optional>
#include <string>
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace clip::compat {

constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

// softmax(q k^T * scale + mask) v for q,k,v [B, H, L, D]; mask additive, broadcastable to
// [B, H, L, L], or undefined. dropout_p > 0 drops attention probabilities (pass 0 outside
// training). Uses the fused kernel on 2.x (flash / memory-efficient on CUDA).
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& additive_mask, double dropout_p = 0.0) {
#if TORCH_VERSION_MAJOR >= 2
  c10::optional<at::Tensor> m;
  if (additive_mask.defined()) m = additive_mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, m, dropout_p, false);
#else
  auto scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  if (additive_mask.defined()) scores = scores + additive_mask.to(scores.scalar_type());
  auto probs = at::softmax(scores, -1);
  if (dropout_p > 0) probs = at::dropout(probs, dropout_p, /*train=*/true);
  return at::matmul(probs, v);
#endif
}

// attention for inference with a padding mask (BERT's [B, 1, 1, L] additive mask) on CUDA in
// fp16/bf16 with PyTorch 2.1 or later: the memory-efficient kernel, called directly with the mask
// laid out as scaled_dot_product_attention lays it out for that kernel (rows padded to 16 elements,
// broadcast to [B, H, L, L]). scaled_dot_product_attention would pick cuDNN's kernel here, whose first
// use costs about 70 ms (against 2 ms) and which ran the text tower's short sequences slower
// (clip-index on 20,000 texts on an H100: docs/benchmarks.md). Everywhere else, and with dropout, `attention`.
inline at::Tensor attention_masked_inference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& additive_mask) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  const auto t = q.scalar_type();
  const int64_t d = q.size(-1);
  if (q.is_cuda() && additive_mask.defined() && additive_mask.dim() == 4 && (t == at::kHalf || t == at::kBFloat16) &&
      d % 8 == 0 && d <= 128 && q.stride(-1) == 1 && k.stride(-1) == 1 && v.stride(-1) == 1) {
    const int64_t len = k.size(2), pad = (16 - len % 16) % 16;
    at::Tensor m = additive_mask.to(t);
    if (pad != 0 || m.stride(-1) != 1) m = at::constant_pad_nd(m, {0, pad}).slice(-1, 0, len);
    m = m.expand({q.size(0), q.size(1), q.size(2), len});
    return std::get<0>(at::_scaled_dot_product_efficient_attention(q, k, v, m, /*compute_log_sumexp=*/false));
  }
#endif
  return attention(q, k, v, additive_mask);
}

// Restricts which fused attention kernels `attention` may use on CUDA (a benchmark knob):
// "auto" (PyTorch's choice), "flash", "efficient", "cudnn" or "math". Returns false for a name this
// LibTorch does not know (1.13 has no fused kernels: only "auto" and "math" are accepted there).
inline bool set_attention_backend(const std::string& name) {
#if TORCH_VERSION_MAJOR >= 2
  auto& ctx = at::globalContext();
  const bool all = name == "auto";
  if (!all && name != "flash" && name != "efficient" && name != "cudnn" && name != "math") return false;
  ctx.setSDPUseFlash(all || name == "flash");
  ctx.setSDPUseMemEfficient(all || name == "efficient");
  ctx.setSDPUseMath(all || name == "math");
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 3
  ctx.setSDPUseCuDNN(all || name == "cudnn");
#else
  if (name == "cudnn") return false;
#endif
  return true;
#else
  return name == "auto" || name == "math";
#endif
}

// The autocast switches of both backends. PyTorch 2.4 replaced the per-backend functions by ones
// taking the device type (the old ones warn on every call).
struct AutocastState {
  bool cpu = false, gpu = false;
  at::ScalarType cpu_dtype = at::kBFloat16, gpu_dtype = at::kHalf;

  static AutocastState current() {
    AutocastState s;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    s.cpu = at::autocast::is_autocast_enabled(at::kCPU);
    s.gpu = at::autocast::is_autocast_enabled(at::kCUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    s.gpu_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#else
    s.cpu = at::autocast::is_cpu_enabled();
    s.gpu = at::autocast::is_enabled();
    s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
    s.gpu_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
    return s;
  }

  void apply() const {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_enabled(at::kCUDA, gpu);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_dtype(at::kCUDA, gpu_dtype);
#else
    at::autocast::set_cpu_enabled(cpu);
    at::autocast::set_enabled(gpu);
    at::autocast::set_autocast_cpu_dtype(cpu_dtype);
    at::autocast::set_autocast_gpu_dtype(gpu_dtype);
#endif
  }
};

// Applies an autocast state for a scope and restores the previous one. Like torch.autocast, the
// scope counts as one nesting level: leaving the outermost one drops autocast's cache of
// low-precision weight copies. (Without that, copies made while recomputing a checkpointed block in
// backward would outlive the optimizer step, and the next forward would use the old weights.)
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& state) : prev_(AutocastState::current()) {
    state.apply();
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    prev_.apply();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastState prev_;
};

// Autocast to `dtype` (bf16 by default; fp16 for the trainer's amp-fp16) for the scope when `on`
// (CPU or CUDA by `device`), restoring the previous state after: the trainer's --precision amp, in
// its steps and in validation's encoders.
class Autocast {
 public:
  Autocast(bool on, const at::Device& device, at::ScalarType dtype = at::kBFloat16) {
    if (!on) return;
    AutocastState s = AutocastState::current();
    (device.is_cuda() ? s.gpu : s.cpu) = true;
    (device.is_cuda() ? s.gpu_dtype : s.cpu_dtype) = dtype;
    scope_.emplace(s);
  }

 private:
  std::optional<AutocastScope> scope_;
};

}  // namespace clip::compat
