// Inputs shared by the training benchmarks (bench_train, bench_precision) and mirrored by
// bench_train_python.py.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace clip::bench {

// [CLS] + 12..41 tokens + [SEP], zero padded; the Python script makes the same ids.
inline at::Tensor bench_ids(int64_t n, int64_t ctx, int64_t vocab) {
  auto ids = at::zeros({n, ctx}, at::kLong);
  auto* p = ids.data_ptr<int64_t>();
  const int64_t lo = vocab > 1000 ? 672 : 103;  // past the special tokens (tiny vocabs: just past [SEP])
  for (int64_t i = 0; i < n; ++i) {
    int64_t len = std::min<int64_t>(12 + (7 * i) % 30, ctx - 2);
    p[i * ctx] = 101;
    for (int64_t j = 1; j <= len; ++j) p[i * ctx + j] = lo + (i * 131 + j * 17) % (vocab - lo);
    p[i * ctx + len + 1] = 102;
  }
  return ids;
}

}  // namespace clip::bench
