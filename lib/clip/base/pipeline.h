// A small parallel producer for batched data (decoded + preprocessed images, typically): items
// 0..n-1 are computed by a pool of worker threads, grouped into consecutive batches of
// `batch_size`, and handed to the consumer strictly in order. The output is the same whatever the
// thread count, so results (features, training batches) do not depend on the machine.
//
// Each item is `item_size` elements of T: BatchPipeline (float: normalised pixels, the trainer's
// augmented batches) and BytePipeline (uint8_t: 8-bit pixels that the model's device normalises,
// clip-index). Both are the one template below, compiled once in pipeline.cpp.
//
// At most `queue_batches` batches are in flight (being filled or waiting for the consumer), which
// bounds memory to queue_batches * batch_size * item_size elements and lets decoding run ahead of
// the model by that much.
//
// Errors. `work` reports a bad item by throwing. With skip_errors=false any exception stops the
// pipeline: next() delivers every batch before the one holding the failing item, then rethrows the
// exception of the lowest failing item (deterministic). With skip_errors=true a clip::DataError only
// drops that item: the batch arrives without it and lists (item, message) in Batch::errors; any
// other exception still stops the pipeline.
//
// Lifetime. The destructor stops the workers and joins them, also when the consumer stops early or
// next() threw; items already being computed finish first, so `work` must not block forever.
//
// Example:
//   ImageTsv tsv(path);                              // dataset.h
//   BatchPipeline pipe(tsv.size(), 32, /*threads=*/0, [&](size_t i, float* out) {
//     preprocess_eval(tsv.decode(i), 224, out);      // DataError names file:line (image_id)
//   }, 3 * 224 * 224, /*queue_batches=*/4, /*skip_errors=*/on_error == "skip");
//   for (BatchPipeline::Batch b; pipe.next(b);) {
//     for (auto& [item, why] : b.errors) log_warn("skipped {}", why);
//     encode(b.data.data(), b.items.size());         // rows belong to tsv.id(b.items[k])
//   }
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace clip {

template <typename T>
class BasicBatchPipeline {
  static_assert(std::is_trivially_copyable<T>::value, "items are moved with memmove");

 public:
  // Fills out[0 .. item_size). Called concurrently from several threads, each with a distinct
  // item, so it must be thread-safe (read-only shared state is fine).
  using Work = std::function<void(size_t item, T* out)>;

  struct Batch {
    size_t index = 0;                                   // batch number: 0, 1, 2, ...
    size_t first_item = 0;                              // items of this batch: [first_item, first_item + batch_size)
    std::vector<size_t> items;                          // the items delivered, ascending
    std::vector<T> data;                                // items.size() * item_size, item-major
    std::vector<std::pair<size_t, std::string>> errors;  // skipped items and why (skip_errors only)
  };

  // threads <= 0: one per hardware thread. queue_batches >= 1 (clamped). batch_size >= 1.
  BasicBatchPipeline(size_t n_items, size_t batch_size, int threads, Work work, size_t item_size,
                     size_t queue_batches = 4, bool skip_errors = false);
  ~BasicBatchPipeline();
  BasicBatchPipeline(const BasicBatchPipeline&) = delete;
  BasicBatchPipeline& operator=(const BasicBatchPipeline&) = delete;

  // Blocks until the next batch is complete and moves it into b (b's buffers are recycled).
  // Returns false once every batch was delivered. May rethrow a work error (see above); after
  // that, next() returns false.
  bool next(Batch& b);

  size_t num_batches() const { return num_batches_; }
  size_t num_items() const { return n_items_; }
  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  struct ItemStatus {
    std::exception_ptr fatal;  // a stopping error
    std::string skipped;       // the message of a skipped item (skip_errors)
    bool was_skipped = false;
  };
  struct Slot {
    size_t batch = static_cast<size_t>(-1);  // which batch occupies the slot (-1: none yet)
    size_t pending = 0;                      // items of that batch not finished yet
    std::vector<T> data;
    std::vector<ItemStatus> status;          // per item of the batch
  };
  void worker();
  void stop_and_join() noexcept;

  const size_t n_items_, batch_size_, item_size_, num_batches_;
  const bool skip_errors_;
  Work work_;
  std::vector<Slot> slots_;  // ring: batch k lives in slots_[k % slots_.size()]

  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  size_t next_item_ = 0;      // next item to hand to a worker
  size_t next_batch_ = 0;     // next batch the consumer takes
  size_t in_flight_ = 0;      // items handed out and not finished
  bool shutdown_ = false;     // destructor
  bool halted_ = false;       // a stopping error: hand out no more items
  bool finished_ = false;     // next() returned false or threw
  std::vector<std::thread> workers_;
};

extern template class BasicBatchPipeline<float>;
extern template class BasicBatchPipeline<uint8_t>;
using BatchPipeline = BasicBatchPipeline<float>;
using BytePipeline = BasicBatchPipeline<uint8_t>;

}  // namespace clip
