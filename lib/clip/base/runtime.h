// Process-wide runtime set-up shared by every tool: BLAS kernel selection, thread counts.
#pragma once
#include <string>

namespace clip {

// Execution settings shared by every tool: threads, device, precision, batch size, verbosity.
struct RuntimeOptions {
  int threads = 0;                 // --threads/-j (0 = all cores)
  std::string device = "cpu";      // --device cpu|cuda|cuda:N
  std::string precision = "fp32";  // --precision fp32|bf16|fp16|amp
  int batch_size = 64;             // --batch-size/-b
  bool quiet = false, verbose = false;
  void apply() const;              // log level + thread count
};

// Call first thing in main(). OpenBLAS 0.3.21 misdetects recent Xeons as "Prescott" and runs 4-8x
// slower; OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded, so when it is unset and the
// detected core is that fallback, this re-executes the program once with a kernel matching the CPU
// (SkylakeX with AVX-512, else Haswell with AVX2). A value already set is never overridden.
// Set CLIP_NO_REEXEC=1 to disable.
void maybe_reexec_for_blas(int argc, char** argv);

// Call before large CPU work (the encoder's first batch of 128 token positions or more, any image
// batch, training); once per process, later calls do nothing. glibc's malloc gives freed blocks above
// its trim threshold back to the kernel at once, and then zero-fills fresh pages for the next batch's
// activations of the same size: 1.9 million page faults and ~25 % of the time for 3 batches of
// ViT-B-16 on 2 cores. This keeps up to 1 GiB of freed memory for reuse and serves blocks below
// 32 MiB from the heap. Not done for small jobs (one query text), whose peak memory it would raise
// by what loading the checkpoint freed (about 11 MiB for ViT-B-16). Skipped when GLIBC_TUNABLES,
// MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_ or CLIP_NO_MALLOC_TUNING is set.
void tune_malloc();

// Sets LibTorch's intra-op threads (0 = all cores; LibTorch starts with one) and returns the count.
int set_threads(int threads);

// Within its scope, parallel regions started from the calling thread (LibTorch's intra-op loops, and
// OpenBLAS and oneDNN, which follow OpenMP's count) use at most `n` threads; the previous count comes
// back at the end. For jobs too small to gain from a thread team: starting one (and its workers spinning
// between the forward pass's many short regions) costs more than it saves, the more so on a shared
// machine. Unlike at::set_num_threads it does not rebuild LibTorch's pthreadpool. No-op when n <= 0 or
// n is not below the current count.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n);
  ~ScopedThreads();
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int before_ = 0;
};

// Intra-op threads worth using for a transformer forward pass over `positions` token positions in all
// (batch x sequence length): 1 below kSmallJobPositions (a couple of texts), otherwise 0 (all).
constexpr int64_t kSmallJobPositions = 128;
inline int threads_for_positions(int64_t positions) { return positions < kSmallJobPositions ? 1 : 0; }

// The BLAS core OpenBLAS selected (empty when another BLAS is loaded).
std::string blas_core_name();

// Set by code that started a GPU context (the Encoder on CUDA): tearing that context down at exit
// takes a noticeable fraction of a short job (about 0.3 s on an H200). run_main then ends the
// process with std::_Exit once the tool's body has returned and stdout and stderr are flushed:
// every output is written and renamed by then; only static destructors and at-exit handlers are
// skipped.
void request_quick_exit();
bool quick_exit_requested();

}  // namespace clip
