#include "clip/retrieval/device_search.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "clip/base/error.h"
#include "clip/model/tensor_torch.h"

namespace clip {

namespace {

bool better(const Hit& a, const Hit& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }

constexpr int64_t kUploadRows = int64_t(1) << 16;       // rows per host-to-device copy
constexpr int64_t kScoreElems = int64_t(256) << 20;     // elements of one [queries x rows] score block

}  // namespace

DeviceRows::DeviceRows(const FeatureSet& fs, const std::string& device) {
  c10::InferenceMode guard;
  at::Device dev(at::kCPU);
  try {
    dev = parse_device(device);
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("searching on '{}' (--search-device, default --device): {}", device, e.what()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t N = fs.size(), D = fs.dim;
  // float16 on an accelerator (half the memory and bandwidth; products accumulate in float32); float32
  // on the CPU, where float16 products are slow or missing.
  const at::ScalarType dt = dev.is_cpu() ? at::kFloat : at::kHalf;
  try {
    rows_ = at::empty({N, D}, at::TensorOptions().dtype(dt).device(dev));
  } catch (const c10::Error& e) {
    throw UsageError(fmt::format("'{}': {} rows of {} dims ({:.1f} GB) do not fit on {}: search it on the CPU "
                                    "(--device cpu), or split it into shards (clip-index --shard)",
                                    fs.path, N, D, double(N) * D * at::elementSize(dt) / 1e9, device));
  }
  at::Tensor norms = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(dev));
  for (int64_t b = 0; b < N; b += kUploadRows) {
    const int64_t e = std::min(N, b + kUploadRows);
    at::Tensor src;
    if (fs.dtype == StoreDtype::f16 && dt == at::kHalf) {
      src = at::from_blob(const_cast<uint16_t*>(fs.f16() + b * D), {e - b, D}, at::TensorOptions().dtype(at::kHalf));
    } else {
      src = feature_rows(fs, b, e);
    }
    at::Tensor dst = rows_.narrow(0, b, e - b);
    dst.copy_(src);
    norms = at::maximum(norms, dst.to(at::kFloat).norm(2, 1).max().reshape({1}));
  }
  max_norm_ = N ? norms.item<double>() : 0.0;
  // |device - exact| <= |q| |x| (u_q + u_x + D u_acc) + |score| u_out with u = 2^-11 for float16 (query,
  // rows, score rounding) and u_acc = 2^-24 (float32 accumulation); doubled for reduced-precision
  // reductions a library may use. On the CPU only the summation order differs (float32 throughout).
  const double u16 = std::ldexp(1.0, -11), u32 = std::ldexp(1.0, -24);
  rel_err_ = dt == at::kHalf ? 2.0 * (3.0 * u16 + D * u32) : 4.0 * D * u32;
  if (dev.is_cuda()) at::globalContext().setAllowFP16ReductionCuBLAS(false);
  upload_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t DeviceRows::bytes() const { return rows_.defined() ? rows_.numel() * rows_.element_size() : 0; }

std::string DeviceRows::device() const { return rows_.defined() ? rows_.device().str() : "none"; }

std::vector<std::vector<Hit>> DeviceRows::search(const FeatureSet& fs, const at::Tensor& queries, int k, float threshold,
                                                 const std::vector<int64_t>* exclude_ids) const {
  if (k < 1) throw UsageError(fmt::format("top-k must be at least 1 (got {})", k));
  if (queries.dim() != 2 || queries.size(1) != fs.dim)
    throw UsageError(fmt::format("search: queries have shape {}, expected [Q, {}] to match the features{}",
                                 fmt::join(queries.sizes(), "x"), fs.dim, fs.path.empty() ? "" : " of '" + fs.path + "'"));
  const int64_t Q = queries.size(0), N = fs.size();
  if (N != rows_.size(0)) throw UsageError("DeviceRows::search: not the feature set these rows were copied from");
  if (exclude_ids && static_cast<int64_t>(exclude_ids->size()) != Q)
    throw UsageError(fmt::format("search: {} exclude ids for {} queries", exclude_ids->size(), Q));
  std::vector<std::vector<Hit>> out(Q);
  if (Q == 0 || N == 0) return out;
  c10::InferenceMode guard;
  const at::Tensor q = queries.to(at::kCPU, at::kFloat).contiguous();
  if (!at::isfinite(q).all().item<bool>()) throw DataError("search: a query vector has a NaN or infinite value");
  const at::Tensor qnorm = q.norm(2, 1);
  const int64_t qb = std::max<int64_t>(1, std::min<int64_t>(Q, kScoreElems / N));
  std::vector<int64_t> rows;
  std::vector<float> exact;
  for (int64_t q0 = 0; q0 < Q; q0 += qb) {
    const int64_t nq = std::min(qb, Q - q0);
    const at::Tensor s = at::mm(q.narrow(0, q0, nq).to(rows_.device(), rows_.scalar_type()), rows_.t());  // [nq, N]
    int64_t m = std::min<int64_t>(N, k + margin_ + (exclude_ids ? 1 : 0));
    auto top = at::topk(s, m, 1, /*largest=*/true, /*sorted=*/true);
    at::Tensor vals = std::get<0>(top).to(at::kCPU, at::kFloat), idx = std::get<1>(top).to(at::kCPU);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t qi = q0 + i;
      const float* qp = q.data_ptr<float>() + qi * fs.dim;
      const int64_t self = exclude_ids ? fs.find((*exclude_ids)[qi]) : -1;
      const double err = rel_err_ * qnorm[qi].item<double>() * max_norm_;
      int64_t mi = m;
      at::Tensor v = vals[i], ix = idx[i];
      for (;;) {
        const int64_t* ip = ix.data_ptr<int64_t>();
        rows.clear();
        for (int64_t j = 0; j < mi; ++j)
          if (ip[j] != self) rows.push_back(ip[j]);
        exact.resize(rows.size());
        score_rows(fs, qp, rows, exact.data());
        auto& h = out[qi];
        h.clear();
        for (size_t j = 0; j < rows.size(); ++j)
          if (exact[j] >= threshold) h.push_back({fs.ids[rows[j]], exact[j], rows[j]});
        const size_t keep = std::min<size_t>(h.size(), k);
        std::partial_sort(h.begin(), h.begin() + keep, h.end(), better);
        h.resize(keep);
        if (mi >= N) break;
        // Rows outside the list scored at most the last candidate on the device: their exact score is at
        // most that plus the bound. They cannot enter once that is below the k-th exact score (or the
        // threshold when fewer than k hits pass it).
        const double outside = v.data_ptr<float>()[mi - 1] + err;
        const double floor = h.size() == static_cast<size_t>(k) ? h.back().score : threshold;
        if (outside < floor) break;
        mi = std::min<int64_t>(N, 2 * mi);
        ++widenings_;
        auto t = at::topk(s[i], mi, 0, true, true);
        v = std::get<0>(t).to(at::kCPU, at::kFloat);
        ix = std::get<1>(t).to(at::kCPU).contiguous();
      }
    }
  }
  return out;
}

}  // namespace clip
