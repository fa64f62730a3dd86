// Process-wide runtime set-up shared by every tool: BLAS kernel selection, thread counts.
#pragma once
#include <string>

namespace clip {

// Call first thing in main(). OpenBLAS 0.3.21 misdetects recent Xeons as "Prescott" and runs 4-8x
// slower; OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded, so when it is unset and the
// detected core is that fallback, this re-executes the program once with a kernel matching the CPU
// (SkylakeX with AVX-512, else Haswell with AVX2). A value already set is never overridden.
// Set CLIP_NO_REEXEC=1 to disable.
void maybe_reexec_for_blas(int argc, char** argv);

// Sets LibTorch's intra-op threads (0 = all cores; LibTorch starts with one) and returns the count.
int set_threads(int threads);

// The BLAS core OpenBLAS selected (empty when another BLAS is loaded).
std::string blas_core_name();

}  // namespace clip
