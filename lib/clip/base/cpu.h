// What the CPU (and the OS) supports, probed once with cpuid/xgetbv: the one place the tools ask
// (store f16 conversion, search kernels, the BLAS kernel choice, SHA-256). Works with GCC and clang.
#pragma once

namespace clip {

struct CpuFeatures {
  bool avx = false, avx2 = false, fma = false, f16c = false, avx512f = false;
  bool sha = false;  // SHA-NI (with SSSE3 and SSE4.1): the SHA-256 rounds in hardware
};
const CpuFeatures& cpu_features();

}  // namespace clip
