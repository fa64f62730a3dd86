#include "clip/io/pyobj.h"

#include "clip/base/error.h"

namespace clip {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i64: return 8;
    case DType::i32: return 4;
    case DType::i16: return 2;
    case DType::i8: return 1;
    case DType::u8: return 1;
    case DType::b1: return 1;
  }
  return 1;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::i16: return "int16";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::b1: return "bool";
  }
  return "unknown";
}

int64_t TensorData::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool TensorData::is_contiguous() const {
  // Same rule as torch: dimensions of size 1 may have any stride; an empty tensor is contiguous.
  if (strides.size() != shape.size()) return false;
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 0) return true;
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string TensorData::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {
PyPtr of_kind(PyValue::Kind k) {
  auto p = std::make_shared<PyValue>();
  p->kind = k;
  return p;
}
}  // namespace

PyPtr PyValue::none() { return std::make_shared<PyValue>(); }

PyPtr PyValue::boolean(bool v) {
  auto p = of_kind(Kind::boolean);
  p->b = v;
  return p;
}

PyPtr PyValue::integer(int64_t v) {
  auto p = of_kind(Kind::integer);
  p->i = v;
  return p;
}

PyPtr PyValue::floating(double v) {
  auto p = of_kind(Kind::floating);
  p->f = v;
  return p;
}

PyPtr PyValue::str(std::string v) {
  auto p = of_kind(Kind::string);
  p->s = std::move(v);
  return p;
}

PyPtr PyValue::list(std::vector<PyPtr> v) {
  auto p = of_kind(Kind::list);
  p->items = std::move(v);
  return p;
}

PyPtr PyValue::tuple(std::vector<PyPtr> v) {
  auto p = of_kind(Kind::tuple);
  p->items = std::move(v);
  return p;
}

PyPtr PyValue::dict(bool ordered) {
  auto p = of_kind(Kind::dict);
  p->ordered = ordered;
  return p;
}

PyPtr PyValue::from_tensor(TensorData t) {
  auto p = of_kind(Kind::tensor);
  p->tensor = std::move(t);
  return p;
}

PyPtr PyValue::get(const std::string& key) const {
  for (const auto& [k, v] : entries)
    if (k && k->kind == Kind::string && k->s == key) return v;
  return nullptr;
}

PyPtr PyValue::get(int64_t key) const {
  for (const auto& [k, v] : entries)
    if (k && k->kind == Kind::integer && k->i == key) return v;
  return nullptr;
}

static bool same_key(const PyValue& a, const PyValue& b) {
  if (a.kind != b.kind) {
    // Python: True == 1 and hash(True) == hash(1), so they are the same dict key.
    auto as_int = [](const PyValue& v, int64_t& out) {
      if (v.kind == PyValue::Kind::integer) { out = v.i; return true; }
      if (v.kind == PyValue::Kind::boolean) { out = v.b; return true; }
      return false;
    };
    int64_t x, y;
    return as_int(a, x) && as_int(b, y) && x == y;
  }
  switch (a.kind) {
    case PyValue::Kind::none: return true;
    case PyValue::Kind::boolean: return a.b == b.b;
    case PyValue::Kind::integer: return a.i == b.i;
    case PyValue::Kind::floating: return a.f == b.f;
    case PyValue::Kind::string:
    case PyValue::Kind::bytes: return a.s == b.s;
    case PyValue::Kind::tuple:
      if (a.items.size() != b.items.size()) return false;
      for (size_t i = 0; i < a.items.size(); ++i)
        if (!a.items[i] || !b.items[i] || !same_key(*a.items[i], *b.items[i])) return false;
      return true;
    default: return &a == &b;  // unhashable in Python; identity is the best we can do
  }
}

void PyValue::set(PyPtr key, PyPtr value) {
  if (kind != Kind::dict) throw ModelError("internal: PyValue::set on a non-dict value");
  if (!key) key = none();
  if (!value) value = none();
  for (auto& e : entries) {
    if (e.first && same_key(*e.first, *key)) {
      e.second = std::move(value);  // Python keeps the original position of a re-assigned key
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(value));
}

}  // namespace clip
