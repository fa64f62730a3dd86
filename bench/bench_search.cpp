// Exact search over a feature store: open time (mmap) and query latency for 1 and 100 queries, float32
// and float16 stores of random unit vectors, next to the memory-bandwidth bound of one scan measured in
// the same run (a sum over an anonymous buffer of the store's size, timed alternately with the query).
// Prints a Markdown table (docs/benchmarks.md), then one machine-readable line per dtype:
//   bench exact rows=N dim=D dtype=f16 ms_per_query=M read_bound_ms=B ratio=M/B read_bound_start_ms=B0
// (B0: the store's bytes over the bandwidth measured once at the start, as earlier versions printed).
// With --ann, for the largest size, on clustered and on random data, the int8 scan file and each faiss
// index (--factories) at each --nprobe, with recall@10 against exact search on --queries held-out queries:
//   bench int8 rows=N dim=D data=clustered recall10=R ms_per_query=M
//   bench ann rows=N dim=D data=clustered index=FACTORY build_s=S recall10=R ms_per_query=M nprobe=P scan=store
// (IVF indexes also with scan=faiss, index=FACTORY/faiss-scan: faiss scanning its own lists, for comparison)
//   bench_search [--sizes 10000,100000,1000000] [--dim 512] [--reps 5] [--dir /tmp] [--threads 0] [--ann]
// With --device cuda (a CUDA build), instead, for each size a float16 store of random unit vectors is
// searched on the CPU (all cores, as clip-query does) and on the GPU (device_search.h), one line each:
//   bench device rows=N dim=D dtype=f16 device=cuda:0 upload_s=U ms_per_query=M ms_per_query_batch=B
//     cpu_ms_per_query=C cpu_ms_per_query_batch=CB same_as_cpu=1 widenings=W
// (ms_per_query: one query at a time, median; _batch: --batch queries in one call, per query;
// same_as_cpu: every single-query hit list equal to the CPU's, ids and scores).
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <unistd.h>

#include "clip/cli/cli.h"
#include "clip/base/log.h"
#include "clip/base/runtime.h"
#include "clip/retrieval/ann.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/device_search.h"
#include "clip/retrieval/int8.h"
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

// `n` unit vectors of a mixture of Gaussian clusters on the sphere: centre c (a random unit vector),
// point = normalise(c + s * g / sqrt(dim)) with g standard normal, s drawn per cluster in
// [0.5, 0.9]. Cluster sizes vary (centres picked with weights 1/(1+rank/50)). See docs/benchmarks.md
// for how the spread was chosen (nearest-neighbour similarities like CLIP image features').
at::Tensor clustered_data(int64_t n, int64_t dim, int64_t clusters, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor c = at::randn({clusters, dim});
  c = c / c.norm(2, 1, true);
  at::Tensor spread = at::rand({clusters}) * 0.4 + 0.5;
  at::Tensor w = 1.0 / (1.0 + at::arange(clusters, at::kDouble) / 50.0);
  at::Tensor pick = at::multinomial(w.to(at::kFloat), n, /*replacement=*/true);
  at::Tensor out = at::empty({n, dim});
  const int64_t step = 65536;
  for (int64_t b = 0; b < n; b += step) {
    const int64_t e = std::min(n, b + step);
    at::Tensor p = pick.narrow(0, b, e - b);
    at::Tensor x = c.index_select(0, p) + spread.index_select(0, p).unsqueeze(1) * at::randn({e - b, dim}) / std::sqrt(double(dim));
    out.narrow(0, b, e - b).copy_(x / x.norm(2, 1, true));
  }
  return out;
}

at::Tensor random_data(int64_t n, int64_t dim, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor out = at::empty({n, dim});
  for (int64_t b = 0; b < n; b += 65536) {
    const int64_t e = std::min(n, b + 65536);
    at::Tensor x = at::randn({e - b, dim});
    out.narrow(0, b, e - b).copy_(x / x.norm(2, 1, true));
  }
  return out;
}

double recall10(const std::vector<std::vector<Hit>>& got, const std::vector<std::vector<Hit>>& truth) {
  int64_t found = 0, total = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    for (const Hit& t : truth[i]) {
      ++total;
      for (const Hit& h : got[i]) found += h.id == t.id;
    }
  }
  return total ? double(found) / total : 0;
}

// One query at a time (latency), all of them; returns ms per query and the hits.
std::pair<double, std::vector<std::vector<Hit>>> per_query(const Collection& c, const at::Tensor& q) {
  std::vector<std::vector<Hit>> hits;
  auto t0 = Clock::now();
  for (int64_t i = 0; i < q.size(0); ++i) hits.push_back(c.search(q.narrow(0, i, 1), 10).at(0));
  return {ms_since(t0) / q.size(0), std::move(hits)};
}

void bench_ann(int64_t n, int64_t dim, int64_t nq, const std::string& stem, const std::vector<std::string>& factories,
               const std::vector<int>& nprobes, const std::vector<int>& efs, int64_t train, int64_t clusters,
               const std::vector<std::string>& datasets, bool int8_dim, int64_t int8_queries, bool faiss_scan) {
  for (const std::string& data : datasets) {
    at::Tensor all = data == "clustered" ? clustered_data(n + nq, dim, clusters, 1) : random_data(n + nq, dim, 2);
    at::Tensor q = all.narrow(0, n, nq).clone();  // held out of the store
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = i;
    StoreMeta meta;
    meta.kind = "image";
    meta.model_name = data;
    const std::string path = stem + "." + data + ".clipfeat";
    write_store(path, ids, all.data_ptr<float>(), dim, StoreDtype::f16, meta);
    all = at::Tensor();
    SearchOptions exact_opt;
    exact_opt.exact = true;
    Collection exact = Collection::open({path}, exact_opt);
    auto truth = exact.search(q, 10);  // batched: matrix products
    // Nearest-neighbour similarity of the held-out queries (how tight the data is).
    std::vector<float> nn;
    for (const auto& h : truth) nn.push_back(h.at(0).score);
    std::sort(nn.begin(), nn.end());
    std::printf("data %s: %lld rows, median top-1 similarity %.3f, median 10th %.3f\n", data.c_str(), (long long)n,
                nn[nn.size() / 2], [&] {
                  std::vector<float> t;
                  for (const auto& h : truth) t.push_back(h.at(9).score);
                  std::sort(t.begin(), t.end());
                  return t[t.size() / 2];
                }());
    auto [exact_ms, unused] = per_query(exact, q.narrow(0, 0, std::min<int64_t>(nq, 20)));
    (void)unused;
    std::printf("bench exact rows=%lld dim=%lld data=%s dtype=f16 ms_per_query=%.2f\n", (long long)n, (long long)dim,
                data.c_str(), exact_ms);
    for (Int8Scale scale : int8_dim ? std::vector<Int8Scale>{Int8Scale::per_vector, Int8Scale::per_dimension}
                                    : std::vector<Int8Scale>{Int8Scale::per_vector}) {
      auto t0 = Clock::now();
      build_int8(exact.front(), int8_path(path), scale);
      const double build_s = ms_since(t0) / 1e3;
      Collection c = Collection::open({path});
      // A full scan per query: a few hundred of the held-out queries are enough for its recall.
      const int64_t m = std::min<int64_t>(nq, int8_queries);
      auto [ms, hits] = per_query(c, q.narrow(0, 0, m));
      std::vector<std::vector<Hit>> sub(truth.begin(), truth.begin() + m);
      // Recall of the int8 scores alone (no exact re-scoring), best 10 of the scan.
      SearchOptions raw;
      raw.candidates = 10;
      Collection c10 = Collection::open({path}, raw);
      auto [ms10, hits10] = per_query(c10, q.narrow(0, 0, m));
      (void)ms10;
      std::printf("bench int8 rows=%lld dim=%lld data=%s scale=%s build_s=%.1f recall10=%.4f recall10_no_rescore=%.4f "
                  "ms_per_query=%.2f queries=%lld\n",
                  (long long)n, (long long)dim, data.c_str(), int8_scale_name(scale), build_s, recall10(hits, sub),
                  recall10(hits10, sub), ms, (long long)m);
      std::fflush(stdout);
      std::remove(int8_path(path).c_str());
    }
    for (const auto& f : factories) {
      AnnBuildOptions bo;
      bo.factory = f;
      bo.max_train = train;
      const double build_s = build_ann(exact.front(), bo, ann_path(path));
      const bool ivf = f.rfind("IVF", 0) == 0;
      // IVF lists are scanned in the store's rows (ann.cpp); scan=faiss is faiss's own list scanning, for
      // comparison in the same run (CLIP_ANN_SCAN=faiss while the index is opened).
      for (const std::string scan : ivf && faiss_scan ? std::vector<std::string>{"store", "faiss"}
                                                       : std::vector<std::string>{ivf ? "store" : "faiss"}) {
        for (int p : ivf ? nprobes : efs) {
          SearchOptions so;
          (ivf ? so.ann.nprobe : so.ann.ef) = p;
          if (scan == "faiss") setenv("CLIP_ANN_SCAN", "faiss", 1);
          Collection c = Collection::open({path}, so);
          unsetenv("CLIP_ANN_SCAN");
          auto [ms, hits] = per_query(c, q);
          std::printf("bench ann rows=%lld dim=%lld data=%s index=%s%s build_s=%.1f recall10=%.4f ms_per_query=%.3f "
                      "%s=%d scan=%s\n",
                      (long long)n, (long long)dim, data.c_str(), f.c_str(), scan == "faiss" && ivf ? "/faiss-scan" : "",
                      build_s, recall10(hits, truth), ms, ivf ? "nprobe" : "ef", p, scan.c_str());
          std::fflush(stdout);
        }
      }
      std::remove(ann_path(path).c_str());
    }
    std::remove(path.c_str());
  }
}

bool same_hits(const std::vector<Hit>& a, const std::vector<Hit>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].id != b[i].id || a[i].score != b[i].score || a[i].row != b[i].row) return false;
  return true;
}

// --device: the store searched on the CPU and on the device, side by side in one process.
void bench_device(int64_t n, int64_t dim, int reps, int64_t batch, const std::string& stem, const std::string& device) {
  at::Tensor data = random_data(n, dim, 3);
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i;
  StoreMeta meta;
  meta.kind = "image";
  meta.model_name = "random";
  const std::string path = stem + ".device.clipfeat";
  write_store(path, ids, data.data_ptr<float>(), dim, StoreDtype::f16, meta);
  data = at::Tensor();
  FeatureSet fs = open_store(path);
  at::manual_seed(7);
  at::Tensor q = at::randn({std::max<int64_t>(batch, reps), dim});
  q = q / q.norm(2, 1, true);
  search(q.narrow(0, 0, 1), fs, 10);  // page faults of the fresh mapping
  std::vector<std::vector<Hit>> cpu_hits;
  std::vector<double> t_cpu;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    cpu_hits.push_back(search(q.narrow(0, r, 1), fs, 10).at(0));
    t_cpu.push_back(ms_since(t0));
  }
  std::sort(t_cpu.begin(), t_cpu.end());
  auto t0 = Clock::now();
  search(q.narrow(0, 0, batch), fs, 10);
  const double cpu_batch = ms_since(t0) / batch;

  DeviceRows dev(fs, device);
  dev.search(fs, q.narrow(0, 0, 1), 10, -std::numeric_limits<float>::infinity(), nullptr);  // warm-up (kernels, cuBLAS handles)
  std::vector<double> t_dev;
  bool same = true;
  for (int r = 0; r < reps; ++r) {
    auto t1 = Clock::now();
    auto h = dev.search(fs, q.narrow(0, r, 1), 10, -std::numeric_limits<float>::infinity(), nullptr).at(0);
    t_dev.push_back(ms_since(t1));
    same = same && same_hits(h, cpu_hits[r]);
  }
  std::sort(t_dev.begin(), t_dev.end());
  t0 = Clock::now();
  dev.search(fs, q.narrow(0, 0, batch), 10, -std::numeric_limits<float>::infinity(), nullptr);
  const double dev_batch = ms_since(t0) / batch;
  std::printf("bench device rows=%lld dim=%lld dtype=f16 device=%s upload_s=%.2f ms_per_query=%.3f ms_per_query_batch=%.4f "
              "cpu_ms_per_query=%.2f cpu_ms_per_query_batch=%.3f batch=%lld same_as_cpu=%d widenings=%lld\n",
              (long long)n, (long long)dim, dev.device().c_str(), dev.upload_seconds(), t_dev[t_dev.size() / 2], dev_batch,
              t_cpu[t_cpu.size() / 2], cpu_batch, (long long)batch, same ? 1 : 0, (long long)dev.widenings());
  std::fflush(stdout);
  std::remove(path.c_str());
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
  bool ann = false;
  std::vector<std::string> factories = {"IVF1024,Flat", "IVF1024,SQ8"};
  std::vector<int> nprobes = {2, 4, 8, 16, 32};
  int64_t queries = 1000, train = 65536, clusters = 2000;
  std::vector<int> efs = {16, 32, 64, 128};
  std::vector<std::string> datasets = {"clustered", "random"};
  bool int8_dim = true;
  int64_t int8_queries = 200;
  bool faiss_scan = true;
  app.add_option("--faiss-scan", faiss_scan, "Also time IVF indexes with faiss's own list scanning")->capture_default_str();
  app.add_option("--int8-queries", int8_queries, "Held-out queries for the int8 recall (each a full scan)")->capture_default_str();
  app.add_option("--ef", efs, "HNSW efSearch values for --ann")->delimiter(',');
  app.add_option("--data", datasets, "Data sets for --ann: clustered, random")->delimiter(',');
  app.add_option("--int8-dim", int8_dim, "Also time the int8 file with one scale per dimension")->capture_default_str();
  app.add_flag("--ann", ann, "Also benchmark int8 and approximate indexes at the largest size (clustered and random data)");
  app.add_option("--factories", factories, "faiss factory strings for --ann (';'-separated)")->delimiter(';');
  app.add_option("--nprobe", nprobes, "IVF nprobe values for --ann")->delimiter(',');
  app.add_option("--queries", queries, "Held-out queries for recall@10")->capture_default_str();
  app.add_option("--train", train, "Rows that train an index")->capture_default_str();
  app.add_option("--clusters", clusters, "Clusters of the clustered data")->capture_default_str();
  std::string device;
  int64_t batch = 100;
  app.add_option("--device", device, "Search on this device too (cuda, cuda:N): see the header")->capture_default_str();
  app.add_option("--batch", batch, "Queries of the batched timing with --device")->capture_default_str();
  CLIP_PARSE(app, argc, argv);
  const int nthreads = set_threads(threads);
  c10::InferenceMode guard;
  if (!device.empty()) {
    std::printf("threads %d, dim %lld, device %s\n", nthreads, static_cast<long long>(dim), device.c_str());
    const std::string stem = dir + "/bench_search." + std::to_string(::getpid());
    for (int64_t n : sizes) bench_device(n, dim, reps, batch, stem, device);
    return 0;
  }

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
  std::vector<std::string> lines;
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
      // One query, alternated with the read bound of the same bytes (a sum over an anonymous buffer of the
      // store's size), so that both medians see the same machine (it may be shared and its load change).
      std::vector<double> t_one, t_bound;
      at::Tensor buf = at::ones({static_cast<int64_t>(n * dim * dtype_size(dt) / 4)});
      for (int r = 0; r < reps; ++r) {
        auto t1 = Clock::now();
        search(q1, fs, 10);
        t_one.push_back(ms_since(t1));
        t1 = Clock::now();
        volatile float s = buf.sum().item<float>();
        (void)s;
        t_bound.push_back(ms_since(t1));
      }
      buf = at::Tensor();
      std::sort(t_one.begin(), t_one.end());
      std::sort(t_bound.begin(), t_bound.end());
      const double one_ms = t_one[t_one.size() / 2], bound_ms = t_bound[t_bound.size() / 2];
      const double hundred_ms = median_ms(reps, [&] { search(q100, fs, 10); });
      const double mb = n * dim * dtype_size(dt) / 1e6;
      // Bound: the bytes of one scan over the measured bandwidth (MB / (GB/s) = ms).
      std::printf("| %lld | %s | %.0f | %.2f | %.3f | %.1f | %.2f | %.2f | %.2f | %.1f | %.2f |\n",
                  static_cast<long long>(n), dtype_name(dt), mb, write_s, open_ms, first_ms, one_ms, bound_ms,
                  mb / copy_bw, hundred_ms, hundred_ms / 100);
      std::fflush(stdout);
      lines.push_back(fmt::format("bench exact rows={} dim={} dtype={} ms_per_query={:.2f} read_bound_ms={:.2f} "
                                  "ratio={:.2f} read_bound_start_ms={:.2f}",
                                  n, dim, dtype_name(dt), one_ms, bound_ms, one_ms / bound_ms, mb / read_bw));
      std::remove(path.c_str());
    }
  }
  std::printf("\n");
  for (const auto& l : lines) std::printf("%s\n", l.c_str());
  std::fflush(stdout);
  if (ann)
    bench_ann(*std::max_element(sizes.begin(), sizes.end()), dim, queries, stem, factories, nprobes, efs, train, clusters,
              datasets, int8_dim, int8_queries, faiss_scan);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run_main("bench_search", argc, argv, body); }
