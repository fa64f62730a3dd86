#include "clip/model/tensor_torch.h"

#include <ATen/ATen.h>

#include "clip/base/error.h"

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

}  // namespace clip
