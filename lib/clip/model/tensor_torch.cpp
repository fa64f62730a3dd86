#include "clip/model/tensor_torch.h"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <tuple>
#include <string>
#include <mutex>
#include <utility>
#include <thread>

#include "clip/base/error.h"
#include "clip/base/timing.h"
#include "clip/image/image.h"

#ifdef CLIP_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include "clip/model/cuda/squash.h"
#endif

namespace clip {

at::Device parse_device(const std::string& d) {
  if (d == "cpu") return at::Device(at::kCPU);
  if (d.rfind("cuda", 0) == 0) {
    if (!at::hasCUDA())
      throw UsageError("--device " + d + ": this build of LibTorch has no CUDA support or no GPU is visible; use --device cpu");
    return d == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(d);
  }
  throw UsageError("--device '" + d + "': expected cpu, cuda or cuda:N");
}

at::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::f32: return at::kFloat;
    case DType::f16: return at::kHalf;
    case DType::bf16: return at::kBFloat16;
    case DType::f64: return at::kDouble;
    case DType::i64: return at::kLong;
    case DType::i32: return at::kInt;
    case DType::i16: return at::kShort;
    case DType::i8: return at::kChar;
    case DType::u8: return at::kByte;
    case DType::b1: return at::kBool;
  }
  throw ModelError("unknown stored tensor dtype");
}

DType from_scalar_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    case at::kLong: return DType::i64;
    case at::kInt: return DType::i32;
    case at::kShort: return DType::i16;
    case at::kChar: return DType::i8;
    case at::kByte: return DType::u8;
    case at::kBool: return DType::b1;
    default: break;
  }
  throw ModelError(std::string("tensors of type ") + c10::toString(t) + " cannot be stored in a checkpoint");
}

at::Tensor tensor_view(const TensorData& t) {
  if (t.numel() > 0 && t.data == nullptr) throw ModelError("stored tensor " + t.shape_str() + " has no data");
  std::shared_ptr<const void> owner = t.owner;
  auto opts = at::TensorOptions().dtype(to_scalar_type(t.dtype)).device(at::kCPU);
  // Empty tensors may carry a null pointer; from_blob needs none of their bytes.
  void* p = const_cast<uint8_t*>(t.data);
  if (t.strides.size() == t.shape.size())
    return at::from_blob(p, t.shape, t.strides, [owner](void*) {}, opts);
  return at::from_blob(p, t.shape, [owner](void*) {}, opts);
}

at::Tensor to_tensor(const TensorData& t, at::ScalarType dtype) {
  at::Tensor v = tensor_view(t);
  return v.scalar_type() == dtype ? v : v.to(dtype);
}

TensorData to_tensor_data(const at::Tensor& t) {
  at::Tensor c = t.detach();
  if (!c.device().is_cpu()) c = c.to(at::kCPU);
  c = c.contiguous();
  TensorData d;
  d.dtype = from_scalar_type(c.scalar_type());
  d.shape = c.sizes().vec();
  d.strides = c.strides().vec();
  auto holder = std::make_shared<at::Tensor>(c);
  d.data = static_cast<const uint8_t*>(holder->data_ptr());
  d.owner = std::shared_ptr<const void>(holder, holder->data_ptr());
  return d;
}

at::Tensor stage_for_upload(const at::Tensor& host, at::ScalarType dtype) {
  at::Tensor staged = at::empty(host.sizes(), at::TensorOptions().dtype(dtype).pinned_memory(true));
  staged.copy_(host);
  return staged;
}

namespace {

// One squash pass's data on `device`, made and uploaded once per (form, in, size, device): the upload
// from pageable memory would otherwise wait for the device's queued work (the previous batch's forward
// pass) at every batch. At most 64 are kept (then all are dropped). Forms: the [size, in] float32
// weights of the matrix product, or (taps) Pillow's integer taps for the build's kernel,
// first | count | k as int32 (cuda/squash.h), with their row length in `ksize`.
struct SquashPass {
  at::Tensor t;
  int ksize = 0;
};

SquashPass squash_pass(bool taps, int64_t in, int64_t size, const at::Device& device) {
  static std::mutex mu;
  // Never destroyed: device tensors must not be freed after the device's runtime has shut down.
  static auto& cache = *new std::map<std::tuple<bool, int64_t, int64_t, std::string>, SquashPass>;
  const auto key = std::make_tuple(taps, in, size, device.str());
  std::lock_guard<std::mutex> lk(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  SquashPass p;
  if (taps) {
    const BicubicTaps b = bicubic_taps(static_cast<int>(in), static_cast<int>(size));
    std::vector<int32_t> v = b.packed();
    p.t = at::from_blob(v.data(), {static_cast<int64_t>(v.size())}, at::kInt)
              .to(device, at::kInt, /*non_blocking=*/false, /*copy=*/true);
    p.ksize = b.ksize;
  } else {
    const std::vector<float> m = bicubic_matrix(static_cast<int>(in), static_cast<int>(size));
    p.t = at::from_blob(const_cast<float*>(m.data()), {size, in}, at::kFloat)
              .to(device, at::kFloat, /*non_blocking=*/false, /*copy=*/true);  // a copy also on the CPU
  }
  cache.emplace(key, p);
  return p;
}

}  // namespace

at::Tensor squash_bicubic_u8(const std::vector<at::Tensor>& images, int64_t size, const at::Device& device) {
  const int64_t n = static_cast<int64_t>(images.size());
  at::Tensor out = at::empty({n, 3, size, size}, at::TensorOptions(at::kByte).device(device));
  // Images grouped by size (ordered, so the work queued does not depend on hashing).
  std::map<std::pair<int64_t, int64_t>, std::vector<int64_t>> groups;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& im = images[static_cast<size_t>(i)];
    if (im.scalar_type() != at::kByte || im.dim() != 3 || im.size(2) != 3 || im.size(0) < 1 || im.size(1) < 1)
      throw ModelError("squash_bicubic_u8: expected uint8 RGB images [H, W, 3], got " + std::string(c10::str(im.sizes())) +
                       " " + c10::toString(im.scalar_type()));
    groups[{im.size(0), im.size(1)}].push_back(i);
  }
  for (const auto& [hw, idx] : groups) {
    const int64_t g = static_cast<int64_t>(idx.size());
    // On the device already (views into an uploaded slab, UploadRing): stacked by one kernel;
    // host images: one copy each.
    bool all_there = true;
    for (int64_t k : idx) all_there = all_there && images[static_cast<size_t>(k)].device() == device;
    at::Tensor dev;
    if (all_there) {
      std::vector<at::Tensor> parts;
      for (int64_t k : idx) parts.push_back(images[static_cast<size_t>(k)]);
      dev = at::stack(parts);
    } else {
      dev = at::empty({g, hw.first, hw.second, 3}, at::TensorOptions(at::kByte).device(device));
      for (int64_t k = 0; k < g; ++k) {
        const at::Tensor& src = images[static_cast<size_t>(idx[static_cast<size_t>(k)])];
        dev[k].copy_(src, /*non_blocking=*/src.is_pinned());
      }
    }
    at::Tensor res;
    if (hw.first == size && hw.second == size) {
      res = dev.permute({0, 3, 1, 2});
#ifdef CLIP_HAVE_CUDA_KERNELS
    } else if (device.is_cuda()) {
      // The build's kernel: Pillow's integer arithmetic, the bytes of the CPU's exact resize.
      const SquashPass px = squash_pass(true, hw.second, size, device);
      const SquashPass py = squash_pass(true, hw.first, size, device);
      const at::Tensor src = dev.contiguous();
      const auto u8 = at::TensorOptions(at::kByte).device(device);
      at::Tensor tmp = at::empty({g, hw.first, size, 3}, u8);
      res = g == n ? out : at::empty({g, 3, size, size}, u8);
      const int err = cuda::squash_u8(src.data_ptr<uint8_t>(), g, static_cast<int>(hw.first), static_cast<int>(hw.second),
                                      px.t.data_ptr<int32_t>(), px.ksize, static_cast<int>(size), py.t.data_ptr<int32_t>(),
                                      py.ksize, static_cast<int>(size), tmp.data_ptr<uint8_t>(), res.data_ptr<uint8_t>(),
                                      c10::cuda::getCurrentCUDAStream(device.index()).stream());
      if (err != 0)
        throw ModelError(std::string("squash_bicubic_u8: CUDA error ") + cudaGetErrorString(static_cast<cudaError_t>(err)));
      if (g == n) return out;
#endif
    } else {
      // Pillow's two passes, horizontal first, each rounded half up and clamped to 8 bits (an
      // overshoot of the first pass is clipped before the second); a pass whose side does not change
      // is skipped. Each pass is one matrix product with Pillow's own fixed-point weights
      // (bicubic_matrix), in float32: a sample differs from Pillow's integer sum only where the float32
      // rounding of the products and their sum tips it across a rounding boundary.
      auto round8 = [](at::Tensor y) { return y.add_(0.5).floor_().clamp_(0, 255); };
      at::Tensor x = dev.permute({0, 3, 1, 2}).to(at::kFloat);  // [g, 3, H, W]
      if (hw.second != size) x = round8(at::matmul(x, squash_pass(false, hw.second, size, device).t.t()));  // [g, 3, H, size]
      if (hw.first != size) x = round8(at::matmul(squash_pass(false, hw.first, size, device).t, x));        // [g, 3, size, size]
      res = x.to(at::kByte);
    }
    if (g == n) {
      out.copy_(res);
    } else {
      // The indices from page-locked memory on CUDA: a pageable upload would wait for the device's
      // queued work (the previous batch's forward pass) at every group of a batch of mixed sizes.
      at::Tensor index = at::tensor(idx, at::kLong);
      if (device.is_cuda()) index = index.pin_memory();
      out.index_copy_(0, index.to(device, /*non_blocking=*/true), res);
    }
  }
  return out;
}

at::Tensor normalize_table_on(const at::Device& device) {
  const NormalizeTable t = normalize_table();
  at::Tensor table = at::empty({3, 256}, at::kFloat);
  std::memcpy(table.data_ptr<float>(), t.data(), sizeof t);
  return table.to(device);
}

at::Tensor normalize_pixels_u8(const at::Tensor& u8, const at::Tensor& table) {
  if (u8.scalar_type() != at::kByte || u8.dim() != 4 || u8.size(1) != 3)
    throw ModelError("normalize_pixels_u8: expected uint8 pixels [N, 3, H, W], got " + std::string(c10::str(u8.sizes())) +
                     " " + c10::toString(u8.scalar_type()));
  if (table.scalar_type() != at::kFloat || table.numel() != 3 * 256)
    throw ModelError("normalize_pixels_u8: expected a [3, 256] float32 table");
  const at::Tensor t = table.device() == u8.device() ? table : table.to(u8.device());
  // Index of byte v of channel c in the flattened table: c * 256 + v (int32: half the bytes of int64).
  const at::Tensor offset = at::arange(0, 3 * 256, 256, u8.options().dtype(at::kInt)).view({1, 3, 1, 1});
  const at::Tensor idx = u8.to(at::kInt).add_(offset);
  return t.reshape({-1}).index_select(0, idx.reshape({-1})).view(u8.sizes());
}

namespace {

// An event on `device`'s current stream, marking the end of the work queued there so far.
std::unique_ptr<c10::Event> mark_queue_end(const at::Device& device) {
  auto e = std::make_unique<c10::Event>(device.type());
  const c10::impl::VirtualGuardImpl impl(device.type());
  e->record(impl.getStream(device));
  return e;
}

// c10::Event can be queried but (in LibTorch 1.13) not waited for: poll. A batch takes milliseconds;
// a 50 us nap costs nothing noticeable and leaves the core to the decoders.
void wait_polling(const c10::Event& e) {
  while (!e.query()) std::this_thread::sleep_for(std::chrono::microseconds(50));
}

}  // namespace

#ifdef CLIP_HAVE_CUDA_KERNELS
// Page-locked host memory for UploadRing's slabs, of the ring's own making: anonymous memory (in
// huge pages where the kernel gives them), its pages faulted in by a few threads, then registered
// with CUDA in one call. The caching host allocator's cudaHostAlloc instead rounds a slab up to a
// power of two and faults every page in inside the driver, which held up CUDA's start on the
// encoder's thread (clip-index --decode device: cuda_init_s 0.48-0.86 s against 0.22-0.29 s without slabs;
// docs/benchmarks.md). Blocks are kept for later rings of the process, as that allocator keeps its
// own; a ring waits for its copies before its slabs go back.
namespace {

struct RegisteredBlocks {
  std::mutex mu;
  std::multimap<size_t, void*> free;  // bytes -> block
};
RegisteredBlocks& registered_blocks() {
  static auto* b = new RegisteredBlocks;  // never destroyed: tensors may outlive static destruction
  return *b;
}

at::Tensor registered_slab(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  bytes = (std::max<size_t>(bytes, 1) + kHuge - 1) / kHuge * kHuge;
  RegisteredBlocks& pool = registered_blocks();
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lk(pool.mu);
    const auto it = pool.free.find(bytes);
    if (it != pool.free.end()) {
      p = it->second;
      pool.free.erase(it);
    }
  }
  if (p == nullptr) {
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    madvise(m, bytes, MADV_HUGEPAGE);  // a hint; 4 KB pages otherwise
    constexpr size_t kParts = 4;
    std::vector<std::thread> touch;
    for (size_t k = 0; k < kParts; ++k)
      touch.emplace_back([m, bytes, k] {
        auto* b = static_cast<volatile uint8_t*>(m);
        for (size_t o = bytes / kParts * k; o < (k + 1 == kParts ? bytes : bytes / kParts * (k + 1)); o += 4096) b[o] = 0;
      });
    for (std::thread& t : touch) t.join();
    if (cudaHostRegister(m, bytes, cudaHostRegisterDefault) != cudaSuccess) {
      (void)cudaGetLastError();  // clears it: the ring stages its items on their own instead
      munmap(m, bytes);
      throw std::bad_alloc();
    }
    p = m;
  }
  return at::from_blob(
      p, {static_cast<int64_t>(bytes)},
      [bytes](void* q) {
        std::lock_guard<std::mutex> lk(registered_blocks().mu);
        registered_blocks().free.emplace(bytes, q);
      },
      at::TensorOptions(at::kByte));
}

}  // namespace
#endif

struct UploadRing::State {
  struct Slab {
    at::Tensor host;
    size_t batch = static_cast<size_t>(-1);  // the batch it holds (-1: none yet)
    size_t used = 0;
    bool uploaded = true;                    // the consumer has queued that batch's copy
    std::unique_ptr<c10::Event> copied;      // marks the end of that copy (CUDA)
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Slab> slabs;
  size_t bytes = 0;
  bool pinned = false, closed = false;
  c10::optional<c10::Stream> side;  // the copies' stream (CUDA)
  // The slabs are allocated in order by this thread (page-locking a slab takes tens of milliseconds):
  // reserve() does not wait for a slab still to come, its items are staged on their own.
  std::thread allocator;
  bool allocated = false;  // the allocator has finished (or given up)
  double allocation_s = 0;
};

UploadRing::UploadRing(size_t slabs, size_t bytes, bool pinned) : st_(std::make_unique<State>()) {
  st_->slabs.resize(std::max<size_t>(slabs, 1));
  st_->bytes = bytes;
  st_->pinned = pinned;
  st_->allocator = std::thread([s = st_.get(), t0 = SteadyClock::now()] {
    for (State::Slab& slab : s->slabs) {
      at::Tensor host;
      try {
#ifdef CLIP_HAVE_CUDA_KERNELS
        if (s->pinned) host = registered_slab(s->bytes).narrow(0, 0, static_cast<int64_t>(s->bytes));
#endif
        if (!host.defined())
          host = at::empty({static_cast<int64_t>(s->bytes)}, at::TensorOptions(at::kByte).pinned_memory(s->pinned));
      } catch (...) {
        break;  // out of (page-locked) memory: the items go on being staged on their own
      }
      std::lock_guard<std::mutex> lk(s->mu);
      if (s->closed) break;
      slab.host = std::move(host);
    }
    {
      std::lock_guard<std::mutex> lk(s->mu);
      s->allocated = true;
      s->allocation_s = seconds_since(t0);
    }
    s->cv.notify_all();
  });
}

UploadRing::~UploadRing() {
  close();
  st_->allocator.join();
  // A copy still queued (a consumer that stopped early) reads its slab until it ends.
  for (const State::Slab& s : st_->slabs)
    if (s.copied) wait_polling(*s.copied);
}

void UploadRing::wait_allocated() {
  std::unique_lock<std::mutex> lk(st_->mu);
  st_->cv.wait(lk, [&] { return st_->allocated || st_->closed; });
}

double UploadRing::allocation_seconds() const {
  std::lock_guard<std::mutex> lk(st_->mu);
  return st_->allocation_s;
}

void UploadRing::close() {
  {
    std::lock_guard<std::mutex> lk(st_->mu);
    st_->closed = true;
  }
  st_->cv.notify_all();
}

uint8_t* UploadRing::reserve(size_t batch, size_t n, size_t& offset) {
  State& st = *st_;
  std::unique_lock<std::mutex> lk(st.mu);
  State::Slab& s = st.slabs[batch % st.slabs.size()];
  if (!s.host.defined()) return nullptr;  // not allocated yet
  if (s.batch != batch) {
    // The slab's previous batch must have been uploaded (the consumer takes batches in order) ...
    st.cv.wait(lk, [&] { return st.closed || s.batch == batch || s.uploaded; });
    if (st.closed) return nullptr;
    if (s.batch != batch) {
      // ... and its copy finished (long since, in a steady stream: a slab is reused `slabs` batches later).
      if (s.copied) wait_polling(*s.copied);
      s.copied.reset();
      s.batch = batch;
      s.used = 0;
      s.uploaded = false;
    }
  }
  if (st.closed) return nullptr;
  const size_t at = (s.used + 15) / 16 * 16;
  if (at > st.bytes || n > st.bytes - at) return nullptr;
  s.used = at + n;
  offset = at;
  return s.host.data_ptr<uint8_t>() + at;
}

at::Tensor UploadRing::upload(size_t batch, const at::Device& device) {
  State& st = *st_;
  at::Tensor out;
  {
    std::lock_guard<std::mutex> lk(st.mu);
    State::Slab& s = st.slabs[batch % st.slabs.size()];
    if (s.batch == batch) {
      if (s.used > 0) {
        const at::Tensor src = s.host.narrow(0, 0, static_cast<int64_t>(s.used));
        if (device.is_cpu()) {
          out = src.clone();
        } else {
          // On a stream of its own, so that the copy overlaps the work queued before it (the previous
          // batch's forward pass); the current stream waits for it on the device, and the caching
          // allocator is told that the current stream uses the copy.
          const c10::impl::VirtualGuardImpl impl(device.type());
          const c10::Stream current = impl.getStream(device);
          if (!st.side || st.side->device() != device) st.side = impl.getStreamFromGlobalPool(device);
          impl.exchangeStream(*st.side);
          try {
            out = src.to(device, /*non_blocking=*/src.is_pinned());
            s.copied = mark_queue_end(device);
          } catch (...) {
            impl.exchangeStream(current);
            throw;
          }
          impl.exchangeStream(current);
          s.copied->block(current);
          impl.recordDataPtrOnStream(out.storage().data_ptr(), current);
        }
      }
      s.uploaded = true;
    }
  }
  st.cv.notify_all();
  return out;
}

struct HostCopy::Pending {
  std::unique_ptr<c10::Event> event;
};

HostCopy::HostCopy() = default;
HostCopy::HostCopy(HostCopy&&) noexcept = default;
HostCopy& HostCopy::operator=(HostCopy&&) noexcept = default;
HostCopy::~HostCopy() = default;

HostCopy::HostCopy(const at::Tensor& t) {
  if (t.device().is_cpu()) {
    host_ = t.contiguous();
    return;
  }
  host_ = at::empty(t.sizes(), at::TensorOptions().dtype(t.scalar_type()).pinned_memory(true));
  host_.copy_(t, /*non_blocking=*/true);
  pending_ = std::make_unique<Pending>(Pending{mark_queue_end(t.device())});
}

at::Tensor HostCopy::get() {
  if (pending_) {
    wait_polling(*pending_->event);
    pending_.reset();
  }
  return host_;
}

}  // namespace clip
