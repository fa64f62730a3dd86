#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "clip/base/error.h"
#include "clip/base/pipeline.h"

using namespace clip;

namespace {

constexpr size_t kFloats = 5;

// A deterministic value per (item, j), and an uneven per-item delay so that later items often
// finish before earlier ones when several threads run.
void fill(size_t item, float* out) {
  std::this_thread::sleep_for(std::chrono::microseconds((item * 7919) % 400));
  for (size_t j = 0; j < kFloats; ++j) out[j] = static_cast<float>(item * 10 + j);
}

struct Collected {
  std::vector<size_t> items;
  std::vector<float> data;
  std::vector<std::pair<size_t, std::string>> errors;
  std::vector<size_t> batch_sizes;
};

}  // namespace

TEST_CASE("BatchPipeline delivers batches in order whatever the thread count", "[pipeline]") {
  const size_t n = 103, bs = 8;
  for (int threads : {1, 2, 4}) {
    for (size_t queue : {1, 2, 4}) {
      CAPTURE(threads, queue);
      std::atomic<long> delivered{-1};
      std::atomic<long> max_ahead{0};
      auto work = [&](size_t item, float* out) {
        long ahead = static_cast<long>(item / bs) - delivered.load();
        long m = max_ahead.load();
        while (ahead > m && !max_ahead.compare_exchange_weak(m, ahead)) {
        }
        fill(item, out);
      };
      BatchPipeline pipe(n, bs, threads, work, kFloats, queue);
      REQUIRE(pipe.num_batches() == 13);
      REQUIRE(pipe.threads() == threads);
      Collected c;
      BatchPipeline::Batch b;
      size_t expect_batch = 0;
      while (pipe.next(b)) {
        REQUIRE(b.index == expect_batch);
        REQUIRE(b.first_item == expect_batch * bs);
        REQUIRE(b.errors.empty());
        REQUIRE(b.data.size() == b.items.size() * kFloats);
        delivered = static_cast<long>(b.index);
        c.items.insert(c.items.end(), b.items.begin(), b.items.end());
        c.data.insert(c.data.end(), b.data.begin(), b.data.end());
        c.batch_sizes.push_back(b.items.size());
        ++expect_batch;
      }
      REQUIRE_FALSE(pipe.next(b));  // stays finished
      REQUIRE(c.items.size() == n);
      for (size_t i = 0; i < n; ++i) {
        REQUIRE(c.items[i] == i);
        for (size_t j = 0; j < kFloats; ++j) REQUIRE(c.data[i * kFloats + j] == static_cast<float>(i * 10 + j));
      }
      REQUIRE(c.batch_sizes.back() == n % bs);
      // Workers never run further ahead than the queue allows (+1: the consumer's own batch
      // counter is updated just after next() returns).
      REQUIRE(max_ahead.load() <= static_cast<long>(queue) + 1);
    }
  }
}

TEST_CASE("BatchPipeline stop mode: batches before the failure, then the lowest failing item's error", "[pipeline]") {
  const size_t n = 90, bs = 8;
  for (int threads : {1, 2, 4}) {
    CAPTURE(threads);
    auto work = [](size_t item, float* out) {
      fill(item, out);
      if (item == 37 || item == 39 || item == 60) throw DataError("bad item " + std::to_string(item));
    };
    BatchPipeline pipe(n, bs, threads, work, kFloats, 3);
    BatchPipeline::Batch b;
    size_t got = 0;
    std::string err;
    try {
      while (pipe.next(b)) {
        REQUIRE(b.index == got);
        REQUIRE(b.items.size() == bs);
        ++got;
      }
    } catch (const DataError& e) {
      err = e.what();
    }
    REQUIRE(got == 4);  // items 0..31; item 37 is in batch 4
    REQUIRE(err == "bad item 37");
    REQUIRE_FALSE(pipe.next(b));
  }
}

TEST_CASE("BatchPipeline skip mode drops failing items and reports them", "[pipeline]") {
  const size_t n = 50, bs = 6;
  std::vector<size_t> bad = {0, 13, 14, 15, 16, 17, 49};  // includes a whole batch (12..17 minus 12)
  for (int threads : {1, 2, 4}) {
    CAPTURE(threads);
    auto work = [&](size_t item, float* out) {
      fill(item, out);
      if (std::find(bad.begin(), bad.end(), item) != bad.end())
        throw DataError("cannot decode item " + std::to_string(item));
    };
    BatchPipeline pipe(n, bs, threads, work, kFloats, 2, /*skip_errors=*/true);
    Collected c;
    BatchPipeline::Batch b;
    while (pipe.next(b)) {
      REQUIRE(b.data.size() == b.items.size() * kFloats);
      REQUIRE(b.items.size() + b.errors.size() == std::min(bs, n - b.first_item));
      c.items.insert(c.items.end(), b.items.begin(), b.items.end());
      c.data.insert(c.data.end(), b.data.begin(), b.data.end());
      c.errors.insert(c.errors.end(), b.errors.begin(), b.errors.end());
    }
    REQUIRE(c.errors.size() == bad.size());
    for (size_t k = 0; k < bad.size(); ++k) {
      REQUIRE(c.errors[k].first == bad[k]);
      REQUIRE(c.errors[k].second == "cannot decode item " + std::to_string(bad[k]));
    }
    REQUIRE(c.items.size() == n - bad.size());
    size_t row = 0;
    for (size_t i = 0; i < n; ++i) {
      if (std::find(bad.begin(), bad.end(), i) != bad.end()) continue;
      REQUIRE(c.items[row] == i);
      REQUIRE(c.data[row * kFloats] == static_cast<float>(i * 10));
      REQUIRE(c.data[row * kFloats + kFloats - 1] == static_cast<float>(i * 10 + kFloats - 1));
      ++row;
    }
  }
}

TEST_CASE("BatchPipeline skip mode still stops on errors that are not DataError", "[pipeline]") {
  auto work = [](size_t item, float* out) {
    fill(item, out);
    if (item == 3) throw DataError("skippable");
    if (item == 21) throw std::runtime_error("bug");
  };
  BatchPipeline pipe(40, 4, 2, work, kFloats, 2, true);
  BatchPipeline::Batch b;
  size_t got = 0;
  REQUIRE_THROWS_WITH(
      [&] {
        while (pipe.next(b)) ++got;
      }(),
      "bug");
  REQUIRE(got == 5);
}

TEST_CASE("BatchPipeline: early stop joins the workers; edge sizes", "[pipeline]") {
  std::atomic<size_t> calls{0};
  {
    auto work = [&](size_t item, float* out) {
      ++calls;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      out[0] = float(item);
    };
    BatchPipeline pipe(10000, 4, 4, work, 1, 2);
    BatchPipeline::Batch b;
    REQUIRE(pipe.next(b));
    REQUIRE(b.items == std::vector<size_t>{0, 1, 2, 3});
  }  // destructor: must return promptly and stop handing out items
  size_t after = calls.load();
  REQUIRE(after <= 4 * 4);  // at most the queue window (+ the delivered batch)
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  REQUIRE(calls.load() == after);  // no thread still running

  {  // destroyed while a work item throws
    BatchPipeline pipe(100, 4, 2, [](size_t, float*) { throw DataError("x"); }, 1, 2);
  }

  BatchPipeline empty(0, 8, 4, [](size_t, float*) {}, 3);
  BatchPipeline::Batch b;
  REQUIRE(empty.num_batches() == 0);
  REQUIRE_FALSE(empty.next(b));

  BatchPipeline small(3, 100, 0, [](size_t i, float* out) { out[0] = float(i); out[1] = -float(i); }, 2);
  REQUIRE(small.threads() >= 1);
  REQUIRE(small.threads() <= 3);
  REQUIRE(small.next(b));
  REQUIRE(b.items == std::vector<size_t>{0, 1, 2});
  REQUIRE(b.data == std::vector<float>{0, -0.f, 1, -1, 2, -2});
  REQUIRE_FALSE(small.next(b));

  // Zero floats per item: a pure parallel-for with ordered completion.
  std::vector<int> hit(17, 0);
  BatchPipeline none(17, 5, 3, [&](size_t i, float*) { hit[i] = 1; }, 0);
  size_t total = 0;
  while (none.next(b)) total += b.items.size();
  REQUIRE(total == 17);
  REQUIRE(std::count(hit.begin(), hit.end(), 1) == 17);
}

TEST_CASE("BytePipeline: 8-bit items in order, skipped items compacted byte-exactly", "[pipeline]") {
  // 3 * 7 bytes per item, the shape of a tiny 8-bit RGB image; an odd size so that a compaction
  // that moved floats instead of bytes would be caught.
  const size_t n = 41, bs = 5, item = 21;
  const std::vector<size_t> bad = {2, 10, 11, 40};
  auto byte = [](size_t i, size_t j) { return static_cast<uint8_t>((i * 31 + j * 7) & 0xff); };
  for (int threads : {1, 3}) {
    CAPTURE(threads);
    BytePipeline pipe(
        n, bs, threads,
        [&](size_t i, uint8_t* out) {
          std::this_thread::sleep_for(std::chrono::microseconds((i * 7919) % 300));
          for (size_t j = 0; j < item; ++j) out[j] = byte(i, j);
          if (std::find(bad.begin(), bad.end(), i) != bad.end()) throw DataError("bad " + std::to_string(i));
        },
        item, 2, /*skip_errors=*/true);
    std::vector<size_t> items, errors;
    std::vector<uint8_t> data;
    for (BytePipeline::Batch b; pipe.next(b);) {
      REQUIRE(b.data.size() == b.items.size() * item);
      items.insert(items.end(), b.items.begin(), b.items.end());
      data.insert(data.end(), b.data.begin(), b.data.end());
      for (auto& e : b.errors) errors.push_back(e.first);
    }
    REQUIRE(errors == bad);
    REQUIRE(items.size() == n - bad.size());
    for (size_t r = 0; r < items.size(); ++r) {
      REQUIRE(std::find(bad.begin(), bad.end(), items[r]) == bad.end());
      if (r > 0) REQUIRE(items[r] > items[r - 1]);
      for (size_t j = 0; j < item; ++j) REQUIRE(data[r * item + j] == byte(items[r], j));
    }
  }
}
