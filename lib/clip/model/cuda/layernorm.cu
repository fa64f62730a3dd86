// LayerNorm forward and backward for bf16/fp16 rows of 256 to 1024 columns (see layernorm.h). A warp
// owns a row: lane l holds columns [l*8 + k*256, +8) for k < V = c/256 (one 16-byte load each, a warp
// reading 512 contiguous bytes per k), so the row's sums are warp shuffles and every value is read
// once. Statistics in float32: mean, then the variance about it, rstd = rsqrt(var + eps). The backward
// computes dx and, in the same pass, each warp's column partials of g*x_hat and g, summed over the
// block's warps in a fixed order into one partial per block; colsum.cu's second pass adds the
// blocks' partials in its fixed order (the same bits every run).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "clip/model/cuda/colsum.h"
#include "clip/model/cuda/halfvec.cuh"
#include "clip/model/cuda/layernorm.h"

namespace {

using clip::cuda::dev::pack;
using clip::cuda::dev::unpack;

constexpr int kWarps = 8;  // rows in flight per block of the forward
constexpr int kThreads = kWarps * 32;
// The backward holds two rows and two column partials per lane (about 150 registers at c = 768):
// smaller blocks, so that three fit on an SM.
constexpr int kBackWarps = 4;
constexpr int kBackThreads = kBackWarps * 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, int V>
__device__ __forceinline__ void load_row(const T* row, int lane, float (&v)[V][8]) {
#pragma unroll
  for (int k = 0; k < V; ++k) unpack(*reinterpret_cast<const uint4*>(row + k * 256 + lane * 8), v[k], row);
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) ln_forward(const T* __restrict__ x, const T* __restrict__ w,
                                                        const T* __restrict__ b, int64_t n, float eps, T* __restrict__ y,
                                                        float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  constexpr int c = V * 256;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < n; r += static_cast<int64_t>(gridDim.x) * kWarps) {
    float v[V][8];
    load_row(x + r * c, lane, v);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) s += v[k][j];
    const float mean = warp_sum(s) / c;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float d = v[k][j] - mean;
        q += d * d;
      }
    const float rstd = rsqrtf(warp_sum(q) / c + eps);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float o[8], wv[8], bv[8];  // w and b from the cache, per row (fewer registers, more warps)
      unpack(*reinterpret_cast<const uint4*>(w + k * 256 + lane * 8), wv, w);
      unpack(*reinterpret_cast<const uint4*>(b + k * 256 + lane * 8), bv, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = (v[k][j] - mean) * rstd * wv[j] + bv[j];
      *reinterpret_cast<uint4*>(y + r * c + k * 256 + lane * 8) = pack(o, y);
    }
    if (lane == 0) {
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBackThreads, V == 4 ? 2 : 3) ln_backward(const T* __restrict__ g, const T* __restrict__ x,
                                                         const T* __restrict__ w, const float* __restrict__ mean,
                                                         const float* __restrict__ rstd, int64_t n, int64_t rows_per_block,
                                                         T* __restrict__ dx, float* __restrict__ part_w,
                                                         float* __restrict__ part_b) {
  constexpr int c = V * 256;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float wv[V][8], aw[V][8], ab[V][8];
  load_row(w, lane, wv);
#pragma unroll
  for (int k = 0; k < V; ++k)
#pragma unroll
    for (int j = 0; j < 8; ++j) aw[k][j] = ab[k][j] = 0.f;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t r1 = min(n, r0 + rows_per_block);
  for (int64_t r = r0 + warp; r < r1; r += kBackWarps) {
    float gv[V][8], xv[V][8];
    load_row(g + r * c, lane, gv);
    load_row(x + r * c, lane, xv);
    const float m = mean[r], s = rstd[r];
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float xh = (xv[k][j] - m) * s;
        const float gw = gv[k][j] * wv[k][j];
        aw[k][j] += gv[k][j] * xh;
        ab[k][j] += gv[k][j];
        s1 += gw;
        s2 += gw * xh;
        xv[k][j] = xh;  // x_hat from here on
      }
    s1 = warp_sum(s1) / c;
    s2 = warp_sum(s2) / c;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float o[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) o[j] = s * (gv[k][j] * wv[k][j] - s1 - xv[k][j] * s2);
      *reinterpret_cast<uint4*>(dx + r * c + k * 256 + lane * 8) = pack(o, dx);
    }
  }
  // The block's partials: the warps' values added in warp order, one column per thread and pass.
  __shared__ float sh[kBackWarps][c];
  float* const outs[2] = {part_w + static_cast<int64_t>(blockIdx.x) * c, part_b + static_cast<int64_t>(blockIdx.x) * c};
#pragma unroll
  for (int which = 0; which < 2; ++which) {
#pragma unroll
    for (int k = 0; k < V; ++k)
#pragma unroll
      for (int j = 0; j < 8; ++j) sh[warp][k * 256 + lane * 8 + j] = which == 0 ? aw[k][j] : ab[k][j];
    __syncthreads();
    for (int col = threadIdx.x; col < c; col += kBackThreads) {
      float t = 0.f;
#pragma unroll
      for (int u = 0; u < kBackWarps; ++u) t += sh[u][col];
      outs[which][col] = t;
    }
    __syncthreads();
  }
}

int64_t rows_per_block(int64_t n) {
  // About two waves of three blocks per SM of a large card (132 SMs), whole warps' worth of rows.
  int64_t rows = (n + 791) / 792;
  rows = (rows + kBackWarps - 1) / kBackWarps * kBackWarps;
  return rows < kBackWarps ? kBackWarps : rows;
}

// Dispatch on the dtype and V = c / 256.
template <template <typename, int> class F, typename... A>
void dispatch(int dtype, int64_t c, A... a) {
  const int v = static_cast<int>(c / 256);
  if (dtype == clip::cuda::kBFloat16) {
    switch (v) {
      case 1: F<__nv_bfloat16, 1>::run(a...); break;
      case 2: F<__nv_bfloat16, 2>::run(a...); break;
      case 3: F<__nv_bfloat16, 3>::run(a...); break;
      default: F<__nv_bfloat16, 4>::run(a...); break;
    }
  } else {
    switch (v) {
      case 1: F<__half, 1>::run(a...); break;
      case 2: F<__half, 2>::run(a...); break;
      case 3: F<__half, 3>::run(a...); break;
      default: F<__half, 4>::run(a...); break;
    }
  }
}

// The launches, as classes so that dispatch can take them as template arguments.
template <typename T, int V>
struct Forward {
  static void run(const void* x, const void* w, const void* b, int64_t n, double eps, void* y, float* mean, float* rstd,
                  cudaStream_t stream) {
    const int64_t blocks = (n + kWarps - 1) / kWarps;
    ln_forward<T, V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), n, static_cast<float>(eps),
        static_cast<T*>(y), mean, rstd);
  }
};

template <typename T, int V>
struct Backward {
  static void run(const void* g, const void* x, const void* w, const float* mean, const float* rstd, int64_t n, void* dx,
                  float* part_w, float* part_b, cudaStream_t stream) {
    const int64_t rows = rows_per_block(n);
    const int64_t blocks = (n + rows - 1) / rows;
    ln_backward<T, V><<<static_cast<unsigned>(blocks), kBackThreads, 0, stream>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const T*>(w), mean, rstd, n, rows,
        static_cast<T*>(dx), part_w, part_b);
  }
};

}  // namespace

namespace clip::cuda {

bool layer_norm_rows_supported(int64_t c, const void* a, const void* b) {
  return c >= 256 && c <= 1024 && c % 256 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

int layer_norm_forward(const void* x, const void* w, const void* b, int dtype, int64_t n, int64_t c, double eps, void* y,
                       float* mean, float* rstd, cudaStream_t stream) {
  if (n > 0) dispatch<Forward>(dtype, c, x, w, b, n, eps, y, mean, rstd, stream);
  return static_cast<int>(cudaGetLastError());
}

int64_t layer_norm_backward_blocks(int64_t n) {
  const int64_t rows = rows_per_block(n);
  const int64_t blocks = (n + rows - 1) / rows;
  return blocks < 1 ? 1 : blocks;
}

int layer_norm_backward(const void* g, const void* x, const void* w, int dtype, const float* mean, const float* rstd,
                        int64_t n, int64_t c, void* dx, float* workspace, int out_dtype, void* dweight, void* dbias,
                        cudaStream_t stream) {
  const int64_t blocks = layer_norm_backward_blocks(n);
  float* part_w = workspace;
  float* part_b = workspace + blocks * c;
  if (n > 0) {
    dispatch<Backward>(dtype, c, g, x, w, mean, rstd, n, dx, part_w, part_b, stream);
  } else {
    cudaMemsetAsync(workspace, 0, static_cast<size_t>(2 * blocks * c) * sizeof(float), stream);
  }
  int err = static_cast<int>(cudaGetLastError());
  if (err != 0) return err;
  return column_partials_sum(part_w, part_b, blocks, c, out_dtype, dweight, dbias, stream);
}

}  // namespace clip::cuda
