// safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the raw little-endian data.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>
#include <memory>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"

namespace clip {

namespace {

struct StName {
  const char* name;
  DType dtype;
};
constexpr StName kStDtypes[] = {{"F32", DType::f32}, {"F16", DType::f16}, {"BF16", DType::bf16}, {"F64", DType::f64},
                                {"I64", DType::i64}, {"I32", DType::i32}, {"I16", DType::i16},   {"I8", DType::i8},
                                {"U8", DType::u8},   {"BOOL", DType::b1}};

constexpr uint64_t kMaxHeader = 100u << 20;

}  // namespace

StateDict load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  if (!file_exists(path)) throw IoError("safetensors file '" + path + "' does not exist");
  return load_safetensors(std::make_shared<const MappedFile>(path), metadata);
}

StateDict load_safetensors(const std::shared_ptr<const MappedFile>& mf, std::map<std::string, std::string>* metadata) {
  const std::string& path = mf->path();
  const std::string what = "safetensors file '" + path + "'";
  auto bad = [&](const std::string& msg) {
    return ModelError(what + ": " + msg + " (the file is truncated or damaged; re-download or re-save it)");
  };
  const uint8_t* d = mf->data();
  size_t size = mf->size();
  if (size < 8) throw bad("shorter than its 8-byte header length");
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(d[i]) << (8 * i);
  if (hlen > size - 8 || hlen > kMaxHeader) throw bad("header length " + std::to_string(hlen) + " exceeds the file");
  nlohmann::ordered_json header;
  try {
    header = nlohmann::ordered_json::parse(d + 8, d + 8 + hlen);
  } catch (const std::exception& e) {
    throw bad(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  const uint8_t* data = d + 8 + hlen;
  uint64_t data_size = size - 8 - hlen;
  std::shared_ptr<const void> owner = mf;
  StateDict sd;
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> spans;  // [begin, end) of every tensor, for the layout check
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad("__metadata__ is not an object");
      if (metadata)
        for (auto m = v.begin(); m != v.end(); ++m)
          if (m.value().is_string()) (*metadata)[m.key()] = m.value().get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      throw bad("entry '" + name + "' lacks dtype/shape/data_offsets");
    TensorData t;
    std::string dt = v["dtype"].get<std::string>();
    bool found = false;
    for (const auto& s : kStDtypes)
      if (dt == s.name) {
        t.dtype = s.dtype;
        found = true;
      }
    if (!found)
      throw ModelError(what + ": tensor '" + name + "' has unsupported dtype " + dt +
                       " (supported: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
    int64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_unsigned()) throw bad("tensor '" + name + "' has a bad shape");
      uint64_t x = s.get<uint64_t>();
      if (x > uint64_t(INT64_MAX) || __builtin_mul_overflow(numel, int64_t(x), &numel)) throw bad("tensor '" + name + "' is too large");
      t.shape.push_back(int64_t(x));
    }
    const auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) throw bad("tensor '" + name + "' has bad data_offsets");
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    uint64_t need;
    if (b > e || e > data_size) throw bad("tensor '" + name + "' lies outside the file");
    if (__builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(t.dtype)), &need) || need != e - b)
      throw bad("tensor '" + name + "' " + t.shape_str() + " " + dtype_name(t.dtype) + " does not match its " +
                std::to_string(e - b) + " data bytes");
    t.strides.resize(t.shape.size());
    int64_t st = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      t.strides[i] = st;
      st *= std::max<int64_t>(t.shape[i], 1);
    }
    spans.emplace_back(b, e, name);
    t.data = data + b;
    t.owner = owner;
    if (sd.contains(name)) throw bad("tensor '" + name + "' appears twice");
    sd.add(name, std::move(t));
  }
  // The format's rule: the tensors' byte spans tile the data area exactly, with no overlap (two
  // tensors aliasing the same bytes) and no gap (bytes that belong to no tensor).
  std::sort(spans.begin(), spans.end());
  uint64_t pos = 0;
  for (const auto& [b, e, name] : spans) {
    if (b < pos)
      throw bad("tensor '" + name + "' (bytes " + std::to_string(b) + ".." + std::to_string(e) +
                ") overlaps the tensor before it, which ends at byte " + std::to_string(pos));
    if (b > pos)
      throw bad("bytes " + std::to_string(pos) + ".." + std::to_string(b) + " of the data belong to no tensor (a gap before '" +
                name + "')");
    pos = e;
  }
  if (pos != data_size)
    throw bad("the last " + std::to_string(data_size - pos) + " data bytes belong to no tensor");
  return sd;
}

void save_safetensors(const std::string& path, const StateDict& sd, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::map<std::string, std::string> meta = metadata;
  if (!meta.count("format")) meta["format"] = "pt";
  header["__metadata__"] = meta;
  std::vector<TensorData> parts;
  uint64_t pos = 0;
  for (const auto& k : sd.keys) {
    TensorData c = contiguous(sd.at(k));
    uint64_t n = uint64_t(c.numel()) * dtype_size(c.dtype);
    if (n && !c.data) throw ModelError("cannot save tensor '" + k + "': it has no data");
    const char* dt = nullptr;
    for (const auto& s : kStDtypes)
      if (s.dtype == c.dtype) dt = s.name;
    header[k] = {{"dtype", dt}, {"shape", c.shape}, {"data_offsets", {pos, pos + n}}};
    pos += n;
    parts.push_back(std::move(c));
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference writer does
  AtomicFile f(path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t((uint64_t(h.size()) >> (8 * i)) & 0xFF);
  f.write(len, 8);
  f.write(h);
  for (const auto& c : parts) f.write(c.data, size_t(c.numel()) * dtype_size(c.dtype));
  f.commit();
}

}  // namespace clip
