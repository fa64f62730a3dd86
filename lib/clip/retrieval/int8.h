// int8 scan file STORE.i8 beside a float store (clip-index --dtype i8): every value quantised to int8,
// with one scale per row (max |x| of the row / 127, the default) or one scale per dimension (max |x| of
// the column over all rows / 127, --i8-scale dim). A query scans the int8 rows (a quarter of float32's
// bytes, half of float16's) for its best candidates, which are then re-scored exactly from the float
// store, so the scores returned are exact and only the choice of candidates is approximate. Sidecar
// format (sidecar.h): magic "CLIPI8", version 1, header "scale": "per_vector" or "per_dimension",
// payload = rows x dim int8 codes, then the float32 scales (rows of them, or dim of them).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clip/retrieval/store.h"

namespace clip {

std::string int8_path(const std::string& store_path);  // store_path + ".i8"

enum class Int8Scale { per_vector, per_dimension };
Int8Scale parse_int8_scale(const std::string& s);  // "row" / "vector" or "dim" / "dimension"; UsageError otherwise
const char* int8_scale_name(Int8Scale s);          // "per_vector" / "per_dimension" (the header's value)

// Quantises every row of the store and writes `path` atomically.
void build_int8(const FeatureSet& fs, const std::string& path, Int8Scale scale = Int8Scale::per_vector);
// The scale kind an existing scan file was built with (to rebuild it alike); per_vector when unreadable.
Int8Scale int8_scale_of(const std::string& path);

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
  Int8Scale scale() const { return scale_; }

 private:
  Int8Index() = default;
  std::shared_ptr<const void> map_;
  const int8_t* codes_ = nullptr;
  const float* scales_ = nullptr;  // rows of them (per_vector) or dim of them (per_dimension)
  Int8Scale scale_ = Int8Scale::per_vector;
  int64_t rows_ = 0, dim_ = 0;
  std::string path_;
};

}  // namespace clip
