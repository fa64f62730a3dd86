// Shards, the approximate (faiss) index and the int8 scan file beside a store (collection.h), and the
// multi-threaded exact scan they are all compared with.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/retrieval/ann.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/device_search.h"
#include "clip/retrieval/indexing.h"
#include "clip/retrieval/int8.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"
#include "util.h"

using namespace clip;
using testutil::TempDir;

namespace {

constexpr float kNoThreshold = -std::numeric_limits<float>::infinity();

// Unit vectors drawn around `clusters` random centres (spread `sigma`), so that neighbours are close as
// in real image features.
std::vector<float> clustered(int64_t n, int64_t dim, int clusters, float sigma, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> c(clusters * dim), v(n * dim);
  for (auto& x : c) x = nd(rng);
  for (int i = 0; i < clusters; ++i) {
    float s = 0;
    for (int64_t j = 0; j < dim; ++j) s += c[i * dim + j] * c[i * dim + j];
    for (int64_t j = 0; j < dim; ++j) c[i * dim + j] /= std::sqrt(s);
  }
  std::uniform_int_distribution<int> pick(0, clusters - 1);
  for (int64_t r = 0; r < n; ++r) {
    const int k = pick(rng);
    float s = 0;
    for (int64_t j = 0; j < dim; ++j) {
      v[r * dim + j] = c[k * dim + j] + sigma * nd(rng) / std::sqrt(float(dim));
      s += v[r * dim + j] * v[r * dim + j];
    }
    for (int64_t j = 0; j < dim; ++j) v[r * dim + j] /= std::sqrt(s);
  }
  return v;
}

std::vector<int64_t> ids_from(int64_t n, int64_t base) {
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = base + (i * 37) % n;
  return ids;
}

StoreMeta meta() {
  StoreMeta m;
  m.kind = "image";
  m.model_name = "test";
  m.weights_hash = "sha256:test";
  return m;
}

at::Tensor tensor(const std::vector<float>& v, int64_t n, int64_t dim) {
  return at::from_blob(const_cast<float*>(v.data()), {n, dim}, at::kFloat).clone();
}

void require_same(const std::vector<std::vector<Hit>>& a, const std::vector<std::vector<Hit>>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    for (size_t j = 0; j < a[i].size(); ++j) {
      INFO("query " << i << " rank " << j);
      REQUIRE(a[i][j].id == b[i][j].id);
      REQUIRE(a[i][j].score == b[i][j].score);
    }
  }
}

// As require_same, for scores from matrix products over blocks of other shapes (many queries: BLAS): on
// some CPUs (OpenBLAS's AVX2 kernels on AMD's) a score's last bit depends on the block's shape, so
// scores agree within 1e-6 and two hits may trade places only where their scores are that close.
void require_close(const std::vector<std::vector<Hit>>& a, const std::vector<std::vector<Hit>>& b) {
  const float tol = 1e-6f;
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    std::map<int64_t, float> in_b;
    for (const Hit& h : b[i]) in_b[h.id] = h.score;
    for (size_t j = 0; j < a[i].size(); ++j) {
      INFO("query " << i << " rank " << j);
      REQUIRE(std::abs(a[i][j].score - b[i][j].score) <= tol);
      const auto it = in_b.find(a[i][j].id);
      if (it != in_b.end()) REQUIRE(std::abs(it->second - a[i][j].score) <= tol);
      else REQUIRE(std::abs(a[i][j].score - b[i].back().score) <= tol);  // tied at the k-th place
    }
  }
}

}  // namespace

TEST_CASE("the threaded exact scan equals the chunked scan, ties included, over many blocks", "[collection]") {
  // 3 levels per value: many tied scores, spread over the scan's blocks (4096+ rows each).
  const int64_t n = 40000, dim = 16;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> d(0, 2);
  std::vector<float> g(n * dim), q(4 * dim);
  for (auto& x : g) x = (d(rng) - 1) / 8.0f;
  for (auto& x : q) x = (d(rng) - 1) / 8.0f;
  for (int64_t c = 0; c < dim; ++c) q[c] = 0.f;  // tied with every row
  const auto ids = ids_from(n, 100);
  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    FeatureSet fs = make_feature_set(ids, g.data(), dim, dt);
    for (int k : {1, 10, 100}) {
      INFO(dtype_name(dt) << " k " << k);
      const at::Tensor qt = tensor(q, 4, dim);
      auto fast = search(qt, fs, k);
      auto chunked = search(qt, fs, k, kNoThreshold, nullptr, 5000);
      require_same(fast, chunked);
      for (size_t i = 0; i < fast.size(); ++i)
        for (size_t j = 0; j < fast[i].size(); ++j) REQUIRE(fast[i][j].row == chunked[i][j].row);
      for (int j = 0; j < k; ++j) REQUIRE(fast[0][j].row == j);  // the zero query: the first rows, in order
      // exclude-self through the threaded scan
      std::vector<int64_t> self = {ids[0], ids[1], ids[2], ids[3]};
      auto ex = search(qt, fs, k, kNoThreshold, &self);
      auto exc = search(qt, fs, k, kNoThreshold, &self, 5000);
      require_same(ex, exc);
      for (int64_t i = 0; i < 4; ++i)
        for (const Hit& h : ex[i]) REQUIRE(h.id != self[i]);
    }
  }
}

TEST_CASE("device search (run on the CPU) equals the exact scan, ties and widening included", "[collection][device]") {
  // Tight clusters (many near-equal scores) and exact duplicates (tied scores): the first candidate
  // list is too short and must be widened until no row left out can enter the top k.
  const int64_t n = 6000, dim = 32;
  std::vector<float> g = clustered(n, dim, 3, 0.05f, 11);
  for (int64_t r = 100; r < 160; ++r) std::copy(g.begin(), g.begin() + dim, g.begin() + r * dim);
  const auto ids = ids_from(n, 5);
  std::vector<float> qv(g.begin(), g.begin() + 3 * dim);  // the first rows as queries: ties at the top
  const at::Tensor q3 = tensor(qv, 3, dim);
  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    FeatureSet fs = make_feature_set(ids, g.data(), dim, dt);
    DeviceRows dev(fs, "cpu");
    REQUIRE(dev.bytes() == n * dim * 4);
    for (int64_t margin : {int64_t(0), int64_t(32)}) {
      dev.set_initial_margin(margin);
      for (int k : {1, 10, 70}) {
        INFO(dtype_name(dt) << " margin " << margin << " k " << k);
        const int64_t before = dev.widenings();
        auto got = dev.search(fs, q3, k, kNoThreshold, nullptr);
        auto want = search(q3, fs, k);
        require_same(got, want);
        for (size_t i = 0; i < got.size(); ++i)
          for (size_t j = 0; j < got[i].size(); ++j) REQUIRE(got[i][j].row == want[i][j].row);
        // 61 rows tie at the top of query 0: k = 70 cannot be settled by k candidates.
        if (margin == 0 && k == 70) REQUIRE(dev.widenings() > before);
        std::vector<int64_t> self = {ids[0], ids[1], ids[2]};
        require_same(dev.search(fs, q3, k, kNoThreshold, &self), search(q3, fs, k, kNoThreshold, &self));
        require_same(dev.search(fs, q3, k, 0.9f, nullptr), search(q3, fs, k, 0.9f));
      }
    }
    // Batches of many queries: the same rows as the exact search (whose batched scores come from a
    // matrix product and may differ from the single-query kernel in the last bit).
    const at::Tensor q40 = tensor(std::vector<float>(g.begin() + 1000 * dim, g.begin() + 1040 * dim), 40, dim);
    auto got = dev.search(fs, q40, 5, kNoThreshold, nullptr);
    auto want = search(q40, fs, 5);
    for (size_t i = 0; i < got.size(); ++i)
      for (size_t j = 0; j < got[i].size(); ++j) REQUIRE(std::abs(got[i][j].score - want[i][j].score) < 1e-5f);
  }
  // Through a collection: --search-device cpu is the ordinary scan; a device that does not exist is refused.
  FeatureSet fs = make_feature_set(ids, g.data(), dim, StoreDtype::f16);
  REQUIRE_THROWS_AS(DeviceRows(fs, "tpu"), UsageError);
}

TEST_CASE("shards are searched exactly like the one store they add up to", "[collection]") {
  TempDir tmp("shards");
  const int64_t n = 3000, dim = 32;
  auto g = clustered(n, dim, 12, 0.6f, 1);
  // Duplicate rows in different shards: ties across shards are broken by the concatenated row order.
  for (int64_t c = 0; c < dim; ++c) g[2500 * dim + c] = g[10 * dim + c];
  const auto ids = ids_from(n, 1);
  const auto q = clustered(23, dim, 12, 0.6f, 2);
  const int64_t cut1 = 1000, cut2 = 2200;
  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    write_store(tmp / "all", ids, g.data(), dim, dt, meta());
    write_store(tmp / "a", {ids.begin(), ids.begin() + cut1}, g.data(), dim, dt, meta());
    write_store(tmp / "b", {ids.begin() + cut1, ids.begin() + cut2}, g.data() + cut1 * dim, dim, dt, meta());
    write_store(tmp / "c", {ids.begin() + cut2, ids.end()}, g.data() + cut2 * dim, dim, dt, meta());
    Collection one = Collection::open({tmp / "all"});
    Collection three = Collection::open({tmp / "a", tmp / "b", tmp / "c"});
    REQUIRE(three.size() == n);
    for (int64_t nq : {1, 4, 23}) {
      for (int k : {1, 10, 50}) {
        INFO(dtype_name(dt) << " " << nq << " queries, k " << k);
        const at::Tensor qt = tensor(q, 23, dim).narrow(0, 0, nq);
        auto a = one.search(qt, k), b = three.search(qt, k);
        std::vector<int64_t> self(nq);
        for (int64_t i = 0; i < nq; ++i) self[i] = ids[(i * 131) % n];
        if (nq <= 4) {  // the fused scan (few queries): the same kernel for every row, bit for bit
          require_same(a, b);
          for (size_t i = 0; i < a.size(); ++i)
            for (size_t j = 0; j < a[i].size(); ++j) REQUIRE(a[i][j].row == b[i][j].row);
          require_same(one.search(qt, k, 0.2f, &self), three.search(qt, k, 0.2f, &self));
        } else {  // matrix products over the shards' blocks
          require_close(a, b);
          require_close(one.search(qt, k, 0.2f, &self), three.search(qt, k, 0.2f, &self));
        }
      }
    }
  }
  // Ids must be unique across shards.
  write_store(tmp / "dup", {ids[5], 999999}, g.data(), dim, StoreDtype::f32, meta());
  try {
    Collection::open({tmp / "a", tmp / "dup"});
    FAIL("duplicate id across shards accepted");
  } catch (const DataError& e) {
    const std::string m = e.what();
    REQUIRE(m.find("id " + std::to_string(ids[5])) != std::string::npos);
    REQUIRE(m.find("unique across shards") != std::string::npos);
  }
  // Shards of different dims or models are refused.
  write_store(tmp / "d16", {5000001}, g.data(), 16, StoreDtype::f32, meta());
  REQUIRE_THROWS_AS(Collection::open({tmp / "a", tmp / "d16"}), DataError);
  StoreMeta other = meta();
  other.weights_hash = "sha256:other";
  write_store(tmp / "other", {5000002}, g.data(), dim, StoreDtype::f32, other);
  REQUIRE_THROWS_AS(Collection::open({tmp / "a", tmp / "other"}), DataError);
}

TEST_CASE("int8 scan file: exact scores, recall@10 against float32 on clustered data, stale file refused", "[collection]") {
  TempDir tmp("int8");
  const int64_t n = 6000, dim = 64, nq = 100;
  auto g = clustered(n, dim, 30, 0.6f, 7);
  auto q = clustered(nq, dim, 30, 0.6f, 8);
  const auto ids = ids_from(n, 1);
  const std::string path = tmp / "s.clipfeat";
  write_store(path, ids, g.data(), dim, StoreDtype::f32, meta());
  Collection exact = Collection::open({path});
  for (Int8Scale scale : {Int8Scale::per_vector, Int8Scale::per_dimension}) {
    INFO("scale " << int8_scale_name(scale));
    build_int8(exact.front(), int8_path(path), scale);
    REQUIRE(int8_scale_of(int8_path(path)) == scale);
    Collection i8 = Collection::open({path});
    REQUIRE(i8.method() == "int8");
    REQUIRE(Collection::open({path}, SearchOptions{true}).method() == "exact");
    // The int8 scores alone: their best 10, re-scored but not widened (candidates = k).
    SearchOptions raw;
    raw.candidates = 10;
    Collection i8raw = Collection::open({path}, raw);
    int found = 0, found_raw = 0;
    for (int64_t i = 0; i < nq; ++i) {
      const at::Tensor qi = tensor(q, nq, dim).narrow(0, i, 1);
      auto e = exact.search(qi, 10).at(0), a = i8.search(qi, 10).at(0), r = i8raw.search(qi, 10).at(0);
      REQUIRE(a.size() == 10);
      std::set<int64_t> truth;
      for (const Hit& h : e) truth.insert(h.id);
      for (const Hit& h : r) found_raw += truth.count(h.id);
      for (const Hit& h : a) {
        found += truth.count(h.id);
        // Re-scored exactly: the score exact search gives that row.
        std::vector<float> s(1);
        score_rows(exact.front(), q.data() + i * dim, {h.row}, s.data());
        REQUIRE(h.score == s[0]);
      }
    }
    const double recall = found / double(nq * 10), recall_raw = found_raw / double(nq * 10);
    INFO("int8 recall@10 " << recall << ", without widening the candidates " << recall_raw);
    REQUIRE(recall >= 0.99);
    REQUIRE(recall_raw >= 0.9);
  }
  // A per-dimension file whose payload is cut to the per-row size is refused, not misread.
  {
    const std::string good = read_file(int8_path(path));
    write_file_atomic(int8_path(path), good.substr(0, good.size() - 4));
    REQUIRE_THROWS_AS(Collection::open({path}), DataError);
  }
  // A store rewritten with other values under the same ids: the int8 file is refused.
  for (auto& x : g) x = -x;
  write_store(path, ids, g.data(), dim, StoreDtype::f32, meta());
  try {
    Collection::open({path});
    FAIL("stale int8 file accepted");
  } catch (const DataError& e) {
    REQUIRE(std::string(e.what()).find("--dtype i8") != std::string::npos);
  }
}

TEST_CASE("approximate index: exhaustive probing returns the exact answer; stale or foreign files are refused",
          "[collection][ann]") {
  if (!have_faiss()) {
    REQUIRE_THROWS_AS(build_ann(make_feature_set({1}, std::vector<float>(8, 0.5f).data(), 8), {"Flat"}, "/tmp/x.ann"),
                      UsageError);
    return;
  }
  TempDir tmp("ann");
  const int64_t n = 2000, dim = 32;
  auto g = clustered(n, dim, 16, 0.6f, 11);
  auto q = clustered(4, dim, 16, 0.6f, 12);
  const auto ids = ids_from(n, 1);
  const std::string path = tmp / "s.clipfeat";
  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    write_store(path, ids, g.data(), dim, dt, meta());
    Collection exact = Collection::open({path}, SearchOptions{true});
    for (std::string factory : {"IVF16,Flat", "IVF8,SQ8", "HNSW16"}) {
      INFO(factory << " " << dtype_name(dt));
      AnnBuildOptions bo;
      bo.factory = factory;
      build_ann(exact.front(), bo, ann_path(path));
      SearchOptions so;
      if (factory.rfind("IVF", 0) == 0) so.ann.nprobe = 16;  // every list
      else so.ann.ef = 4000;
      so.candidates = factory == "IVF16,Flat" ? 0 : n;  // approximate codes: re-score every row returned
      // IVF lists are scored in the store's rows by default; CLIP_ANN_SCAN=faiss uses faiss's own scanning.
      for (bool faiss_scan : {false, true}) {
        if (faiss_scan) setenv("CLIP_ANN_SCAN", "faiss", 1);
        Collection ann = Collection::open({path}, so);
        unsetenv("CLIP_ANN_SCAN");
        REQUIRE(ann.method() == "ann " + factory);
        for (int64_t nq : {1, 4}) {
          const at::Tensor qt = tensor(q, 4, dim).narrow(0, 0, nq);
          for (int k : {1, 10})
            require_same(ann.search(qt, k), exact.search(qt, k));
          std::vector<int64_t> self(nq, ids[3]);
          require_same(ann.search(qt, 10, kNoThreshold, &self), exact.search(qt, 10, kNoThreshold, &self));
        }
      }
      if (factory == "IVF8,SQ8") {
        // One list of eight probed: the store scan and faiss's scan return the same rows (that list's),
        // the store scan ordered by the exact score.
        AnnParams one;
        one.nprobe = 1;
        auto store_scan = AnnIndex::open(ann_path(path), exact.front(), one)->candidates(q.data(), 1, n);
        setenv("CLIP_ANN_SCAN", "faiss", 1);
        auto faiss_scan = AnnIndex::open(ann_path(path), exact.front(), one)->candidates(q.data(), 1, n);
        unsetenv("CLIP_ANN_SCAN");
        REQUIRE(store_scan[0].size() > 0);
        REQUIRE(store_scan[0].size() < static_cast<size_t>(n));  // one list, not every row
        REQUIRE(std::set<int64_t>(store_scan[0].begin(), store_scan[0].end()) ==
                std::set<int64_t>(faiss_scan[0].begin(), faiss_scan[0].end()));
        std::vector<float> sc(store_scan[0].size());
        score_rows(exact.front(), q.data(), store_scan[0], sc.data());
        for (size_t j = 1; j < sc.size(); ++j) REQUIRE(sc[j - 1] >= sc[j]);
      }
    }
    std::remove(ann_path(path).c_str());
  }
  // nprobe on a non-IVF index, an unknown factory: usage errors.
  AnnBuildOptions hn;
  hn.factory = "HNSW8";
  Collection base = Collection::open({path});
  build_ann(base.front(), hn, ann_path(path));
  SearchOptions probe;
  probe.ann.nprobe = 4;
  REQUIRE_THROWS_AS(Collection::open({path}, probe), UsageError);
  AnnBuildOptions bad;
  bad.factory = "NoSuchIndex7";
  REQUIRE_THROWS_AS(build_ann(base.front(), bad, tmp / "bad.ann"), UsageError);

  auto refused = [&](const std::string& store, const std::string& what) {
    try {
      Collection::open({store});
      FAIL("index accepted");
    } catch (const DataError& e) {
      const std::string m = e.what();
      INFO(m);
      REQUIRE(m.find(what) != std::string::npos);
      REQUIRE(m.find("clip-index --ann") != std::string::npos);  // the remedy
    }
  };
  // Stale: rows appended to the store after the index was built.
  std::vector<float> extra(dim, 0.f);
  extra[0] = 1.f;
  append_store(path, {777777}, extra.data(), dim);
  refused(path, "2000 rows recorded, the store has 2001");
  // Foreign: another store's index copied beside this one (same size, other ids).
  const std::string other = tmp / "other.clipfeat";
  write_store(other, ids_from(2000, 50), g.data(), dim, StoreDtype::f32, meta());
  Collection o = Collection::open({other});
  build_ann(o.front(), hn, ann_path(other));
  write_store(tmp / "same.clipfeat", ids, g.data(), dim, StoreDtype::f32, meta());
  write_file_atomic(ann_path(tmp / "same.clipfeat"), read_file(ann_path(other)));
  refused(tmp / "same.clipfeat", "its ids differ");
  // Not an index at all; a truncated one.
  write_file_atomic(ann_path(tmp / "same.clipfeat"), "CLIPFEAT garbage");
  refused(tmp / "same.clipfeat", "wrong magic");
  const std::string good = read_file(ann_path(other));
  write_file_atomic(ann_path(tmp / "same.clipfeat"), good.substr(0, good.size() - 100));
  refused(tmp / "same.clipfeat", "truncated");
  // --exact bypasses the index, whatever it is.
  REQUIRE(Collection::open({tmp / "same.clipfeat"}, SearchOptions{true}).method() == "exact");
}

TEST_CASE("clip-index's writer keeps the index beside a store consistent on --append", "[collection][ann]") {
  if (!have_faiss()) return;
  TempDir tmp("annappend");
  const int64_t dim = 16;
  auto g = clustered(600, dim, 6, 0.6f, 21);
  const std::string path = tmp / "s.clipfeat";
  auto set_of = [&](int64_t b, int64_t e) {
    EncodedSet s;
    for (int64_t i = b; i < e; ++i) s.ids.push_back(10 + i);
    s.features = tensor(g, 600, dim).narrow(0, b, e - b).clone();
    return s;
  };
  SidecarOptions side;
  side.ann_factory = "IVF4,Flat";
  side.int8 = true;
  write_features(path, set_of(0, 400), meta(), StoreDtype::f16, false, side);
  REQUIRE(file_exists(ann_path(path)));
  REQUIRE(file_exists(int8_path(path)));
  write_features(path, set_of(400, 600), meta(), StoreDtype::f16, true);  // appended: both follow
  SearchOptions so;
  so.ann.nprobe = 4;
  Collection c = Collection::open({path}, so);
  REQUIRE(c.size() == 600);
  REQUIRE(c.method() == "ann IVF4,Flat");
  const at::Tensor qt = tensor(g, 600, dim).narrow(0, 590, 2);
  require_same(c.search(qt, 5), Collection::open({path}, SearchOptions{true}).search(qt, 5));
  REQUIRE(c.search(qt, 1)[0][0].id == 10 + 590);  // an appended row is found through the index
  std::remove(ann_path(path).c_str());
  REQUIRE(Collection::open({path}).method() == "int8");
  // Written anew: the files beside it described the old store and are removed.
  write_features(path, set_of(0, 100), meta(), StoreDtype::f16, false);
  REQUIRE(!file_exists(int8_path(path)));
  REQUIRE(Collection::open({path}).method() == "exact");
}

TEST_CASE("merging stores carries the approximate index and the int8 file over, or rebuilds them", "[collection][ann]") {
  TempDir tmp("annmerge");
  const int64_t dim = 16;
  auto g = clustered(900, dim, 6, 0.6f, 31);
  auto store = [&](const std::string& name, int64_t b, int64_t e, int64_t id_base) {
    std::vector<int64_t> ids;
    for (int64_t i = b; i < e; ++i) ids.push_back(id_base + i);
    write_store(tmp / name, ids, g.data() + b * dim, dim, StoreDtype::f16, meta());
    return std::string(tmp / name);
  };
  const std::string a = store("a.clipfeat", 0, 500, 0), b = store("b.clipfeat", 500, 900, 0);
  const std::string all = store("all.clipfeat", 0, 900, 0);
  const at::Tensor qt = tensor(g, 900, dim).narrow(0, 880, 3);
  SearchOptions exact_so{true};
  const auto want = Collection::open({all}, exact_so).search(qt, 5);
  MergeOptions mo;
  if (have_faiss()) {
    AnnBuildOptions bo;
    bo.factory = "IVF4,Flat";
    build_ann(Collection::open({a}, exact_so).front(), bo, ann_path(a));
    build_int8(Collection::open({b}, exact_so).front(), int8_path(b), Int8Scale::per_dimension);
    // Carried: a's index with b's rows added (no training); b's int8 file's kind rebuilt over the result.
    const std::string m = tmp / "m.clipfeat";
    merge_features({a, b}, m, mo);
    REQUIRE(file_exists(ann_path(m)));
    REQUIRE(ann_factory_of(ann_path(m)) == "IVF4,Flat");
    REQUIRE(file_exists(int8_path(m)));
    REQUIRE(int8_scale_of(int8_path(m)) == Int8Scale::per_dimension);
    SearchOptions so;
    so.ann.nprobe = 4;  // every list: the exact answer
    Collection c = Collection::open({m}, so);
    REQUIRE(c.method() == "ann IVF4,Flat");
    REQUIRE(c.size() == 900);
    require_same(c.search(qt, 5), want);
    REQUIRE(c.search(qt, 1)[0][0].id == 880);  // a row of b, found through the carried index
    // Into the first input itself: its index is read before it is rewritten.
    const std::string a2 = store("a2.clipfeat", 0, 500, 0);
    build_ann(Collection::open({a2}, exact_so).front(), bo, ann_path(a2));
    merge_features({a2, b}, a2, mo);
    require_same(Collection::open({a2}, so).search(qt, 5), want);
    // A row of a replaced by b's (same id): the carried index would hold a stale vector, so it is rebuilt.
    const std::string b2 = store("b2.clipfeat", 500, 900, -500);  // ids 0..399 again
    MergeOptions rep;
    rep.replace = true;
    const std::string r = tmp / "r.clipfeat";
    merge_features({a, b2}, r, rep);
    Collection cr = Collection::open({r}, so);
    REQUIRE(cr.method() == "ann IVF4,Flat");
    require_same(cr.search(qt, 5), Collection::open({r}, exact_so).search(qt, 5));
    // A stale index beside an input is refused before anything is written.
    write_file_atomic(ann_path(b), read_file(ann_path(a)));
    const std::string s = tmp / "s.clipfeat";
    REQUIRE_THROWS_AS(merge_features({a, b}, s, mo), DataError);
    REQUIRE(!file_exists(s));
    std::remove(ann_path(b).c_str());
  }
  // No files beside the inputs: stale ones beside the output are removed, none is made up.
  std::remove(ann_path(a).c_str());
  std::remove(int8_path(b).c_str());
  const std::string n = tmp / "n.clipfeat";
  write_file_atomic(int8_path(n), "stale");
  merge_features({a, b}, n, mo);
  REQUIRE(!file_exists(int8_path(n)));
  REQUIRE(Collection::open({n}).method() == "exact");
  require_same(Collection::open({n}).search(qt, 5), want);
  REQUIRE_THROWS_AS(merge_features({a}, n, mo), UsageError);
}
