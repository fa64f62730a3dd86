#include "clip/base/pipeline.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "clip/base/error.h"

namespace clip {

template <typename T>
BasicBatchPipeline<T>::BasicBatchPipeline(size_t n_items, size_t batch_size, int threads, Work work, size_t item_size,
                                          size_t queue_batches, bool skip_errors)
    : n_items_(n_items),
      batch_size_(std::max<size_t>(batch_size, 1)),
      item_size_(item_size),
      num_batches_((n_items + std::max<size_t>(batch_size, 1) - 1) / std::max<size_t>(batch_size, 1)),
      skip_errors_(skip_errors),
      work_(std::move(work)) {
  if (!work_) throw std::invalid_argument("BatchPipeline: empty work function");
  slots_.resize(std::max<size_t>(queue_batches, 1));
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // More threads than items would only sleep.
  size_t n_threads = std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(n_items, 1));
  try {
    workers_.reserve(n_threads);
    for (size_t t = 0; t < n_threads; ++t) workers_.emplace_back([this] { worker(); });
  } catch (...) {
    stop_and_join();
    throw;
  }
}

template <typename T>
BasicBatchPipeline<T>::~BasicBatchPipeline() {
  stop_and_join();
}

template <typename T>
void BasicBatchPipeline<T>::stop_and_join() noexcept {
  {
    std::lock_guard<std::mutex> lk(mu_);
    shutdown_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

template <typename T>
void BasicBatchPipeline<T>::worker() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    // An item may be started only when its batch fits in the window of slots after the batch the
    // consumer is waiting for: that slot's previous batch has then been taken by the consumer.
    cv_work_.wait(lk, [&] {
      return shutdown_ || halted_ || next_item_ >= n_items_ || next_item_ / batch_size_ < next_batch_ + slots_.size();
    });
    if (shutdown_ || halted_ || next_item_ >= n_items_) return;
    size_t item = next_item_++;
    size_t b = item / batch_size_, pos = item - b * batch_size_;
    Slot& s = slots_[b % slots_.size()];
    if (pos == 0) {  // first item of the batch: (re)initialise the slot; items are handed out in order
      size_t count = std::min(batch_size_, n_items_ - b * batch_size_);
      s.batch = b;
      s.pending = count;
      s.data.resize(count * item_size_);
      s.status.assign(count, ItemStatus{});
    }
    ++in_flight_;
    T* out = s.data.data() + pos * item_size_;
    lk.unlock();

    std::exception_ptr fatal;
    std::string skipped;
    bool was_skipped = false;
    try {
      work_(item, out);
    } catch (const DataError& e) {
      if (skip_errors_) {
        was_skipped = true;
        skipped = e.what();
      } else {
        fatal = std::current_exception();
      }
    } catch (...) {
      fatal = std::current_exception();
    }

    lk.lock();
    --in_flight_;
    if (fatal) {
      s.status[pos].fatal = fatal;
      halted_ = true;  // hand out nothing more; items already started finish
    } else if (was_skipped) {
      s.status[pos].was_skipped = true;
      s.status[pos].skipped = std::move(skipped);
    }
    --s.pending;
    if (s.pending == 0 || halted_) cv_done_.notify_all();
    if (halted_) cv_work_.notify_all();
  }
}

template <typename T>
bool BasicBatchPipeline<T>::next(Batch& b) {
  std::unique_lock<std::mutex> lk(mu_);
  if (finished_) return false;
  if (next_batch_ >= num_batches_) {
    finished_ = true;
    return false;
  }
  const size_t k = next_batch_;
  Slot& s = slots_[k % slots_.size()];
  cv_done_.wait(lk, [&] { return (s.batch == k && s.pending == 0) || (halted_ && in_flight_ == 0); });

  // Items are handed out in order, so a stopping error in this batch is always found here, before
  // any later batch is delivered; the lowest failing item wins whatever the timing.
  if (s.batch == k) {
    for (auto& st : s.status) {
      if (st.fatal) {
        finished_ = true;
        std::exception_ptr e = st.fatal;
        lk.unlock();
        std::rethrow_exception(e);
      }
    }
  }
  if (s.batch != k || s.pending != 0) {
    finished_ = true;
    throw std::logic_error("BatchPipeline: halted without a recorded error");
  }

  b.index = k;
  b.first_item = k * batch_size_;
  b.items.clear();
  b.errors.clear();
  std::swap(b.data, s.data);  // the consumer's previous buffer goes back to the slot for reuse
  std::vector<ItemStatus> status;
  status.swap(s.status);
  ++next_batch_;
  lk.unlock();
  cv_work_.notify_all();

  // Compact: move the rows of delivered items over the skipped ones.
  size_t w = 0;
  for (size_t r = 0; r < status.size(); ++r) {
    size_t item = b.first_item + r;
    if (status[r].was_skipped) {
      b.errors.emplace_back(item, std::move(status[r].skipped));
      continue;
    }
    if (w != r && item_size_)
      std::memmove(b.data.data() + w * item_size_, b.data.data() + r * item_size_, item_size_ * sizeof(T));
    b.items.push_back(item);
    ++w;
  }
  b.data.resize(w * item_size_);
  return true;
}

template class BasicBatchPipeline<float>;
template class BasicBatchPipeline<uint8_t>;

}  // namespace clip
