#include "clip/base/runtime.h"
#include "clip/base/cpu.h"

#include "clip/base/log.h"

#include <atomic>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace clip {

std::string blas_core_name() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!fn) return {};
  const char* n = fn();
  return n ? std::string(n) : std::string();
}

void tune_malloc() {
#ifdef __GLIBC__
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* v : {"GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "CLIP_NO_MALLOC_TUNING"})
      if (std::getenv(v)) return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed value on 64-bit
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
#endif
}

void maybe_reexec_for_blas(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("CLIP_NO_REEXEC")) return;
  std::string core = blas_core_name();
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char c) { return std::tolower(c); });
  if (core != "prescott") return;
  const char* kernel = nullptr;
  if (cpu_features().avx512f) kernel = "SkylakeX";
  else if (cpu_features().avx2) kernel = "Haswell";
  if (!kernel) return;
  setenv("OPENBLAS_CORETYPE", kernel, 1);
  setenv("CLIP_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);  // on failure simply continue with the slow kernel
}

namespace {
// OpenMP's own count, through the first libgomp the process loaded: the one the core's parallel loops
// were linked against (on Debian also LibTorch's; beside the PyTorch wheel, which bundles a renamed
// copy for itself, a second one). No link-time dependency here.
using SetFn = void (*)(int);
using GetFn = int (*)();
SetFn omp_set() {
  static SetFn f = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  return f;
}
GetFn omp_get() {
  static GetFn f = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  return f;
}
}  // namespace

int set_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  if (omp_set()) omp_set()(threads);  // the core's own at::parallel_for loops (lib/CMakeLists.txt)
  return threads;
}

ScopedThreads::ScopedThreads(int n) {
  if (n <= 0 || !omp_set() || !omp_get()) return;
  const int now = at::get_num_threads();  // also initialises LibTorch's count
  if (n >= now || omp_get()() != now) return;
  before_ = now;
  omp_set()(n);
}

ScopedThreads::~ScopedThreads() {
  if (before_ > 0) omp_set()(before_);
}

void RuntimeOptions::apply() const {
  if (quiet) set_log_level(LogLevel::error);
  else if (verbose) set_log_level(LogLevel::debug);
  int n = set_threads(threads);
  log_debug("threads: {}, BLAS core: {}", n, blas_core_name().empty() ? "?" : blas_core_name());
}

namespace {
std::atomic<bool> g_quick_exit{false};
}

void request_quick_exit() { g_quick_exit = true; }
bool quick_exit_requested() { return g_quick_exit; }

}  // namespace clip
