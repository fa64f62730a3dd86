#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <random>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/retrieval/metrics.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"
#include "util.h"

using namespace clip;

namespace {

// Values in multiples of 1/8 in [-0.5, 0.5]: every dot product is exact in float32, so brute force and the
// chunked matrix products must agree bit for bit, ties included.
std::vector<float> quantized(int64_t n, int64_t dim, unsigned seed, int levels = 9) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, levels - 1);
  std::vector<float> v(n * dim);
  for (auto& x : v) x = (d(rng) - levels / 2) / 8.0f;
  return v;
}

struct Ref {
  int64_t row;
  float score;
};

// Brute force: every score, stable sort by score descending (cn_clip's order).
std::vector<std::vector<Ref>> brute_force(const std::vector<float>& q, int64_t nq, const std::vector<float>& g, int64_t ng,
                                          int64_t dim) {
  std::vector<std::vector<Ref>> out(nq);
  for (int64_t i = 0; i < nq; ++i) {
    for (int64_t j = 0; j < ng; ++j) {
      double s = 0;
      for (int64_t c = 0; c < dim; ++c) s += double(q[i * dim + c]) * g[j * dim + c];
      out[i].push_back({j, static_cast<float>(s)});
    }
    std::stable_sort(out[i].begin(), out[i].end(), [](const Ref& a, const Ref& b) { return a.score > b.score; });
  }
  return out;
}

at::Tensor as_tensor(const std::vector<float>& v, int64_t n, int64_t dim) {
  return at::from_blob(const_cast<float*>(v.data()), {n, dim}, at::kFloat).clone();
}

std::vector<int64_t> iota_ids(int64_t n, int64_t base) {
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = base + (i * 37) % n;  // a permutation: ids not in row order
  return ids;
}

}  // namespace

TEST_CASE("search equals brute force exactly, ties in store order, any chunk size and dtype", "[search]") {
  const int64_t ng = 500, nq = 23, dim = 16;
  // Only 3 levels per value: many exactly tied scores, also across chunk boundaries.
  auto g = quantized(ng, dim, 11, 3), q = quantized(nq, dim, 12, 3);
  for (int64_t c = 0; c < dim; ++c) g[(ng - 1) * dim + c] = g[7 * dim + c];  // a duplicate far from its twin
  for (int64_t c = 0; c < dim; ++c) q[c] = 0.f;                            // a query tied with everything
  const auto ids = iota_ids(ng, 1000);
  const auto ref = brute_force(q, nq, g, ng, dim);
  const at::Tensor qt = as_tensor(q, nq, dim);

  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    FeatureSet fs = make_feature_set(ids, g.data(), dim, dt);
    for (int64_t chunk : {0, 1, 7, 64, 499}) {
      for (int k : {1, 10, 37}) {
        INFO("dtype " << dtype_name(dt) << " chunk " << chunk << " k " << k);
        auto hits = search(qt, fs, k, -std::numeric_limits<float>::infinity(), nullptr, chunk);
        REQUIRE(hits.size() == static_cast<size_t>(nq));
        for (int64_t i = 0; i < nq; ++i) {
          REQUIRE(hits[i].size() == static_cast<size_t>(k));
          for (int j = 0; j < k; ++j) {
            REQUIRE(hits[i][j].row == ref[i][j].row);
            REQUIRE(hits[i][j].id == ids[ref[i][j].row]);
            REQUIRE(hits[i][j].score == ref[i][j].score);
          }
        }
      }
    }
  }
  // One to four queries take the fused streaming path: the same answers, bit for bit, in both dtypes and
  // across chunks.
  for (StoreDtype dt : {StoreDtype::f32, StoreDtype::f16}) {
    FeatureSet fs = make_feature_set(ids, g.data(), dim, dt);
    for (int64_t nsub : {1, 2, 3, 4}) {
      for (int64_t first : {0, 5, 19}) {
        INFO("fused: " << nsub << " queries from " << first << ", " << dtype_name(dt));
        auto hits = search(qt.narrow(0, first, nsub), fs, 10, -std::numeric_limits<float>::infinity(), nullptr,
                           first == 5 ? 33 : 0);
        for (int64_t i = 0; i < nsub; ++i)
          for (int j = 0; j < 10; ++j) {
            REQUIRE(hits[i][j].row == ref[first + i][j].row);
            REQUIRE(hits[i][j].score == ref[first + i][j].score);
          }
      }
    }
  }
  // The zero query ties with every row: the first k rows of the store, in order.
  FeatureSet fs = make_feature_set(ids, g.data(), dim);
  auto hits = search(qt.narrow(0, 0, 1), fs, 5, -std::numeric_limits<float>::infinity(), nullptr, 3);
  for (int j = 0; j < 5; ++j) REQUIRE(hits[0][j].row == j);
}

TEST_CASE("search on random unit vectors finds the true top-k", "[search]") {
  const int64_t ng = 3000, nq = 40, dim = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> g(ng * dim), q(nq * dim);
  for (auto& x : g) x = nd(rng);
  for (auto& x : q) x = nd(rng);
  at::Tensor gt = as_tensor(g, ng, dim);
  gt = gt / gt.norm(2, 1, true);
  g.assign(gt.data_ptr<float>(), gt.data_ptr<float>() + ng * dim);
  const auto ids = iota_ids(ng, 7);
  const auto ref = brute_force(q, nq, g, ng, dim);
  FeatureSet fs = make_feature_set(ids, g.data(), dim);
  auto hits = search(as_tensor(q, nq, dim), fs, 10);
  for (int64_t i = 0; i < nq; ++i) {
    REQUIRE(hits[i].size() == 10);
    for (int j = 0; j < 10; ++j) {
      // float32 BLAS vs double reference: equal rows unless two scores are within rounding of each other.
      if (hits[i][j].row != ref[i][j].row) REQUIRE(std::abs(ref[i][j].score - hits[i][j].score) < 1e-5f);
      REQUIRE(hits[i][j].score == Approx(ref[i][j].score).margin(1e-5));
      if (j) REQUIRE(hits[i][j - 1].score >= hits[i][j].score);
      REQUIRE(hits[i][j].id == ids[hits[i][j].row]);
    }
  }
  // Same answers through the f16 store path (scores within half precision).
  FeatureSet h = make_feature_set(ids, g.data(), dim, StoreDtype::f16);
  auto hh = search(as_tensor(q, nq, dim), h, 10);
  int same_top1 = 0;
  for (int64_t i = 0; i < nq; ++i) {
    same_top1 += hh[i][0].row == hits[i][0].row;
    REQUIRE(hh[i][0].score == Approx(hits[i][0].score).margin(5e-3));
  }
  REQUIRE(same_top1 >= nq - 2);
}

TEST_CASE("search threshold, exclude-self, k larger than the store, errors", "[search]") {
  const int64_t ng = 60, dim = 8;
  auto g = quantized(ng, dim, 21);
  const auto ids = iota_ids(ng, 100);
  FeatureSet fs = make_feature_set(ids, g.data(), dim);
  const auto ref = brute_force(g, ng, g, ng, dim);
  at::Tensor self = as_tensor(g, ng, dim);

  SECTION("threshold keeps exactly the hits at or above it") {
    const float thr = 0.25f;
    auto hits = search(self, fs, 20, thr);
    for (int64_t i = 0; i < ng; ++i) {
      size_t expect = 0;
      while (expect < 20 && ref[i][expect].score >= thr) ++expect;
      REQUIRE(hits[i].size() == expect);
      for (const Hit& h : hits[i]) REQUIRE(h.score >= thr);
    }
  }
  SECTION("exclude-self drops the query's own id and still fills k places") {
    auto hits = search(self, fs, 5, -std::numeric_limits<float>::infinity(), &ids, 16);
    for (int64_t i = 0; i < ng; ++i) {
      REQUIRE(hits[i].size() == 5);
      std::vector<Ref> expect;
      for (const Ref& r : ref[i])
        if (r.row != i) expect.push_back(r);
      for (int j = 0; j < 5; ++j) {
        REQUIRE(hits[i][j].id != ids[i]);
        REQUIRE(hits[i][j].row == expect[j].row);
      }
    }
    // An id that is not in the store excludes nothing.
    std::vector<int64_t> none(ng, -1);
    auto all = search(self, fs, 3, -std::numeric_limits<float>::infinity(), &none);
    REQUIRE(all[4][0].row == ref[4][0].row);
  }
  SECTION("k larger than the store returns every row; exclusion then leaves one out") {
    auto hits = search(self.narrow(0, 0, 2), fs, 100);
    REQUIRE(hits[0].size() == static_cast<size_t>(ng));
    std::vector<int64_t> ex = {ids[0], ids[1]};
    hits = search(self.narrow(0, 0, 2), fs, 100, -std::numeric_limits<float>::infinity(), &ex, 7);
    REQUIRE(hits[1].size() == static_cast<size_t>(ng - 1));
    for (const Hit& h : hits[1]) REQUIRE(h.id != ids[1]);
  }
  SECTION("errors") {
    REQUIRE_THROWS_AS(search(self, fs, 0), UsageError);
    REQUIRE_THROWS_AS(search(at::zeros({2, dim + 1}), fs, 3), UsageError);
    std::vector<int64_t> wrong(3, 0);
    REQUIRE_THROWS_AS(search(self, fs, 3, 0.f, &wrong), UsageError);
    at::Tensor nan = at::full({1, dim}, std::nanf(""));
    REQUIRE_THROWS_AS(search(nan, fs, 3), DataError);
  }
}

TEST_CASE("feature_tensor maps f32 without a copy and widens f16", "[search]") {
  auto g = quantized(10, 4, 3);
  FeatureSet fs = make_feature_set(iota_ids(10, 0), g.data(), 4);
  at::Tensor t = feature_tensor(fs);
  REQUIRE(t.data_ptr<float>() == fs.f32());
  REQUIRE(t.sizes() == at::IntArrayRef({10, 4}));
  FeatureSet h = make_feature_set(iota_ids(10, 0), g.data(), 4, StoreDtype::f16);
  REQUIRE(at::equal(feature_rows(h, 2, 5), t.narrow(0, 2, 3)));
}

TEST_CASE("top-k predictions equal cn_clip's make_topk_predictions output", "[search][cnclip]") {
  for (const char* c : {"quant", "float"}) {
    const std::string d = testutil::source_dir() + "/tests/data/eval/" + c + "/";
    INFO(d);
    FeatureSet img = read_features(d + "imgs.img_feat.jsonl"), txt = read_features(d + "texts.txt_feat.jsonl");
    char tmpl[] = "/tmp/cliptopkXXXXXX";
    REQUIRE(mkstemp(tmpl) >= 0);
    write_predictions(tmpl, topk_predictions(txt, img, 10));
    REQUIRE(read_file(tmpl) == read_file(d + "t2i.topk.jsonl"));
    write_predictions(tmpl, topk_predictions(img, txt, 10));
    REQUIRE(read_file(tmpl) == read_file(d + "i2t.topk.jsonl"));
    // The same from f16 stores of the quantized case (its values are exact in f16).
    if (std::string(c) == "quant") {
      FeatureSet img16 = make_feature_set(img.ids, img.f32(), img.dim, StoreDtype::f16, img.meta);
      write_predictions(tmpl, topk_predictions(txt, img16, 10));
      REQUIRE(read_file(tmpl) == read_file(d + "t2i.topk.jsonl"));
    }
    std::remove(tmpl);
  }
}
