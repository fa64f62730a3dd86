// The few API differences between Debian's LibTorch 1.13 (CPU, CI) and the PyTorch 2.x LibTorch
// (CUDA, GPU machine) live here and nowhere else.
#pragma once
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

// Autocast switches, per backend (cuda: the GPU's, else the CPU's). PyTorch 2.4 replaced the
// per-backend functions by ones taking the device type (the old ones warn on every call).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool autocast_enabled(bool cuda) { return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU); }
inline at::ScalarType autocast_dtype(bool cuda) { return at::autocast::get_autocast_dtype(cuda ? at::kCUDA : at::kCPU); }
inline void set_autocast_enabled(bool cuda, bool on) { at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, on); }
inline void set_autocast_dtype(bool cuda, at::ScalarType dt) { at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, dt); }
#else
inline bool autocast_enabled(bool cuda) { return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
inline at::ScalarType autocast_dtype(bool cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
inline void set_autocast_enabled(bool cuda, bool on) {
  if (cuda) at::autocast::set_enabled(on);
  else at::autocast::set_cpu_enabled(on);
}
inline void set_autocast_dtype(bool cuda, at::ScalarType dt) {
  if (cuda) at::autocast::set_autocast_gpu_dtype(dt);
  else at::autocast::set_autocast_cpu_dtype(dt);
}
#endif

// bf16 autocast on or off for one backend.
inline void set_autocast(bool cuda, bool on) {
  set_autocast_enabled(cuda, on);
  if (on) set_autocast_dtype(cuda, at::kBFloat16);
}

}  // namespace clip::compat
