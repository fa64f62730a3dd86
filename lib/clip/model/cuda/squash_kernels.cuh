// The squash's two kernels (squash.h), in a header of their own: squash.cu launches them, and
// tests/test_squash_kernel.cpp runs the same functions thread by thread on the CPU (defining CUDA's
// qualifiers and blockIdx / threadIdx itself) against the CPU's exact resize, so that a CPU build checks
// their arithmetic and indexing too. Include after <cuda_runtime.h> (or the test's stand-ins).
// A thread per output pixel, its three channels summed in int32 with Pillow's fixed-point taps, in
// tap order (integer sums: the order does not change the result). The neighbouring threads of a warp
// read overlapping source pixels, which the cache serves.
#pragma once
#include <cstdint>

namespace {

constexpr int kThreads = 256;
constexpr int kPrecisionBits = 22;  // Pillow's for 8-bit images: 32 - 8 - 2

__device__ __forceinline__ uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;  // arithmetic shift, as Pillow's lookup index
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

// tmp[r, x, c] for source rows r < rows (g * h), from in[r, first[x] + j, c].
__global__ void __launch_bounds__(kThreads) squash_horizontal(const uint8_t* __restrict__ in, int64_t rows, int w,
                                                               const int32_t* __restrict__ taps, int ksize, int out_w,
                                                               uint8_t* __restrict__ tmp) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= rows * out_w) return;
  const int x = static_cast<int>(i % out_w);
  const int64_t r = i / out_w;
  const int first = taps[x], count = taps[out_w + x];
  const int32_t* k = taps + 2 * out_w + static_cast<int64_t>(x) * ksize;
  const uint8_t* s = in + (r * w + first) * 3;
  int32_t a0 = 1 << (kPrecisionBits - 1), a1 = a0, a2 = a0;
  for (int j = 0; j < count; ++j) {
    const int32_t kj = k[j];
    a0 += static_cast<int32_t>(s[3 * j]) * kj;
    a1 += static_cast<int32_t>(s[3 * j + 1]) * kj;
    a2 += static_cast<int32_t>(s[3 * j + 2]) * kj;
  }
  uint8_t* d = tmp + i * 3;
  d[0] = clip8(a0);
  d[1] = clip8(a1);
  d[2] = clip8(a2);
}

// out[n, c, y, x] from tmp[n, first[y] + j, x, c].
__global__ void __launch_bounds__(kThreads) squash_vertical(const uint8_t* __restrict__ tmp, int64_t g, int h, int out_w,
                                                             const int32_t* __restrict__ taps, int ksize, int out_h,
                                                             uint8_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t plane = static_cast<int64_t>(out_h) * out_w;
  if (i >= g * plane) return;
  const int x = static_cast<int>(i % out_w);
  const int y = static_cast<int>((i / out_w) % out_h);
  const int64_t n = i / plane;
  const int first = taps[y], count = taps[out_h + y];
  const int32_t* k = taps + 2 * out_h + static_cast<int64_t>(y) * ksize;
  const uint8_t* s = tmp + ((n * h + first) * out_w + x) * 3;
  const int64_t stride = static_cast<int64_t>(out_w) * 3;
  int32_t a0 = 1 << (kPrecisionBits - 1), a1 = a0, a2 = a0;
  for (int j = 0; j < count; ++j) {
    const int32_t kj = k[j];
    const uint8_t* p = s + j * stride;
    a0 += static_cast<int32_t>(p[0]) * kj;
    a1 += static_cast<int32_t>(p[1]) * kj;
    a2 += static_cast<int32_t>(p[2]) * kj;
  }
  uint8_t* o = out + n * 3 * plane + static_cast<int64_t>(y) * out_w + x;
  o[0] = clip8(a0);
  o[plane] = clip8(a1);
  o[2 * plane] = clip8(a2);
}

}  // namespace
