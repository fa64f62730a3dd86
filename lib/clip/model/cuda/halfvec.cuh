// Device helpers shared by the project's kernels: a 16-bit float and eight of them (one 16-byte load)
// as floats and back, and float to bf16/fp16/float32 rounding. nvcc only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace clip::cuda::dev {

__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ __nv_bfloat162 from_float2(float2 v, const __nv_bfloat16*) { return __float22bfloat162_rn(v); }
__device__ __forceinline__ __half2 from_float2(float2 v, const __half*) { return __float22half2_rn(v); }
template <typename T> struct Pair;
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };
template <> struct Pair<__half> { using type = __half2; };

// Eight 16-bit values of one 16-byte load, as floats.
template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float* f, const T*) {
  const auto* h = reinterpret_cast<const typename Pair<T>::type*>(&v);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 p = to_float2(h[k]);
    f[2 * k] = p.x;
    f[2 * k + 1] = p.y;
  }
}

// Eight floats rounded to T, as one 16-byte store.
template <typename T>
__device__ __forceinline__ uint4 pack(const float* f, const T* tag) {
  uint4 v;
  auto* h = reinterpret_cast<typename Pair<T>::type*>(&v);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = from_float2(make_float2(f[2 * k], f[2 * k + 1]), tag);
  return v;
}

template <typename Out>
__device__ __forceinline__ Out from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

}  // namespace clip::cuda::dev
