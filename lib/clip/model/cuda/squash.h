// Pillow's bicubic squash of 8-bit RGB images on CUDA (squash.cu, compiled by nvcc in CUDA builds
// only). Plain CUDA types, no LibTorch: the model layer (tensor_torch.cpp, squash_bicubic_u8) passes
// raw device pointers and the stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace clip::cuda {

// g images of h x w pixels, `in` [g, h, w, 3] uint8 (interleaved RGB, contiguous), resized to
// out_h x out_w as Pillow's Image.resize(BICUBIC) does: the horizontal pass into `tmp` ([g, h, out_w, 3]
// uint8), then the vertical pass into `out` ([g, 3, out_h, out_w] uint8, planar), each output sample
// (2^21 + sum of the taps' integer products) >> 22, clamped to 0..255, in 32-bit integers as Pillow's
// loops: the same bytes. taps_x / taps_y: one pass's taps on the device, int32, laid out as
// first[out] | count[out] | k[out * ksize] (clip::BicubicTaps::packed). Returns the launches' cudaError_t.
int squash_u8(const uint8_t* in, int64_t g, int h, int w, const int32_t* taps_x, int ksize_x, int out_w,
              const int32_t* taps_y, int ksize_y, int out_h, uint8_t* tmp, uint8_t* out, cudaStream_t stream);

}  // namespace clip::cuda
