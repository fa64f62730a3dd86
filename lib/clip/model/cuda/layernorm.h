// LayerNorm over the last dimension on CUDA for bf16/fp16 rows (layernorm.cu, compiled by nvcc in
// CUDA builds only). Plain CUDA types, no LibTorch: model_cuda.cpp passes raw device pointers and
// the stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace clip::cuda {

// Whether the row kernels take this case: c a multiple of 256 up to 1024 (a warp holds a row in
// registers) and 16-byte aligned rows.
bool layer_norm_rows_supported(int64_t c, const void* a, const void* b);
// y = (x - mean) / sqrt(var + eps) * w + b per row of x (n x c); mean and rstd (n float32 each, as
// native_layer_norm's) are written for the backward. w, b, y of the dtype of x (kBFloat16 or kFloat16).
int layer_norm_forward(const void* x, const void* w, const void* b, int dtype, int64_t n, int64_t c, double eps, void* y,
                       float* mean, float* rstd, cudaStream_t stream);
// Blocks of the backward: its workspace holds 2 * blocks * c floats.
int64_t layer_norm_backward_blocks(int64_t n);
// One pass over g and x: dx = rstd * (g*w - mean_row(g*w) - x_hat * mean_row(g*w*x_hat)) per row, and the
// per-block column partials of g*x_hat and g, then added in a fixed order into dweight, dbias (out_dtype).
int layer_norm_backward(const void* g, const void* x, const void* w, int dtype, const float* mean, const float* rstd,
                        int64_t n, int64_t c, void* dx, float* workspace, int out_dtype, void* dweight, void* dbias,
                        cudaStream_t stream);

}  // namespace clip::cuda
