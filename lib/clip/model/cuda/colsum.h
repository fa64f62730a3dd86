// Column sums on CUDA (colsum.cu, compiled by nvcc in CUDA builds only). Plain CUDA types, no
// LibTorch: the model layer's wrappers (model_cuda.cpp) pass raw device pointers and the stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace clip::cuda {

enum Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Chunks of rows of the first pass: the workspace holds chunks * c floats (twice that for the
// LayerNorm form).
int64_t colsum_chunks(int64_t n, int64_t c);
// Whether the kernels take this matrix: c a multiple of 8 and a 16-byte aligned start (rows are
// then aligned too).
bool colsum_supported(const void* g, int64_t c);
// out[j] = sum over rows i of g[i, j] (g: n x c, row-major, bf16 or fp16; out: c values of out_dtype).
// Returns the launch's cudaError_t.
int colsum(const void* g, int in_dtype, int64_t n, int64_t c, float* workspace, int out_dtype, void* out,
           cudaStream_t stream);
// out_a[j] = sum over k < chunks of part_a[k * c + j], in a fixed order (the second pass of colsum, for
// kernels that leave per-chunk partials); the same for part_b into out_b in the same launch unless
// part_b is null.
int column_partials_sum(const float* part_a, const float* part_b, int64_t chunks, int64_t c, int out_dtype, void* out_a,
                        void* out_b, cudaStream_t stream);
// LayerNorm over rows of x (n x c): dweight[j] = sum_i g[i, j] * (x[i, j] - mean[i]) * rstd[i],
// dbias[j] = sum_i g[i, j]. mean and rstd: n float32 values (native_layer_norm's).
int layer_norm_weight_grads(const void* g, const void* x, int in_dtype, const float* mean, const float* rstd, int64_t n,
                            int64_t c, float* workspace, int out_dtype, void* dweight, void* dbias, cudaStream_t stream);

}  // namespace clip::cuda
