// What the CPU (and the OS) supports, probed once with cpuid/xgetbv: the one place the tools ask
// (store f16 conversion, search kernels, the BLAS kernel choice). Works with GCC and clang.
#pragma once

namespace clip {

struct CpuFeatures {
  bool avx = false, avx2 = false, fma = false, f16c = false, avx512f = false;
};
const CpuFeatures& cpu_features();

}  // namespace clip
