// Approximate nearest-neighbour search through faiss (Debian's libfaiss-dev), optional at build time
// (CLIP_HAVE_FAISS). An index file STORE.ann sits beside the store it was built from: a sidecar
// (sidecar.h) whose header records the faiss factory string, the metric (inner product) and the
// store's identity, followed by the faiss index serialised by faiss::write_index. Its labels are the
// store's row numbers. It is opened only after the header matches the store (rows, dim, ids, sampled
// values); a stale or foreign file is refused with the remedy (rebuild with clip-index --ann).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clip/retrieval/store.h"

namespace clip {

bool have_faiss();                                     // this build links faiss
std::string ann_path(const std::string& store_path);  // store_path + ".ann"

struct AnnParams {
  int nprobe = 0;  // IVF lists visited per query (0 = the index file's default, recorded when built)
  int ef = 0;      // HNSW efSearch (0 = default)
};

struct AnnBuildOptions {
  std::string factory;        // faiss index_factory string, e.g. "IVF1024,SQ8", "HNSW32", "IVF4096,PQ64"
  int64_t max_train = 100000; // rows (evenly spaced over the store) used to train it
};

// Trains the index on the store's rows, adds every row, writes `path` atomically. Returns the seconds
// spent. UsageError for a factory faiss rejects (or a build without faiss).
double build_ann(const FeatureSet& fs, const AnnBuildOptions& opt, const std::string& path);

// After rows were appended to the store (its first `old_rows` rows unchanged; `fs` is the store as it
// is now): adds the new rows to the index and rewrites it. DataError with the remedy when the index
// does not belong to the old store.
void extend_ann(const std::string& path, const FeatureSet& old_store, const FeatureSet& fs);

// The index at `from_path` (built for `from_store`) carried over to `to_store`, whose first
// from_store.size() rows are from_store's rows, unchanged and in order (a merge without replaced
// rows): the remaining rows are added and the result is written to `to_path` (which may be
// from_path). DataError with the remedy when the index does not belong to from_store or the ids of
// the leading rows differ.
void carry_ann(const std::string& from_path, const FeatureSet& from_store, const FeatureSet& to_store,
               const std::string& to_path);

// The factory string recorded in an index file (empty when it is not readable as one).
std::string ann_factory_of(const std::string& path);

class AnnIndex {
 public:
  // Reads and validates `path` against `fs`; applies `p` (nprobe/ef).
  static std::unique_ptr<AnnIndex> open(const std::string& path, const FeatureSet& fs, const AnnParams& p);
  ~AnnIndex();
  // Up to n candidate rows per query, the index's best first (missing results dropped).
  std::vector<std::vector<int64_t>> candidates(const float* q, int64_t nq, int64_t n) const;
  const std::string& factory() const;
  const std::string& path() const;

 private:
  AnnIndex();
  struct Impl;
  std::unique_ptr<Impl> im_;
};

}  // namespace clip
