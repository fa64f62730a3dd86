#include "clip/retrieval/collection.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/retrieval/device_search.h"
#include "clip/retrieval/int8.h"

namespace clip {

namespace {
bool better(const Hit& a, const Hit& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }
}  // namespace

Collection::Collection(FeatureSet fs) {
  shards_.push_back(std::move(fs));
  offsets_.push_back(0);
  ann_.resize(1);
  i8_.resize(1);
  dev_.resize(1);
}
Collection::Collection(Collection&&) noexcept = default;
Collection& Collection::operator=(Collection&&) noexcept = default;
Collection::~Collection() = default;

int64_t Collection::size() const {
  int64_t n = 0;
  for (const auto& s : shards_) n += s.size();
  return n;
}

std::string Collection::method() const {
  std::string m;
  for (size_t i = 0; i < shards_.size(); ++i) {
    if (i) m += ", ";
    m += dev_[i] ? "exact on " + dev_[i]->device() : ann_[i] ? "ann " + ann_[i]->factory() : i8_[i] ? "int8" : "exact";
  }
  return m;
}

Collection Collection::open(const std::vector<std::string>& paths, const SearchOptions& so) {
  if (paths.empty()) throw UsageError("no feature store given (--index)");
  Collection c;
  c.so_ = so;
  std::unordered_map<int64_t, size_t> owner;
  int64_t offset = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    FeatureSet fs = read_features(paths[i]);
    if (i > 0) {
      const FeatureSet& a = c.shards_.front();
      if (fs.dim != a.dim)
        throw DataError(fmt::format("shard '{}' holds {}-d features, '{}' {}-d ones: they cannot be searched together",
                                    paths[i], fs.dim, paths[0], a.dim));
      if (fs.meta.kind != a.meta.kind)
        throw DataError(fmt::format("shard '{}' holds {} features, '{}' {} features", paths[i], fs.meta.kind, paths[0],
                                    a.meta.kind));
      if (fs.meta.weights_hash != a.meta.weights_hash)
        throw DataError(fmt::format("shard '{}' was built with weights {}, '{}' with {}: scores of different models are "
                                    "not comparable; re-index one of them with the other's checkpoint",
                                    paths[i], fs.meta.weights_hash, paths[0], a.meta.weights_hash));
    }
    if (paths.size() > 1) {
      owner.reserve(owner.size() + fs.ids.size());
      for (int64_t id : fs.ids) {
        auto [it, fresh] = owner.emplace(id, i);
        if (!fresh)
          throw DataError(fmt::format("id {} is in shard '{}' and in shard '{}': ids must be unique across shards "
                                      "(index the collections with disjoint ids, or merge them: clip-index --merge ... --replace)",
                                      id, paths[it->second], paths[i]));
      }
    }
    std::unique_ptr<AnnIndex> ann;
    std::unique_ptr<Int8Index> i8;
    std::unique_ptr<DeviceRows> dev;
    const bool on_device = !so.device.empty() && so.device != "cpu";
    if (on_device) {
      dev = std::make_unique<DeviceRows>(fs, so.device);
      log_info("{}: {} rows on {} ({:.0f} MB, copied in {:.2f} s), searched exactly", paths[i], fs.size(), dev->device(),
               dev->bytes() / 1e6, dev->upload_seconds());
      if (file_exists(ann_path(paths[i])) || file_exists(int8_path(paths[i])))
        log_info("{}: the approximate or int8 file beside it is not used on {}", paths[i], so.device);
    } else if (!so.exact && fs.format == "store") {
      if (file_exists(ann_path(paths[i]))) {
        ann = AnnIndex::open(ann_path(paths[i]), fs, so.ann);
        log_info("{}: approximate index {} ({})", paths[i], ann_path(paths[i]), ann->factory());
      } else if (file_exists(int8_path(paths[i]))) {
        i8 = Int8Index::open(int8_path(paths[i]), fs);
        log_info("{}: int8 scan file {}", paths[i], int8_path(paths[i]));
      }
    }
    if ((so.ann.nprobe > 0 || so.ann.ef > 0) && !ann && !so.exact && !on_device)
      log_warn("--nprobe/--ef given but '{}' has no approximate index beside it ({}): searching it exactly", paths[i],
               ann_path(paths[i]));
    c.offsets_.push_back(offset);
    offset += fs.size();
    c.shards_.push_back(std::move(fs));
    c.ann_.push_back(std::move(ann));
    c.i8_.push_back(std::move(i8));
    c.dev_.push_back(std::move(dev));
  }
  return c;
}

std::vector<std::vector<Hit>> Collection::search(const at::Tensor& queries, int k, float threshold,
                                                 const std::vector<int64_t>* exclude_ids) const {
  if (k < 1) throw UsageError(fmt::format("top-k must be at least 1 (got {})", k));
  const int64_t Q = queries.dim() == 2 ? queries.size(0) : 0;
  std::vector<std::vector<Hit>> out(Q);
  c10::InferenceMode guard;
  at::Tensor q;
  for (size_t s = 0; s < shards_.size(); ++s) {
    const FeatureSet& fs = shards_[s];
    std::vector<std::vector<Hit>> hits;
    if (dev_[s]) {
      hits = dev_[s]->search(fs, queries, k, threshold, exclude_ids);
    } else if (!ann_[s] && !i8_[s]) {
      hits = clip::search(queries, fs, k, threshold, exclude_ids);
    } else {
      if (queries.dim() != 2 || queries.size(1) != fs.dim)
        throw UsageError(fmt::format("search: queries do not match the {}-d features of '{}'", fs.dim, fs.path));
      if (!q.defined()) q = queries.to(at::kCPU, at::kFloat).contiguous();
      const float* qp = q.data_ptr<float>();
      std::vector<int64_t> self(Q, -1);
      if (exclude_ids)
        for (int64_t i = 0; i < Q; ++i) self[i] = fs.find((*exclude_ids)[i]);
      const int64_t n = so_.candidates > 0 ? std::max<int64_t>(so_.candidates, k) : std::max<int64_t>(4 * k, 64);
      auto cand = ann_[s] ? ann_[s]->candidates(qp, Q, n + 1) : i8_[s]->candidates(qp, Q, n, self);
      hits.resize(Q);
      for (int64_t i = 0; i < Q; ++i) {
        std::vector<int64_t> rows;
        for (int64_t r : cand[i])
          if (r != self[i]) rows.push_back(r);
        std::vector<float> sc(rows.size());
        score_rows(fs, qp + i * fs.dim, rows, sc.data());
        auto& h = hits[i];
        for (size_t j = 0; j < rows.size(); ++j)
          if (sc[j] >= threshold) h.push_back({fs.ids[rows[j]], sc[j], rows[j]});
        const size_t keep = std::min<size_t>(h.size(), k);
        std::partial_sort(h.begin(), h.begin() + keep, h.end(), better);
        h.resize(keep);
      }
    }
    if (shards_.size() == 1) return hits;
    for (int64_t i = 0; i < Q; ++i)
      for (Hit h : hits[i]) {
        h.row += offsets_[s];
        out[i].push_back(h);
      }
  }
  for (auto& h : out) {
    const size_t keep = std::min<size_t>(h.size(), k);
    std::partial_sort(h.begin(), h.begin() + keep, h.end(), better);
    h.resize(keep);
  }
  return out;
}

}  // namespace clip
