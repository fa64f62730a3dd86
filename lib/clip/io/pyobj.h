// Python values as torch.save pickles them, and tensors as raw stored bytes. No LibTorch here:
// conversion to at::Tensor lives in tensor_torch.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace clip {

enum class DType : uint8_t { f32, f16, bf16, f64, i64, i32, i16, i8, u8, b1 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "float32", "float16", ...

// A tensor as stored in a checkpoint: element type, shape, strides (in elements) and a pointer to
// its first element inside a storage kept alive by `owner` (a mapped file or an owned buffer).
struct TensorData {
  DType dtype = DType::f32;
  std::vector<int64_t> shape, strides;
  std::shared_ptr<const void> owner;
  const uint8_t* data = nullptr;
  int64_t numel() const;
  bool is_contiguous() const;
  std::string shape_str() const;  // "[768, 512]"
};

struct PyValue;
using PyPtr = std::shared_ptr<PyValue>;

struct PyValue {
  enum class Kind { none, boolean, integer, floating, string, bytes, list, tuple, dict, tensor, object };
  Kind kind = Kind::none;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                                    // string / bytes; for object: "module.name"
  std::vector<PyPtr> items;                         // list / tuple / object args
  std::vector<std::pair<PyPtr, PyPtr>> entries;     // dict, insertion order kept
  bool ordered = false;                             // dict was a collections.OrderedDict
  TensorData tensor;

  static PyPtr none();
  static PyPtr boolean(bool v);
  static PyPtr integer(int64_t v);
  static PyPtr floating(double v);
  static PyPtr str(std::string v);
  static PyPtr list(std::vector<PyPtr> v = {});
  static PyPtr tuple(std::vector<PyPtr> v = {});
  static PyPtr dict(bool ordered = false);
  static PyPtr from_tensor(TensorData t);

  // dict helpers (string or integer keys); get() returns nullptr when absent
  PyPtr get(const std::string& key) const;
  PyPtr get(int64_t key) const;
  void set(PyPtr key, PyPtr value);
  void set(const std::string& key, PyPtr value) { set(str(key), std::move(value)); }
};

}  // namespace clip
