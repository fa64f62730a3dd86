// Exact search over a feature store: open time (mmap) and query latency for 1 and 100 queries, float32
// and float16 stores of random unit vectors, next to the memory-bandwidth bound of one scan measured in
// the same run. Prints a Markdown table (docs/benchmarks.md).
//   bench_search [--sizes 10000,100000,1000000] [--dim 512] [--reps 5] [--dir /tmp] [--threads 0]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include "clip/cli/cli.h"
#include "clip/base/log.h"
#include "clip/base/runtime.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"

using namespace clip;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

template <typename Fn>
double median_ms(int reps, Fn&& fn) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    fn();
    t.push_back(ms_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Best of several passes over a 1 GiB buffer: read (a sum) and copy (memcpy, bytes copied per second).
std::pair<double, double> bandwidth_gbs() {
  const int64_t n = int64_t(256) << 20;  // floats = 1 GiB
  at::Tensor a = at::ones({n}), b = at::empty({n});
  double read = 0, copy = 0;
  for (int r = 0; r < 4; ++r) {
    auto t0 = Clock::now();
    volatile float s = a.sum().item<float>();
    (void)s;
    read = std::max(read, 4.0 * n / (ms_since(t0) * 1e6));
    t0 = Clock::now();
    b.copy_(a);
    copy = std::max(copy, 4.0 * n / (ms_since(t0) * 1e6));
  }
  return {read, copy};
}

int body(int argc, char** argv) {
  CLI::App app{"Feature store search benchmark", "bench_search"};
  std::vector<int64_t> sizes = {10000, 100000, 1000000};
  int64_t dim = 512;
  int reps = 5, threads = 0;
  std::string dir = "/tmp";
  app.add_option("--sizes", sizes, "Store sizes (rows)")->delimiter(',');
  app.add_option("--dim", dim, "Feature dim")->capture_default_str();
  app.add_option("--reps", reps, "Repetitions per timing (median reported)")->capture_default_str();
  app.add_option("--dir", dir, "Where to write the temporary stores")->capture_default_str();
  app.add_option("--threads,-j", threads, "CPU threads (0 = all cores)")->capture_default_str();
  CLIP_PARSE(app, argc, argv);
  const int nthreads = set_threads(threads);
  c10::InferenceMode guard;

  auto [read_bw, copy_bw] = bandwidth_gbs();
  std::printf("threads %d, BLAS core %s, dim %lld; memory bandwidth (1 GiB, best of 4): read %.1f GB/s, copy %.1f GB/s\n\n",
              nthreads, blas_core_name().c_str(), static_cast<long long>(dim), read_bw, copy_bw);
  std::printf("| rows | dtype | store MB | write s | open ms | 1st query ms | 1 query ms | read bound ms | "
              "copy bound ms | 100 queries ms | per query ms |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);

  at::manual_seed(0);
  auto unit = [](at::Tensor t) { return t / t.norm(2, 1, true); };
  const at::Tensor q100 = unit(at::randn({100, dim})), q1 = q100.narrow(0, 0, 1).contiguous();
  const std::string stem = dir + "/bench_search." + std::to_string(::getpid());
  for (int64_t n : sizes) {
    at::Tensor data = unit(at::randn({n, dim}));
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = i;
    StoreMeta meta;
    meta.kind = "image";
    meta.model_name = "random";
    for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
      const std::string path = stem + "." + dtype_name(dt) + ".clipfeat";
      auto t0 = Clock::now();
      write_store(path, ids, data.data_ptr<float>(), dim, dt, meta);
      const double write_s = ms_since(t0) / 1e3;
      // Open: header validation, metadata and ids; the matrix itself is mapped lazily.
      const double open_ms = median_ms(reps, [&] { open_store(path); });
      FeatureSet fs = open_store(path);
      t0 = Clock::now();
      search(q1, fs, 10);  // pays the page faults of the fresh mapping
      const double first_ms = ms_since(t0);
      const double one_ms = median_ms(reps, [&] { search(q1, fs, 10); });
      const double hundred_ms = median_ms(reps, [&] { search(q100, fs, 10); });
      const double mb = n * dim * dtype_size(dt) / 1e6;
      // Bound: the bytes of one scan over the measured bandwidth (MB / (GB/s) = ms).
      std::printf("| %lld | %s | %.0f | %.2f | %.3f | %.1f | %.2f | %.2f | %.2f | %.1f | %.2f |\n",
                  static_cast<long long>(n), dtype_name(dt), mb, write_s, open_ms, first_ms, one_ms, mb / read_bw,
                  mb / copy_bw, hundred_ms, hundred_ms / 100);
      std::fflush(stdout);
      std::remove(path.c_str());
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run_main("bench_search", argc, argv, body); }
