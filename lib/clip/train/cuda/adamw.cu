// AdamW over a packed parameter group (see adamw.h). Each block takes a fixed range of the group's
// buffers, which may cross members; per member it reads the step count once and derives the bias
// corrections, then updates its elements with coalesced loads. The member table travels in the
// kernel's arguments, up to kMembers per launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "clip/model/cuda/colsum.h"  // Dtype
#include "clip/model/cuda/halfvec.cuh"
#include "clip/train/cuda/adamw.h"

namespace {

using clip::cuda::dev::from_float;
using clip::cuda::dev::to_float;

constexpr int kMembers = 96;     // members per launch (the table stays within 4 KB of arguments)
constexpr int kThreads = 256;
constexpr int64_t kRange = 16384;  // elements per block

struct Table {
  const void* grads[kMembers];
  const float* steps[kMembers];
  int64_t offsets[kMembers + 1];  // into the buffers; offsets[0] is where this launch starts
  int count;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) adamw_kernel(Table tab, float* __restrict__ master, float* __restrict__ m1,
                                                         float* __restrict__ m2, T* __restrict__ low,
                                                         const float* __restrict__ lr_ptr,
                                                         const float* __restrict__ skip, double beta1, double beta2,
                                                         double wd, double eps) {
  if (skip != nullptr && *skip != 0.0f) return;  // the step is skipped: nothing changes
  const int64_t begin = tab.offsets[0] + static_cast<int64_t>(blockIdx.x) * kRange;
  const int64_t end = min(begin + kRange, tab.offsets[tab.count]);
  // The member holding `begin`: the last k with offsets[k] <= begin.
  int lo = 0, hi = tab.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tab.offsets[mid] <= begin) lo = mid;
    else hi = mid - 1;
  }
  // Operands and order of PyTorch 2.11's fused AdamW (FusedAdamMathFunctor, ADAMW mode): the
  // hyper-parameters and the bias corrections in float32, the moments' updates as fused multiply-adds.
  const float lr = *lr_ptr, b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
  const float decay = static_cast<float>(wd), epsilon = static_cast<float>(eps);
  for (int k = lo; k < tab.count && tab.offsets[k] < end; ++k) {
    const int64_t s = max(begin, tab.offsets[k]), e = min(end, tab.offsets[k + 1]);
    const T* __restrict__ g = static_cast<const T*>(tab.grads[k]);
    const int64_t first = tab.offsets[k];
    const float step = *tab.steps[k];
    const float bias_correction1 = 1 - powf(b1, step);
    const float bias_correction2_sqrt = sqrtf(1 - powf(b2, step));
    const float step_size = lr / bias_correction1;
#pragma unroll 4
    for (int64_t i = s + threadIdx.x; i < e; i += kThreads) {
      float w = master[i];
      const float grad = to_float(g[i - first]);
      float a = m1[i], b = m2[i];
      if (decay != 0) w -= lr * decay * w;
      a = fmaf(b1, a, fmaf(-b1, grad, grad));
      b = fmaf(b2, b, fmaf(-b2, grad * grad, grad * grad));
      const float denom = (sqrtf(b) / bias_correction2_sqrt) + epsilon;
      w -= step_size * a / denom;
      master[i] = w;
      m1[i] = a;
      m2[i] = b;
      low[i] = from_float<T>(w);
    }
  }
}

}  // namespace

namespace clip::cuda {

int adamw_packed(int members, const void* const* grads, const int64_t* offsets, const float* const* steps, int dtype,
                 float* master, float* exp_avg, float* exp_avg_sq, void* low, const float* lr, const float* skip,
                 double beta1, double beta2, double weight_decay, double eps, cudaStream_t stream) {
  for (int first = 0; first < members; first += kMembers) {
    Table tab;
    tab.count = members - first < kMembers ? members - first : kMembers;
    for (int k = 0; k < tab.count; ++k) {
      tab.grads[k] = grads[first + k];
      tab.steps[k] = steps[first + k];
      tab.offsets[k] = offsets[first + k];
    }
    tab.offsets[tab.count] = offsets[first + tab.count];
    const int64_t n = tab.offsets[tab.count] - tab.offsets[0];
    if (n <= 0) continue;
    const unsigned blocks = static_cast<unsigned>((n + kRange - 1) / kRange);
    if (dtype == kBFloat16)
      adamw_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(tab, master, exp_avg, exp_avg_sq,
                                                                   static_cast<__nv_bfloat16*>(low), lr, skip, beta1,
                                                                   beta2, weight_decay, eps);
    else
      adamw_kernel<__half><<<blocks, kThreads, 0, stream>>>(tab, master, exp_avg, exp_avg_sq, static_cast<__half*>(low), lr,
                                                            skip, beta1, beta2, weight_decay, eps);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

}  // namespace clip::cuda
