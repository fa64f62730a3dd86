// What a query searches: one or several feature stores ("shards") searched as one, each exactly or
// through the files beside it (an approximate faiss index STORE.ann, an int8 scan file STORE.i8).
//
// Shards: their top-k lists are merged under the exact search's order (higher score first, then the
// earlier row of the shards taken in the order given), so searching shards a, b equals searching the
// store a ∪ b written in that order. Ids must be unique across shards and the shards must hold the
// same kind of features of the same dim and model (checked when opening, DataError otherwise).
// Approximate and int8 candidates are re-scored exactly (search.h score_rows), so every hit carries
// the score exact search would give it; only which rows make the list can differ.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "clip/retrieval/ann.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"

namespace clip {

class Int8Index;
class DeviceRows;

struct SearchOptions {
  bool exact = false;      // ignore STORE.ann / STORE.i8 and scan the float rows
  AnnParams ann;           // --nprobe / --ef
  int64_t candidates = 0;  // rows re-scored per query from an approximate or int8 search (0 = max(4k, 64))
  // "cpu" (or empty), or an accelerator ("cuda", "cuda:N"): each store's rows are copied there once and
  // searched exactly by matrix products (device_search.h); approximate and int8 files are then not used.
  std::string device;
};

class Collection {
 public:
  // Opens every path (a store or cn_clip JSONL), and beside each store its STORE.ann (preferred) or
  // STORE.i8 when present and not `exact`. A sidecar that does not match its store is refused. With
  // so.device an accelerator, the rows of every shard are copied there instead (sidecars unused).
  static Collection open(const std::vector<std::string>& paths, const SearchOptions& so = {});
  // One feature set searched exactly.
  explicit Collection(FeatureSet fs);
  Collection(Collection&&) noexcept;
  Collection& operator=(Collection&&) noexcept;
  ~Collection();

  const std::vector<FeatureSet>& shards() const { return shards_; }
  const FeatureSet& front() const { return shards_.front(); }
  int64_t size() const;
  int64_t dim() const { return shards_.front().dim; }
  // "exact", "int8", "ann IVF1024,SQ8", "exact on cuda:0" ... per shard, joined (for logs and /api/info).
  std::string method() const;

  // As search() in search.h over the shards as one store; Hit.row is the row in that concatenation.
  std::vector<std::vector<Hit>> search(const at::Tensor& queries, int k,
                                       float threshold = -std::numeric_limits<float>::infinity(),
                                       const std::vector<int64_t>* exclude_ids = nullptr) const;

 private:
  Collection() = default;
  std::vector<FeatureSet> shards_;
  std::vector<int64_t> offsets_;
  std::vector<std::unique_ptr<AnnIndex>> ann_;
  std::vector<std::unique_ptr<Int8Index>> i8_;
  std::vector<std::unique_ptr<DeviceRows>> dev_;
  SearchOptions so_;
};

}  // namespace clip
