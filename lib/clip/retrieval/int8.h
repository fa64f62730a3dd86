// int8 scan file STORE.i8 beside a float store (clip-index --dtype i8): every row quantised to int8
// with its own scale (max |x| / 127). A query scans the int8 rows (a quarter of float32's bytes, half
// of float16's) for its best candidates, which are then re-scored exactly from the float store, so the
// scores returned are exact and only the choice of candidates is approximate. Sidecar format
// (sidecar.h): magic "CLIPI8", version 1, payload = rows x dim int8 codes, then rows float32 scales.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clip/retrieval/store.h"

namespace clip {

std::string int8_path(const std::string& store_path);  // store_path + ".i8"

// Quantises every row of the store and writes `path` atomically.
void build_int8(const FeatureSet& fs, const std::string& path);

class Int8Index {
 public:
  // Maps and validates `path` against the store (rows, dim, ids, sampled values).
  static std::unique_ptr<Int8Index> open(const std::string& path, const FeatureSet& fs);
  ~Int8Index();
  // Up to n rows per query with the best int8 scores, best first (all threads). exclude_row[i] >= 0 is
  // never returned for query i.
  std::vector<std::vector<int64_t>> candidates(const float* q, int64_t nq, int64_t n,
                                               const std::vector<int64_t>& exclude_row) const;
  const std::string& path() const;

 private:
  Int8Index() = default;
  std::shared_ptr<const void> map_;
  const int8_t* codes_ = nullptr;
  const float* scales_ = nullptr;
  int64_t rows_ = 0, dim_ = 0;
  std::string path_;
};

}  // namespace clip
