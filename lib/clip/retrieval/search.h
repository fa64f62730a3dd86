// Exact top-K search by inner product over a FeatureSet (a mapped store or JSONL features). With
// L2-normalised rows the score is the cosine similarity.
//
// The store is scanned once per call, in chunks of rows, each followed by a partial top-K. Up to 4
// queries are scored in one streaming pass over the rows (memory-bound: AVX2, float16 widened in
// registers); more are scored by one matrix product per chunk (zero copy for float32 stores; float16
// chunks widened into a reused buffer, so memory stays bounded). Ordering is deterministic and matches cn_clip's
// make_topk_predictions.py (Python's stable sort on the score): higher score first, and among equal
// scores the lower row of the store first.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "clip/retrieval/metrics.h"
#include "clip/retrieval/store.h"

namespace clip {

struct Hit {
  int64_t id = 0;     // the store's id of the row
  float score = 0.f;  // inner product with the query
  int64_t row = -1;   // row index inside the FeatureSet
};

// queries: [Q, D] (any floating dtype, CPU; converted to contiguous float32), D == fs.dim.
// Returns Q lists of at most k hits, best first. Hits scoring below `threshold` are dropped. When
// exclude_ids is given (size Q), the row whose id equals exclude_ids[q] is never returned for query q
// ("exclude self": the other rows still fill the k places). rows_per_chunk = 0 picks a chunk size that
// keeps the score block near 128 MiB. Throws UsageError for k < 1 or a shape mismatch.
std::vector<std::vector<Hit>> search(const at::Tensor& queries, const FeatureSet& fs, int k,
                                     float threshold = -std::numeric_limits<float>::infinity(),
                                     const std::vector<int64_t>* exclude_ids = nullptr, int64_t rows_per_chunk = 0);

// Exact scores of the given rows for one float32 query (dim fs.dim), computed exactly as the
// streaming search computes them (the same kernel, the same rounding): re-scoring candidates of an
// approximate or int8 search gives the scores an exact search would report.
void score_rows(const FeatureSet& fs, const float* q, const std::vector<int64_t>& rows, float* out);

// The whole FeatureSet as a [N, D] float32 tensor: zero copy for float32 (the tensor keeps the mapping
// alive), a converted copy for float16.
at::Tensor feature_tensor(const FeatureSet& fs);
// Rows [begin, end) as float32 (a view for float32 data, a converted copy for float16).
at::Tensor feature_rows(const FeatureSet& fs, int64_t begin, int64_t end);

// cn_clip's make_topk_predictions.py (text queries) / make_topk_predictions_tr.py (image queries): the
// top-k gallery ids for every query row, queries in their file order. query_kind = queries.meta.kind.
Predictions topk_predictions(const FeatureSet& queries, const FeatureSet& gallery, int k = 10);

}  // namespace clip
