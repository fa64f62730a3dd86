// Exact search with a store's rows held on an accelerator (clip-query / clip-serve --device cuda).
//
// The rows are copied once to the device in float16 (float32 stores are rounded on the way; float16
// stores are copied as they are). A batch of queries is scored by one matrix product per block of
// queries, and the best candidates of each query (a device top-k) are re-scored on the CPU from the
// store with the exact scan's kernel (search.h score_rows). The candidate list is widened until it
// provably holds the exact top k: every row left out scored at most the last candidate's device
// score, and a device score is within a bound of the exact one (float16 rounding of the query, the
// row and the score, float32 accumulation), so once the last candidate's device score plus that
// bound is below the k-th exact score, no row left out can enter the list. The result is therefore
// the exact search's: the same rows, scores and order (ties: the lower row first), not an
// approximation.
//
// On the CPU (device "cpu") the same algorithm runs over float32 rows with at::mm: it is how the
// tests exercise the candidate widening without a GPU.
#pragma once
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"

namespace clip {

class DeviceRows {
 public:
  // Copies the rows of `fs` to `device` ("cuda", "cuda:N", or "cpu"). Throws UsageError for a device
  // this build cannot use, UsageError also when the rows do not fit in its memory.
  DeviceRows(const FeatureSet& fs, const std::string& device);

  // As search() in search.h over `fs` (the FeatureSet these rows were copied from).
  std::vector<std::vector<Hit>> search(const FeatureSet& fs, const at::Tensor& queries, int k, float threshold,
                                       const std::vector<int64_t>* exclude_ids) const;

  int64_t bytes() const;          // device memory the rows take
  double upload_seconds() const { return upload_s_; }
  std::string device() const;
  // Extra candidates fetched beyond k on the first try (tests set 0 to force widening).
  void set_initial_margin(int64_t m) { margin_ = m; }
  // Candidate lists widened so far (for tests and logs).
  int64_t widenings() const { return widenings_; }

 private:
  at::Tensor rows_;       // [N, D] on the device
  double max_norm_ = 0;   // largest row norm
  double rel_err_ = 0;    // bound on |device score - exact score| / (|q| * max_norm)
  double upload_s_ = 0;
  int64_t margin_ = 32;
  mutable std::atomic<int64_t> widenings_{0};
};

}  // namespace clip
