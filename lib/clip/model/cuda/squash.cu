// Pillow's two bicubic passes over a batch of 8-bit RGB images (see squash.h): the launches of the
// kernels in squash_kernels.cuh.
#include <cuda_runtime.h>

#include <cstdint>

#include "clip/model/cuda/squash.h"
#include "clip/model/cuda/squash_kernels.cuh"

namespace {

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

namespace clip::cuda {

int squash_u8(const uint8_t* in, int64_t g, int h, int w, const int32_t* taps_x, int ksize_x, int out_w,
              const int32_t* taps_y, int ksize_y, int out_h, uint8_t* tmp, uint8_t* out, cudaStream_t stream) {
  if (g <= 0) return 0;
  const int64_t rows = g * h;
  squash_horizontal<<<blocks_for(rows * out_w), kThreads, 0, stream>>>(in, rows, w, taps_x, ksize_x, out_w, tmp);
  int err = static_cast<int>(cudaGetLastError());
  if (err != 0) return err;
  squash_vertical<<<blocks_for(g * out_h * out_w), kThreads, 0, stream>>>(tmp, g, h, out_w, taps_y, ksize_y, out_h, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace clip::cuda
