#include "clip/retrieval/int8.h"

#include "clip/base/cpu.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/retrieval/sidecar.h"

namespace clip {

namespace {
constexpr char kI8Magic[8] = {'C', 'L', 'I', 'P', 'I', '8', '\0', '\0'};
constexpr uint32_t kI8Version = 1;
const char* const kWhat = "int8 scan file";

std::string remedy(const std::string& store) {
  return fmt::format("rebuild it with clip-index --dtype i8 for '{}' (or delete it, or pass --exact)", store);
}

struct Cand {
  float score;
  int64_t row;
};
bool better(const Cand& a, const Cand& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }

bool have_avx2() { return cpu_features().avx2 && cpu_features().fma; }

__attribute__((target("avx2,fma"))) float dot_i8_avx2(const int8_t* x, const float* q, int64_t dim) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= dim; j += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j));
    const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
    a0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(q + j), a0);
    a1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(q + j + 8), a1);
  }
  const __m256 a = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_hadd_ps(h, h);
  h = _mm_hadd_ps(h, h);
  float s = _mm_cvtss_f32(h);
  for (; j < dim; ++j) s += x[j] * q[j];
  return s;
}

float dot_i8(const int8_t* x, const float* q, int64_t dim) {
  if (have_avx2()) return dot_i8_avx2(x, q, dim);
  float s = 0;
  for (int64_t j = 0; j < dim; ++j) s += x[j] * q[j];
  return s;
}
}  // namespace

std::string int8_path(const std::string& store_path) { return store_path + ".i8"; }

Int8Scale parse_int8_scale(const std::string& s) {
  if (s == "row" || s == "vector" || s == "per_vector") return Int8Scale::per_vector;
  if (s == "dim" || s == "dimension" || s == "per_dimension") return Int8Scale::per_dimension;
  throw UsageError(fmt::format("unknown int8 scale '{}' (expected row or dim)", s));
}

const char* int8_scale_name(Int8Scale s) { return s == Int8Scale::per_dimension ? "per_dimension" : "per_vector"; }

void build_int8(const FeatureSet& fs, const std::string& path, Int8Scale scale_kind) {
  const int64_t N = fs.size(), D = fs.dim;
  const bool per_dim = scale_kind == Int8Scale::per_dimension;
  const int64_t nscales = per_dim ? D : N;
  std::string payload(static_cast<size_t>(N * D) + static_cast<size_t>(nscales) * sizeof(float), '\0');
  int8_t* codes = reinterpret_cast<int8_t*>(payload.data());
  float* scales = reinterpret_cast<float*>(payload.data() + N * D);
  std::vector<float> dim_scale(static_cast<size_t>(D), 1.f);
  if (per_dim) {
    // max |x| of every column, one pass over the store (per-block maxima merged).
    std::vector<std::vector<float>> part;
    std::mutex m;
    at::parallel_for(0, N, 16384, [&](int64_t b, int64_t e) {
      std::vector<float> mx(static_cast<size_t>(D), 0.f), row(static_cast<size_t>(D));
      for (int64_t r = b; r < e; ++r) {
        fs.copy_rows(r, r + 1, row.data());
        for (int64_t j = 0; j < D; ++j) mx[j] = std::max(mx[j], std::abs(row[j]));
      }
      std::lock_guard<std::mutex> lock(m);
      part.push_back(std::move(mx));
    });
    std::vector<float> mx(static_cast<size_t>(D), 0.f);
    for (const auto& p : part)
      for (int64_t j = 0; j < D; ++j) mx[j] = std::max(mx[j], p[j]);
    for (int64_t j = 0; j < D; ++j) dim_scale[j] = mx[j] > 0 ? mx[j] / 127.f : 1.f;
    std::memcpy(scales, dim_scale.data(), static_cast<size_t>(D) * sizeof(float));
  }
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    std::vector<float> row(D);
    for (int64_t r = b; r < e; ++r) {
      fs.copy_rows(r, r + 1, row.data());
      if (per_dim) {
        for (int64_t j = 0; j < D; ++j)
          codes[r * D + j] = static_cast<int8_t>(std::lrint(std::clamp(row[j] / dim_scale[j], -127.f, 127.f)));
        continue;
      }
      float m = 0;
      for (float v : row) m = std::max(m, std::abs(v));
      const float scale = m > 0 ? m / 127.f : 1.f;
      for (int64_t j = 0; j < D; ++j)
        codes[r * D + j] = static_cast<int8_t>(std::lrint(std::clamp(row[j] / scale, -127.f, 127.f)));
      std::memcpy(scales + r, &scale, sizeof scale);
    }
  });
  nlohmann::json h = {{"scale", int8_scale_name(scale_kind)}, {"store", identity_json(store_identity(fs))},
                      {"payload_size", payload.size()}};
  write_sidecar(path, kI8Magic, kI8Version, h, payload.data(), payload.size());
  log_info("wrote int8 scan file {} ({} rows, one scale per {})", path, N, per_dim ? "dimension" : "row");
}

Int8Scale int8_scale_of(const std::string& path) {
  try {
    Sidecar sc = read_sidecar(path, kI8Magic, kI8Version, kWhat, "");
    return sc.header.value("scale", "per_vector") == "per_dimension" ? Int8Scale::per_dimension : Int8Scale::per_vector;
  } catch (const Error&) {
    return Int8Scale::per_vector;
  }
}

std::unique_ptr<Int8Index> Int8Index::open(const std::string& path, const FeatureSet& fs) {
  Sidecar sc = read_sidecar(path, kI8Magic, kI8Version, kWhat, remedy(fs.path));
  check_identity(sc.header.value("store", nlohmann::json()), fs, path, kWhat, remedy(fs.path));
  const std::string kind = sc.header.value("scale", "per_vector");
  if (kind != "per_vector" && kind != "per_dimension")
    throw DataError(fmt::format("{} '{}': unknown scale kind '{}' (a newer version wrote it?); {}", kWhat, path, kind,
                                remedy(fs.path)));
  const bool per_dim = kind == "per_dimension";
  const uint64_t want =
      static_cast<uint64_t>(fs.size()) * fs.dim + static_cast<uint64_t>(per_dim ? fs.dim : fs.size()) * sizeof(float);
  if (sc.payload_size != want)
    throw DataError(fmt::format("{} '{}': payload of {} bytes, {} expected for {} rows of dim {}; {}", kWhat, path,
                                sc.payload_size, want, fs.size(), fs.dim, remedy(fs.path)));
  auto map = std::make_shared<MappedFile>(path);
  std::unique_ptr<Int8Index> x(new Int8Index());
  x->codes_ = reinterpret_cast<const int8_t*>(map->data() + sc.payload_offset);
  x->scales_ = reinterpret_cast<const float*>(map->data() + sc.payload_offset + fs.size() * fs.dim);
  x->scale_ = per_dim ? Int8Scale::per_dimension : Int8Scale::per_vector;
  x->map_ = map;
  x->rows_ = fs.size();
  x->dim_ = fs.dim;
  x->path_ = path;
  return x;
}

Int8Index::~Int8Index() = default;
const std::string& Int8Index::path() const { return path_; }

std::vector<std::vector<int64_t>> Int8Index::candidates(const float* q, int64_t nq, int64_t n,
                                                        const std::vector<int64_t>& exclude_row) const {
  const int64_t N = rows_, D = dim_;
  n = std::min(n, N);
  const int64_t threads = std::max(1, at::get_num_threads());
  // Blocks handed out one at a time, as in the exact scan (search.cpp fused_scan).
  const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(threads * 16, (N + 4095) / 4096));
  const int64_t per = (N + nblocks - 1) / nblocks;
  std::vector<std::vector<std::vector<Cand>>> part(nblocks, std::vector<std::vector<Cand>>(nq));
  // One scale per dimension: folded into the query once (score = sum_j code_j * (scale_j * q_j)).
  const bool per_dim = scale_ == Int8Scale::per_dimension;
  std::vector<float> qs;
  if (per_dim) {
    qs.resize(static_cast<size_t>(nq * D));
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t j = 0; j < D; ++j) {
        float sc;
        std::memcpy(&sc, scales_ + j, sizeof sc);
        qs[i * D + j] = q[i * D + j] * sc;
      }
    q = qs.data();
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, nblocks), 1, [&](int64_t, int64_t) {
    for (int64_t blk = next++; blk < nblocks; blk = next++) {
      const int64_t r0 = blk * per, r1 = std::min(N, r0 + per);
      for (int64_t i = 0; i < nq; ++i) {
        auto& h = part[blk][i];
        h.reserve(n + 1);
        for (int64_t r = r0; r < r1; ++r) {
          float sc = 1.f;
          if (!per_dim) std::memcpy(&sc, scales_ + r, sizeof sc);
          const float s = sc * dot_i8(codes_ + r * D, q + i * D, D);
          if ((static_cast<int64_t>(h.size()) >= n && !(s > h.front().score)) || r == exclude_row[i]) continue;
          if (static_cast<int64_t>(h.size()) >= n) {
            std::pop_heap(h.begin(), h.end(), better);
            h.back() = {s, r};
          } else {
            h.push_back({s, r});
          }
          std::push_heap(h.begin(), h.end(), better);
        }
      }
    }
  });
  std::vector<std::vector<int64_t>> out(nq);
  for (int64_t i = 0; i < nq; ++i) {
    std::vector<Cand> all;
    for (int64_t blk = 0; blk < nblocks; ++blk) all.insert(all.end(), part[blk][i].begin(), part[blk][i].end());
    const size_t keep = std::min<size_t>(all.size(), n);
    std::partial_sort(all.begin(), all.begin() + keep, all.end(), better);
    for (size_t j = 0; j < keep; ++j) out[i].push_back(all[j].row);
  }
  return out;
}

}  // namespace clip
