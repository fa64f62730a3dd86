#include "clip/retrieval/search.h"

#include "clip/base/cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <immintrin.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "clip/base/error.h"

namespace clip {

namespace {

struct Cand {
  float score;
  int64_t row;
};

// cn_clip sorts (id, score) pairs with Python's stable sort on the score, descending: among equal
// scores the earlier row wins. This total order reproduces that independently of topk's tie handling.
bool better(const Cand& a, const Cand& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }

constexpr int64_t kScoreBudget = int64_t(32) << 20;     // floats in one [queries x rows] score block (128 MiB)
// Floats of a widened float16 chunk (16 MiB): small enough to stay mostly in cache between the
// conversion and the product that reads it back, large enough to keep the number of parallel regions
// (BLAS, topk) per scan low.
constexpr int64_t kConvertBudget = int64_t(4) << 20;
constexpr int64_t kQueryBlock = 1024;
constexpr int64_t kFusedMaxQueries = 4;

bool have_avx2_f16c() {
  const CpuFeatures& c = cpu_features();
  return c.avx2 && c.fma && c.f16c;
}

// Eight row values widened to float32.
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const uint16_t* x) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}
inline float load1(const float* x) { return *x; }
__attribute__((target("avx2,fma,f16c"))) inline float load1(const uint16_t* x) { return _cvtsh_ss(*x); }

// scores[i * ld + r] = <q_i, row r> for rows [0, n) and nq <= kFusedMaxQueries float32 queries, in one
// streaming pass (float16 rows widened in registers). For so few queries the scan is memory-bound and
// OpenBLAS's matrix-vector path, with a parallel region per call, falls well short of the bandwidth.
template <typename T>
__attribute__((target("avx2,fma,f16c"))) void dot_rows(const T* rows, int64_t n, int64_t dim, const float* q, int64_t nq,
                                                        float* scores, int64_t ld, bool page_ahead = true) {
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
  for (int64_t r = 0; r < n; ++r) {
    const T* x = rows + r * dim;
    const char* pf = reinterpret_cast<const char*>(x) + 4096;  // a page ahead (see dot_rows512)
    if (page_ahead)
      for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
    __m256 acc0[kFusedMaxQueries], acc1[kFusedMaxQueries];  // two chains per query hide the FMA latency
    for (int64_t i = 0; i < nq; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= dim; j += 16) {
      const __m256 v0 = load8(x + j), v1 = load8(x + j + 8);
      for (int64_t i = 0; i < nq; ++i) {
        acc0[i] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(q + i * dim + j), acc0[i]);
        acc1[i] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(q + i * dim + j + 8), acc1[i]);
      }
    }
    for (; j + 8 <= dim; j += 8) {
      const __m256 v0 = load8(x + j);
      for (int64_t i = 0; i < nq; ++i) acc0[i] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(q + i * dim + j), acc0[i]);
    }
    for (int64_t i = 0; i < nq; ++i) {
      const __m256 a = _mm256_add_ps(acc0[i], acc1[i]);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      h = _mm_hadd_ps(h, h);
      h = _mm_hadd_ps(h, h);
      float sum = _mm_cvtss_f32(h);
      for (int64_t t = j; t < dim; ++t) sum += load1(x + t) * q[i * dim + t];
      scores[i * ld + r] = sum;
    }
  }
}


// The same scores with AVX-512 (16 floats per instruction: half the instructions per row, which matters
// when the cores are shared and the scan gets less than a core's worth of cycles per byte). Both kernels
// also prefetch the rows one page ahead: the hardware prefetchers stop at 4 KiB page boundaries, and a
// store is a file mapping in 4 KiB pages. Sums are formed in a different order than dot_rows, so one
// search uses one kernel throughout (score_rows picks the same one as the scan).
inline __m512 load16(const float* x) __attribute__((target("avx512f")));
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const uint16_t* x) __attribute__((target("avx512f")));
inline __m512 load16(const uint16_t* x) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))); }

template <typename T>
__attribute__((target("avx512f,avx2,fma,f16c"))) void dot_rows512(const T* rows, int64_t n, int64_t dim, const float* q,
                                                                   int64_t nq, float* scores, int64_t ld,
                                                                   bool page_ahead = true) {
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
  constexpr int64_t kAhead = 4096;
  for (int64_t r = 0; r < n; ++r) {
    const T* x = rows + r * dim;
    const char* pf = reinterpret_cast<const char*>(x) + kAhead;
    if (page_ahead)
      for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
    __m512 acc0[kFusedMaxQueries], acc1[kFusedMaxQueries];
    for (int64_t i = 0; i < nq; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= dim; j += 32) {
      const __m512 v0 = load16(x + j), v1 = load16(x + j + 16);
      for (int64_t i = 0; i < nq; ++i) {
        acc0[i] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(q + i * dim + j), acc0[i]);
        acc1[i] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(q + i * dim + j + 16), acc1[i]);
      }
    }
    for (; j + 16 <= dim; j += 16) {
      const __m512 v0 = load16(x + j);
      for (int64_t i = 0; i < nq; ++i) acc0[i] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(q + i * dim + j), acc0[i]);
    }
    for (int64_t i = 0; i < nq; ++i) {
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
      for (int64_t t = j; t < dim; ++t) sum += load1(x + t) * q[i * dim + t];
      scores[i * ld + r] = sum;
    }
  }
}

bool have_avx512() { return cpu_features().avx512f && have_avx2_f16c(); }

// The kernel of every fused scan and of score_rows: AVX-512 where the CPU has it, else AVX2.
template <typename T>
void dot_rows_any(const T* rows, int64_t n, int64_t dim, const float* q, int64_t nq, float* scores, int64_t ld,
                  bool page_ahead = true) {
  if (have_avx512()) dot_rows512(rows, n, dim, q, nq, scores, ld, page_ahead);
  else dot_rows(rows, n, dim, q, nq, scores, ld, page_ahead);
}

// Keeps the k best candidates under `better`; front() is the worst kept (a heap ordered by `better`).
struct TopK {
  explicit TopK(int k) : k(static_cast<size_t>(k)) { v.reserve(this->k + 1); }
  size_t k;
  std::vector<Cand> v;
  // Rows arrive in increasing order within one scan, so a score equal to the worst kept one loses.
  bool wants(float s) const { return v.size() < k || s > v.front().score; }
  void push(float s, int64_t row) {
    if (v.size() < k) {
      v.push_back({s, row});
      std::push_heap(v.begin(), v.end(), better);
    } else {
      std::pop_heap(v.begin(), v.end(), better);
      v.back() = {s, row};
      std::push_heap(v.begin(), v.end(), better);
    }
  }
};

// Tells the kernel that the matrix of a mapped store is read front to back (longer read-ahead when it
// is not yet in the page cache). Cheap; done once per search.
void advise_sequential(const FeatureSet& fs) {
  if (fs.format != "store" || !fs.data || fs.size() == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(fs.data) & ~(page - 1);
  const uintptr_t e = reinterpret_cast<uintptr_t>(fs.data) + static_cast<uintptr_t>(fs.size()) * fs.dim * dtype_size(fs.dtype);
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_SEQUENTIAL);
}

// The fused path: rows [0, N) split into blocks over all threads; each block scores up to
// kFusedMaxQueries queries in one streaming pass (scores of 256 rows at a time stay in L1) and keeps
// its own top-k, so no score matrix is written and no full top-k pass follows. The block results are
// merged under the same total order, so the answer is exactly that of the chunked path.
std::vector<std::vector<Cand>> fused_scan(const FeatureSet& fs, const float* q, int64_t nq, int k,
                                          const std::vector<int64_t>& self_row) {
  const int64_t N = fs.size(), D = fs.dim;
  const int64_t threads = std::max(1, at::get_num_threads());
  // Blocks of at least 4096 rows, 16 per thread, handed out one at a time (an atomic counter): a thread
  // that loses its core on a shared machine holds back only the block it is in, not a fixed share of
  // the rows (at::parallel_for splits its range statically). Merging the blocks' top-k costs little.
  const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(threads * 16, (N + 4095) / 4096));
  const int64_t per = (N + nblocks - 1) / nblocks;
  std::vector<std::vector<std::vector<Cand>>> part(nblocks, std::vector<std::vector<Cand>>(nq));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, nblocks), 1, [&](int64_t, int64_t) {
    constexpr int64_t kRows = 256;
    float scores[kFusedMaxQueries * kRows];
    for (int64_t blk = next++; blk < nblocks; blk = next++) {
      const int64_t r0 = blk * per, r1 = std::min(N, r0 + per);
      std::vector<TopK> top;
      for (int64_t i = 0; i < nq; ++i) top.emplace_back(k);
      for (int64_t s0 = r0; s0 < r1; s0 += kRows) {
        const int64_t n = std::min(kRows, r1 - s0);
        if (fs.dtype == StoreDtype::f16) dot_rows_any(fs.f16() + s0 * D, n, D, q, nq, scores, kRows);
        else dot_rows_any(fs.f32() + s0 * D, n, D, q, nq, scores, kRows);
        for (int64_t i = 0; i < nq; ++i) {
          const float* sc = scores + i * kRows;
          TopK& t = top[i];
          for (int64_t j = 0; j < n; ++j)
            if (t.wants(sc[j]) && s0 + j != self_row[i]) t.push(sc[j], s0 + j);
        }
      }
      for (int64_t i = 0; i < nq; ++i) part[blk][i] = std::move(top[i].v);
    }
  });
  std::vector<std::vector<Cand>> best(nq);
  for (int64_t i = 0; i < nq; ++i) {
    auto& b = best[i];
    for (int64_t blk = 0; blk < nblocks; ++blk) b.insert(b.end(), part[blk][i].begin(), part[blk][i].end());
    const size_t keep = std::min<size_t>(b.size(), k);
    std::partial_sort(b.begin(), b.begin() + keep, b.end(), better);
    b.resize(keep);
  }
  return best;
}

}  // namespace

at::Tensor feature_rows(const FeatureSet& fs, int64_t begin, int64_t end) {
  if (begin < 0 || end > fs.size() || begin > end)
    throw UsageError(fmt::format("feature_rows: range [{}, {}) outside 0..{}", begin, end, fs.size()));
  const int64_t n = end - begin;
  if (n == 0) return at::empty({0, fs.dim}, at::kFloat);
  if (fs.dtype == StoreDtype::f32) {
    auto owner = fs.owner;  // the tensor keeps the mapping (or buffer) alive
    return at::from_blob(const_cast<float*>(fs.f32() + begin * fs.dim), {n, fs.dim}, [owner](void*) {},
                         at::TensorOptions().dtype(at::kFloat));
  }
  at::Tensor t = at::empty({n, fs.dim}, at::kFloat);
  fs.copy_rows(begin, end, t.data_ptr<float>());
  return t;
}

void score_rows(const FeatureSet& fs, const float* q, const std::vector<int64_t>& rows, float* out) {
  const int64_t D = fs.dim;
  const int64_t row_bytes = D * static_cast<int64_t>(dtype_size(fs.dtype));
  constexpr size_t kAheadRows = 4;  // rows in any order: prefetch the rows a few places ahead in the list
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    if (i + kAheadRows < rows.size()) {
      const char* nx = static_cast<const char*>(fs.data) + rows[i + kAheadRows] * row_bytes;
      for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(nx + o, _MM_HINT_T0);
    }
    if (have_avx2_f16c()) {
      if (fs.dtype == StoreDtype::f16) dot_rows_any(fs.f16() + r * D, 1, D, q, 1, out + i, 1, false);
      else dot_rows_any(fs.f32() + r * D, 1, D, q, 1, out + i, 1, false);
    } else {
      std::vector<float> v = fs.row(r);
      float s = 0;
      for (int64_t j = 0; j < D; ++j) s += v[j] * q[j];
      out[i] = s;
    }
  }
}

at::Tensor feature_tensor(const FeatureSet& fs) { return feature_rows(fs, 0, fs.size()); }

std::vector<std::vector<Hit>> search(const at::Tensor& queries, const FeatureSet& fs, int k, float threshold,
                                     const std::vector<int64_t>* exclude_ids, int64_t rows_per_chunk) {
  if (k < 1) throw UsageError(fmt::format("top-k must be at least 1 (got {})", k));
  if (queries.dim() != 2 || queries.size(1) != fs.dim)
    throw UsageError(fmt::format("search: queries have shape {}, expected [Q, {}] to match the features{}",
                                 fmt::join(queries.sizes(), "x"), fs.dim, fs.path.empty() ? "" : " of '" + fs.path + "'"));
  const int64_t Q = queries.size(0), N = fs.size();
  if (exclude_ids && static_cast<int64_t>(exclude_ids->size()) != Q)
    throw UsageError(fmt::format("search: {} exclude ids for {} queries", exclude_ids->size(), Q));
  std::vector<std::vector<Hit>> out(Q);
  if (Q == 0 || N == 0) return out;

  c10::InferenceMode guard;
  at::Tensor q = queries.to(at::kCPU, at::kFloat).contiguous();
  if (!at::isfinite(q).all().item<bool>()) throw DataError("search: a query vector has a NaN or infinite value");

  std::vector<int64_t> self_row(Q, -1);
  if (exclude_ids)
    for (int64_t i = 0; i < Q; ++i) self_row[i] = fs.find((*exclude_ids)[i]);

  advise_sequential(fs);
  // A few queries: one fused streaming pass over all threads, keeping top-k as it goes.
  if (Q <= kFusedMaxQueries && have_avx2_f16c() && rows_per_chunk == 0) {
    auto best = fused_scan(fs, q.data_ptr<float>(), Q, k, self_row);
    for (int64_t i = 0; i < Q; ++i)
      for (const Cand& c : best[i])
        if (c.score >= threshold) out[i].push_back({fs.ids[c.row], c.score, c.row});
    return out;
  }
  const int64_t qb = std::min(Q, kQueryBlock);
  // Otherwise matrix products over float32 rows (or, with an explicit chunk size, the chunked fused pass).
  const bool fused = Q <= kFusedMaxQueries && have_avx2_f16c();
  int64_t chunk = rows_per_chunk;
  if (chunk <= 0) {
    chunk = kScoreBudget / qb;
    if (fs.dtype != StoreDtype::f32 && !fused) chunk = std::min(chunk, kConvertBudget / fs.dim);
    chunk = std::max<int64_t>(chunk, 256);
  }
  chunk = std::min(chunk, N);

  std::vector<std::vector<Cand>> best(Q);
  std::vector<Cand> cands;
  // float16 rows are widened into one reused buffer (no fresh pages per chunk). F16C converts far
  // faster than memory delivers, so one thread does it: another parallel region per chunk costs more.
  at::Tensor wide = fs.dtype == StoreDtype::f32 || fused ? at::Tensor() : at::empty({chunk, fs.dim}, at::kFloat);
  for (int64_t c0 = 0; c0 < N; c0 += chunk) {
    const int64_t c1 = std::min(N, c0 + chunk), C = c1 - c0;
    at::Tensor g;  // the chunk as float32, for the matrix products
    if (!fused && fs.dtype == StoreDtype::f32) {
      g = feature_rows(fs, c0, c1);
    } else if (!fused) {
      g = wide.narrow(0, 0, C);
      fs.copy_rows(c0, c1, g.data_ptr<float>());
    }
    // at::topk picks an arbitrary subset of values tied at the k-th place (later rows, in practice).
    // Taking k+1 shows whether the k-th score is tied with the next one; only then is a full scan of
    // that row needed to pick the earliest rows among the tied ones.
    const int64_t kt = std::min<int64_t>(k + 1, C);
    for (int64_t q0 = 0; q0 < Q; q0 += qb) {
      const int64_t nq = std::min(qb, Q - q0);
      at::Tensor s;  // [nq, C] scores
      if (fused) {
        s = at::empty({nq, C}, at::kFloat);
        float* sp = s.data_ptr<float>();
        const float* qp = q.data_ptr<float>() + q0 * fs.dim;
        at::parallel_for(0, C, 2048, [&](int64_t b, int64_t e) {
          if (fs.dtype == StoreDtype::f16) dot_rows_any(fs.f16() + (c0 + b) * fs.dim, e - b, fs.dim, qp, nq, sp + b, C);
          else dot_rows_any(fs.f32() + (c0 + b) * fs.dim, e - b, fs.dim, qp, nq, sp + b, C);
        });
      } else {
        s = at::mm(q.narrow(0, q0, nq), g.t());
      }
      auto sa = s.accessor<float, 2>();
      for (int64_t i = 0; i < nq; ++i) {
        int64_t r = self_row[q0 + i];
        if (r >= c0 && r < c1) sa[i][r - c0] = -std::numeric_limits<float>::infinity();
      }
      auto top = at::topk(s, kt, 1, /*largest=*/true, /*sorted=*/true);
      auto va = std::get<0>(top).accessor<float, 2>();
      auto ia = std::get<1>(top).accessor<int64_t, 2>();
      for (int64_t i = 0; i < nq; ++i) {
        cands.clear();
        if (kt <= k || va[i][k - 1] > va[i][k]) {
          for (int64_t j = 0; j < std::min<int64_t>(k, kt); ++j) cands.push_back({va[i][j], c0 + ia[i][j]});
        } else {
          const float kth = va[i][k - 1];
          for (int64_t j = 0; j < C; ++j)
            if (sa[i][j] >= kth) cands.push_back({sa[i][j], c0 + j});
        }
        auto& b = best[q0 + i];
        b.insert(b.end(), cands.begin(), cands.end());
        const size_t keep = std::min<size_t>(b.size(), k);
        std::partial_sort(b.begin(), b.begin() + keep, b.end(), better);
        b.resize(keep);
      }
    }
  }

  for (int64_t i = 0; i < Q; ++i) {
    for (const Cand& c : best[i]) {
      if (c.row == self_row[i] || c.score < threshold) continue;
      out[i].push_back({fs.ids[c.row], c.score, c.row});
    }
  }
  return out;
}

Predictions topk_predictions(const FeatureSet& queries, const FeatureSet& gallery, int k) {
  if (queries.dim != gallery.dim)
    throw DataError(fmt::format("features of '{}' have dim {} but those of '{}' have dim {}: they come from different models",
                                queries.path, queries.dim, gallery.path, gallery.dim));
  Predictions p;
  p.query_kind = queries.meta.kind;
  p.queries = queries.ids;
  // Bounded memory for float16 query sets: convert and search a block of queries at a time.
  const int64_t block = queries.dtype == StoreDtype::f32 ? std::max<int64_t>(queries.size(), 1) : 8192;
  for (int64_t b = 0; b < queries.size(); b += block) {
    const int64_t e = std::min(queries.size(), b + block);
    auto hits = search(feature_rows(queries, b, e), gallery, k);
    for (int64_t i = b; i < e; ++i) {
      auto& ids = p.ranked[queries.ids[i]];
      for (const Hit& h : hits[i - b]) ids.push_back(h.id);
    }
  }
  return p;
}

}  // namespace clip
