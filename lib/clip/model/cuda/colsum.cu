// Column sums of a row-major [N, C] bf16/fp16 matrix on CUDA, with float32 accumulation and a fixed
// order (the same bits every run): the bias gradient of a linear layer (sum of the output gradient
// over rows) and LayerNorm's weight and bias gradients (sums of g * x_hat and of g over rows).
// Pass 1: block (32, 8) takes 256 columns (8 per thread, one 16-byte load per row) over a chunk of
// rows and writes one float32 partial per column; pass 2 adds the chunks' partials in a fixed order
// (eight interleaved running sums, then those in order), both of LayerNorm's sums in one launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "clip/model/cuda/colsum.h"
#include "clip/model/cuda/halfvec.cuh"

namespace {

using clip::cuda::dev::from_float;
using clip::cuda::dev::unpack;

constexpr int kCols = 8;    // columns per thread
constexpr int kX = 32;      // threads across columns
constexpr int kY = 8;       // threads across rows
constexpr int kTile = kCols * kX;

// LN = false: part1[chunk, c] = sum of g[r, c] over the chunk's rows.
// LN = true:  part1 = sum of g * (x - mean[r]) * rstd[r], part2 = sum of g.
template <typename T, bool LN>
__global__ void __launch_bounds__(kX * kY) colsum_pass1(const T* __restrict__ g, const T* __restrict__ x,
                                                         const float* __restrict__ mean, const float* __restrict__ rstd,
                                                         int64_t n, int64_t c, int64_t rows_per_chunk,
                                                         float* __restrict__ part1, float* __restrict__ part2) {
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kX + threadIdx.x) * kCols;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  float a1[kCols], a2[kCols];
#pragma unroll
  for (int k = 0; k < kCols; ++k) a1[k] = a2[k] = 0.f;
  if (col < c) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kY) {
      float gv[kCols];
      unpack(*reinterpret_cast<const uint4*>(g + r * c + col), gv, g);
      if (LN) {
        float xv[kCols];
        unpack(*reinterpret_cast<const uint4*>(x + r * c + col), xv, x);
        const float m = mean[r], s = rstd[r];
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
          a1[k] += gv[k] * ((xv[k] - m) * s);
          a2[k] += gv[k];
        }
      } else {
#pragma unroll
        for (int k = 0; k < kCols; ++k) a1[k] += gv[k];
      }
    }
  }
  __shared__ float s1[kY][kTile];
  __shared__ float s2[LN ? kY : 1][LN ? kTile : 1];
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    s1[threadIdx.y][threadIdx.x * kCols + k] = a1[k];
    if (LN) s2[threadIdx.y][threadIdx.x * kCols + k] = a2[k];
  }
  __syncthreads();
  // Thread (x, y) adds the kY partials of the tile's column j = y * 32 + x, in row order.
  for (int j = threadIdx.y * kX + threadIdx.x; j < kTile; j += kX * kY) {
    const int64_t cc = static_cast<int64_t>(blockIdx.x) * kTile + j;
    if (cc >= c) continue;
    float t1 = 0.f, t2 = 0.f;
#pragma unroll
    for (int y = 0; y < kY; ++y) {
      t1 += s1[y][j];
      if (LN) t2 += s2[y][j];
    }
    part1[static_cast<int64_t>(blockIdx.y) * c + cc] = t1;
    if (LN) part2[static_cast<int64_t>(blockIdx.y) * c + cc] = t2;
  }
}

// out_j[cc] = sum over chunks k of part_j[k * c + cc], for j = blockIdx.y (one or two matrices of
// partials): block (32, 8) takes 32 columns; thread row y adds chunks y, y + 8, ... in order (coalesced
// 128-byte rows), then the eight sums are added in order of y. A fixed order: the same bits every run.
template <typename Out>
__global__ void __launch_bounds__(kX * kY) colsum_pass2(const float* __restrict__ part_a, const float* __restrict__ part_b,
                                                         int64_t chunks, int64_t c, Out* __restrict__ out_a,
                                                         Out* __restrict__ out_b) {
  const float* __restrict__ part = blockIdx.y == 0 ? part_a : part_b;
  Out* __restrict__ out = blockIdx.y == 0 ? out_a : out_b;
  const int64_t cc = static_cast<int64_t>(blockIdx.x) * kX + threadIdx.x;
  float t = 0.f;
  if (cc < c) {
#pragma unroll 4
    for (int64_t k = threadIdx.y; k < chunks; k += kY) t += part[k * c + cc];
  }
  __shared__ float s[kY][kX];
  s[threadIdx.y][threadIdx.x] = t;
  __syncthreads();
  if (threadIdx.y != 0 || cc >= c) return;
  float total = 0.f;
#pragma unroll
  for (int y = 0; y < kY; ++y) total += s[y][threadIdx.x];
  out[cc] = from_float<Out>(total);
}

template <typename Out>
void pass2(const float* part_a, const float* part_b, int64_t chunks, int64_t c, void* out_a, void* out_b,
           cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((c + kX - 1) / kX), part_b ? 2u : 1u);
  colsum_pass2<Out><<<grid, dim3(kX, kY), 0, stream>>>(part_a, part_b, chunks, c, static_cast<Out*>(out_a),
                                                       static_cast<Out*>(out_b));
}

// Sums of one matrix of partials (part_b null) or of two of the same shape, into outputs of one dtype.
void pass2_any(const float* part_a, const float* part_b, int64_t chunks, int64_t c, int out_dtype, void* out_a,
               void* out_b, cudaStream_t stream) {
  if (out_dtype == clip::cuda::kFloat32) pass2<float>(part_a, part_b, chunks, c, out_a, out_b, stream);
  else if (out_dtype == clip::cuda::kBFloat16) pass2<__nv_bfloat16>(part_a, part_b, chunks, c, out_a, out_b, stream);
  else pass2<__half>(part_a, part_b, chunks, c, out_a, out_b, stream);
}

template <typename T, bool LN>
void launch(const void* g, const void* x, const float* mean, const float* rstd, int64_t n, int64_t c, int64_t chunks,
            float* part1, float* part2, cudaStream_t stream) {
  const int64_t rows = (n + chunks - 1) / chunks;
  const dim3 grid(static_cast<unsigned>((c + kTile - 1) / kTile), static_cast<unsigned>(chunks));
  colsum_pass1<T, LN><<<grid, dim3(kX, kY), 0, stream>>>(static_cast<const T*>(g), static_cast<const T*>(x), mean, rstd,
                                                         n, c, rows, part1, part2);
}

}  // namespace

namespace clip::cuda {

int column_partials_sum(const float* part_a, const float* part_b, int64_t chunks, int64_t c, int out_dtype, void* out_a,
                        void* out_b, cudaStream_t stream) {
  pass2_any(part_a, part_b, chunks, c, out_dtype, out_a, out_b, stream);
  return static_cast<int>(cudaGetLastError());
}

int64_t colsum_chunks(int64_t n, int64_t c) {
  // About four blocks per SM of a large card over the column tiles, at least 32 rows per chunk.
  const int64_t tiles = (c + kTile - 1) / kTile;
  int64_t chunks = (528 + tiles - 1) / tiles;
  const int64_t max_chunks = (n + 31) / 32;
  if (chunks > max_chunks) chunks = max_chunks;
  return chunks < 1 ? 1 : chunks;
}

bool colsum_supported(const void* g, int64_t c) {
  return c > 0 && c % kCols == 0 && reinterpret_cast<uintptr_t>(g) % 16 == 0;
}

int colsum(const void* g, int in_dtype, int64_t n, int64_t c, float* workspace, int out_dtype, void* out,
           cudaStream_t stream) {
  const int64_t chunks = colsum_chunks(n, c);
  if (in_dtype == kBFloat16) launch<__nv_bfloat16, false>(g, nullptr, nullptr, nullptr, n, c, chunks, workspace, nullptr, stream);
  else launch<__half, false>(g, nullptr, nullptr, nullptr, n, c, chunks, workspace, nullptr, stream);
  pass2_any(workspace, nullptr, chunks, c, out_dtype, out, nullptr, stream);
  return static_cast<int>(cudaGetLastError());
}

int layer_norm_weight_grads(const void* g, const void* x, int in_dtype, const float* mean, const float* rstd, int64_t n,
                            int64_t c, float* workspace, int out_dtype, void* dweight, void* dbias, cudaStream_t stream) {
  const int64_t chunks = colsum_chunks(n, c);
  float* part1 = workspace;
  float* part2 = workspace + chunks * c;
  if (in_dtype == kBFloat16) launch<__nv_bfloat16, true>(g, x, mean, rstd, n, c, chunks, part1, part2, stream);
  else launch<__half, true>(g, x, mean, rstd, n, c, chunks, part1, part2, stream);
  pass2_any(part1, part2, chunks, c, out_dtype, dweight, dbias, stream);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace clip::cuda
