// AdamW over one packed parameter group on CUDA (adamw.cu, compiled by nvcc in CUDA builds only).
// Plain CUDA types, no LibTorch: the optimizer (train_optim.cpp) passes raw device pointers and the
// stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace clip::cuda {

// One step of AdamW (decoupled weight decay, amsgrad and maximize off) for a group whose float32
// masters, moments and low-precision parameters are each one buffer, and whose gradients are the
// members' own tensors (bf16 or fp16, as the parameters):
//   w -= lr*wd*w;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
//   w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps);  low = round(w)
// the formula and operand types of PyTorch's fused AdamW (as of 2.11: float32 throughout, fused
// multiply-adds), read in one pass instead of a gathering copy, a conversion, the update and a
// rounding copy. Member k spans [offsets[k], offsets[k+1]) of the buffers; grads[k] points at its
// gradient, steps[k] at its step count (float32, already counted for this step); lr is a float32 on
// the device. skip (nullptr, or a float32 on the device): where it holds a nonzero value nothing is
// written, as PyTorch's fused AdamW does given found_inf (a non-finite loss or gradient). Returns the
// launch's cudaError_t.
int adamw_packed(int members, const void* const* grads, const int64_t* offsets, const float* const* steps, int dtype,
                 float* master, float* exp_avg, float* exp_avg_sq, void* low, const float* lr, const float* skip,
                 double beta1, double beta2, double weight_decay, double eps, cudaStream_t stream);

}  // namespace clip::cuda
