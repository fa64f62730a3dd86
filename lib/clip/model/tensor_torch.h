// Conversions between stored tensors (TensorData, no LibTorch) and at::Tensor.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "clip/io/pyobj.h"

namespace clip {

at::ScalarType to_scalar_type(DType t);
// Throws ModelError for element types a checkpoint cannot hold (complex, quantized, ...).
DType from_scalar_type(at::ScalarType t);

// Zero-copy CPU view of the stored bytes (any dtype and strides); the view keeps t.owner alive.
// The bytes may be a read-only mapping of the file: never write through the view.
at::Tensor tensor_view(const TensorData& t);

// The tensor as `dtype`: the zero-copy view when it already has that dtype (e.g. float32 weights
// into a float32 model), otherwise a converted copy (float16/bfloat16/float64 -> model dtype).
at::Tensor to_tensor(const TensorData& t, at::ScalarType dtype);

// A CPU, contiguous TensorData sharing the tensor's memory (copied first when the tensor is on
// another device or not contiguous); `owner` keeps the tensor alive.
TensorData to_tensor_data(const at::Tensor& t);

// --device: "cpu", "cuda" (= cuda:0) or "cuda:N". UsageError for anything else, and for cuda when
// this LibTorch has no CUDA or no GPU is visible.
at::Device parse_device(const std::string& name);

// A host tensor staged for an asynchronous upload to a CUDA device: a copy in page-locked memory
// from LibTorch's caching host allocator (a block is reused only once the copy that read it has
// finished, so a fresh one per batch is safe and cheap), converted to `dtype` on the way (the
// rounding the device would apply to float32 input). Upload it with .to(device, non_blocking=true).
at::Tensor stage_for_upload(const at::Tensor& host, at::ScalarType dtype);

// 8-bit planar pixels [N, 3, H, W] (uint8, on any device) -> float32 [N, 3, H, W] on the same
// device: byte v of channel c becomes table[c][v] (`table`: [3, 256] float32, on that device).
// A lookup, not arithmetic, so the values are the table's on every device, bit for bit: with the
// image layer's normalize_table, exactly the floats preprocess_eval writes on the CPU.
at::Tensor normalize_pixels_u8(const at::Tensor& u8, const at::Tensor& table);
// The image layer's normalize_table (CLIP's mean and std) as that [3, 256] float32 tensor on `device`.
at::Tensor normalize_table_on(const at::Device& device);

// Pillow's bicubic squash (Image.resize((size, size), BICUBIC): antialiased, a = -0.5) of 8-bit RGB
// images on `device`: images[i] is [H_i, W_i, 3] uint8 on the host (page-locked when `device` is
// CUDA, so that the upload does not block) or already on `device`, any sizes; returns
// [N, 3, size, size] uint8 on `device`, planar like preprocess_eval_u8. Images of one size are
// gathered into one tensor on the device and resized together in Pillow's two passes, horizontal
// then vertical. On CUDA in a build with its own kernels (cuda/squash.cu) in Pillow's integer
// arithmetic with its fixed-point taps (image layer's bicubic_taps): the bytes of the CPU's exact
// resize. Elsewhere (the CPU, a CUDA build without nvcc) each pass is a float32 matrix product with
// the same weights (bicubic_matrix) then rounded and clamped to 0..255 as Pillow's are: a pixel
// differs from Pillow's integer result only where float32 rounding tips it. An image already
// size x size is copied as it is (what Pillow does).
at::Tensor squash_bicubic_u8(const std::vector<at::Tensor>& images, int64_t size, const at::Device& device);

// Staging for batches whose items worker threads write and one consumer uploads: a ring of `slabs`
// host buffers of `bytes` each (page-locked when `pinned`; allocated in order by a thread of the
// ring's own from its construction, since page-locking takes tens of milliseconds a slab), slab
// k % slabs for batch k. A worker reserves room for an item in its batch's slab; the consumer uploads the
// batch's bytes with one copy. A slab passes to a later batch only after the consumer has uploaded
// the batch before and that copy has finished (reserve waits for both), so page-locked memory stays
// slabs * bytes whatever the input.
class UploadRing {
 public:
  UploadRing(size_t slabs, size_t bytes, bool pinned);
  ~UploadRing();
  UploadRing(const UploadRing&) = delete;
  UploadRing& operator=(const UploadRing&) = delete;
  // Room for n bytes of batch k (16-byte aligned): the address, with its offset in the slab in
  // `offset`; nullptr when the slab has no room left, is not allocated yet (it never waits for
  // that), or after close(): stage the item elsewhere.
  uint8_t* reserve(size_t batch, size_t n, size_t& offset);
  // Batch k's reserved bytes [0, used) on `device`: one copy, queued on a copy stream of the ring's
  // own that the device's current stream then waits for (so the copy overlaps the work queued
  // before it); a copy of its own on the CPU. Undefined when nothing was reserved for k. Call it once
  // for every batch, in order, also for batches without reservations.
  at::Tensor upload(size_t batch, const at::Device& device);
  // Wakes and refuses every waiting and later reserve (the consumer stopped early).
  void close();
  // Waits until every slab is allocated (or allocation failed, or close()).
  void wait_allocated();
  // Seconds from construction until every slab was allocated (or allocation stopped); 0 before.
  double allocation_seconds() const;

 private:
  struct State;
  std::unique_ptr<State> st_;
};

// A copy of a tensor to the host that does not wait for the device. On CUDA it is queued on the
// device's current stream into page-locked memory, behind the work that produces the tensor, and
// an event marks its end: get() waits for that event only, not for work queued after the copy
// (a whole-stream synchronisation, as .to(at::kCPU) does, would also wait for the batches queued
// behind it). On the CPU: the tensor itself, at once.
class HostCopy {
 public:
  HostCopy();
  explicit HostCopy(const at::Tensor& t);
  HostCopy(HostCopy&&) noexcept;
  HostCopy& operator=(HostCopy&&) noexcept;
  ~HostCopy();
  // The host tensor (contiguous), once the copy has finished.
  at::Tensor get();

 private:
  struct Pending;
  at::Tensor host_;
  std::unique_ptr<Pending> pending_;
};

}  // namespace clip
