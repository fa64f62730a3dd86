#include "clip/base/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdint>

namespace clip {

namespace {

CpuFeatures probe() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  uint64_t xcr0 = 0;
  if (osxsave) {
    uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  }
  const bool ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state saved by the OS
  const bool zmm = (xcr0 & 0xe6) == 0xe6;   // plus opmask and the upper ZMM state
  f.avx = ymm && ((c >> 28) & 1);
  f.fma = f.avx && ((c >> 12) & 1);
  f.f16c = f.avx && ((c >> 29) & 1);
  const bool ssse3_sse41 = ((c >> 9) & 1) && ((c >> 19) & 1);
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.sha = ssse3_sse41 && ((b >> 29) & 1);
    f.avx2 = f.avx && ((b >> 5) & 1);
    f.avx512f = zmm && ((b >> 16) & 1);
  }
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = probe();
  return f;
}

}  // namespace clip
