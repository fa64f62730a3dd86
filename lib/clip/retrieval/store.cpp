#include "clip/retrieval/store.h"

#include "clip/base/cpu.h"

#include <c10/util/Half.h>
#include <fmt/format.h>
#include <immintrin.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <unordered_set>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"

namespace clip {

namespace {

constexpr char kMagic[8] = {'C', 'L', 'I', 'P', 'F', 'E', 'A', 'T'};
constexpr uint32_t kHeaderSize = 64;
constexpr uint32_t kFlagNormalized = 1u;
constexpr uint32_t kKnownFlags = kFlagNormalized;
constexpr uint64_t kMaxDim = 1u << 20;
const char* const kRemedy = "rebuild it with clip-index";

// On-disk header, little-endian, exactly 64 bytes (docs/store-format.md).
struct Header {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t count;
  uint32_t dim;
  uint32_t dtype;
  uint32_t flags;
  uint32_t meta_size;
  uint64_t ids_offset;
  uint64_t data_offset;
  uint64_t file_size;
};
static_assert(sizeof(Header) == kHeaderSize, "store header must be 64 bytes");

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

struct Layout {
  uint64_t ids_offset, data_offset, file_size;
};
Layout layout_for(uint64_t count, uint64_t dim, StoreDtype dtype, uint64_t meta_size) {
  Layout l;
  l.ids_offset = align_up(kHeaderSize + meta_size, 8);
  l.data_offset = align_up(l.ids_offset + 8 * count, 64);
  l.file_size = l.data_offset + count * dim * dtype_size(dtype);
  return l;
}

bool host_is_little_endian() {
  const uint16_t one = 1;
  uint8_t b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

[[noreturn]] void store_error(const std::string& path, const std::string& what) {
  throw DataError(fmt::format("feature store '{}': {}; {}", path, what, kRemedy));
}

nlohmann::json meta_to_json(const StoreMeta& m, const std::vector<int64_t>& ids) {
  nlohmann::json j = nlohmann::json::object();
  j["kind"] = m.kind;
  j["model_name"] = m.model_name;
  j["weights_hash"] = m.weights_hash;
  j["preprocess"] = m.preprocess.is_null() ? nlohmann::json::object() : m.preprocess;
  nlohmann::json src = nlohmann::json::array();
  for (const auto& s : m.sources) src.push_back({{"path", s.path}, {"size", s.size}, {"mtime", s.mtime}});
  j["sources"] = src;
  j["extra"] = m.extra.is_null() ? nlohmann::json::object() : m.extra;
  if (!m.names.empty()) {
    nlohmann::json names = nlohmann::json::array();
    bool any = false;
    for (int64_t id : ids) {
      auto it = m.names.find(id);
      if (it == m.names.end()) {
        names.push_back(nullptr);
      } else {
        names.push_back(it->second);
        any = true;
      }
    }
    if (any) j["names"] = std::move(names);
  }
  return j;
}

StoreMeta meta_from_json(const std::string& path, const std::string& text, bool normalized,
                         const std::vector<int64_t>& ids) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    store_error(path, std::string("metadata block is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) store_error(path, "metadata block is not a JSON object");
  auto str = [&](const char* key) -> std::string {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) store_error(path, fmt::format("metadata key '{}' is missing or not a string", key));
    return it->get<std::string>();
  };
  StoreMeta m;
  m.kind = str("kind");
  if (m.kind != "image" && m.kind != "text" && !m.kind.empty())
    store_error(path, fmt::format("metadata kind '{}' is neither \"image\" nor \"text\"", m.kind));
  m.model_name = str("model_name");
  m.weights_hash = str("weights_hash");
  auto pre = j.find("preprocess");
  if (pre == j.end() || !pre->is_object()) store_error(path, "metadata key 'preprocess' is missing or not an object");
  m.preprocess = *pre;
  auto src = j.find("sources");
  if (src == j.end() || !src->is_array()) store_error(path, "metadata key 'sources' is missing or not an array");
  for (const auto& s : *src) {
    if (!s.is_object() || !s.contains("path") || !s["path"].is_string() || !s.value("size", nlohmann::json()).is_number_integer() ||
        !s.value("mtime", nlohmann::json()).is_number_integer())
      store_error(path, "metadata 'sources' entry is not {\"path\": str, \"size\": int, \"mtime\": int}");
    m.sources.push_back({s["path"].get<std::string>(), s["size"].get<int64_t>(), s["mtime"].get<int64_t>()});
  }
  // The fields the tools read back (clip-query without model flags, clip-index --append) must have
  // the types clip-index writes: a damaged value is named here, not met later as a type error.
  auto field_error = [&](const std::string& field, const nlohmann::json& v, const std::string& expected) {
    std::string shown = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
    store_error(path, fmt::format("metadata field '{}' is {}, expected {}", field, shown, expected));
  };
  for (const char* key : {"context_length", "resolution"}) {
    auto it = m.preprocess.find(key);
    if (it != m.preprocess.end() && !(it->is_number_integer() && it->get<int64_t>() >= 1 && it->get<int64_t>() <= 100000))
      field_error(std::string("preprocess.") + key, *it, "an integer from 1 to 100000");
  }
  auto ex = j.find("extra");
  if (ex != j.end()) {
    if (!ex->is_object()) store_error(path, "metadata key 'extra' is not an object");
    for (const char* key : {"checkpoint", "vocab", "model_config", "tool"}) {
      auto it = ex->find(key);
      if (it != ex->end() && !it->is_string()) field_error(std::string("extra.") + key, *it, "a string");
    }
    auto files = ex->find("files");
    if (files != ex->end()) {
      if (!files->is_object()) field_error("extra.files", *files, "an object {path: [size, mtime]}");
      for (auto it = files->begin(); it != files->end(); ++it)
        if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number_integer() || !(*it)[1].is_number_integer())
          field_error("extra.files[\"" + it.key() + "\"]", *it, "[size, mtime] (two integers)");
    }
    m.extra = *ex;
  }
  auto nm = j.find("names");
  if (nm != j.end()) {
    if (!nm->is_array() || nm->size() != ids.size())
      store_error(path, fmt::format("metadata key 'names' is not a list of {} entries (one per row)", ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) {
      const auto& v = (*nm)[i];
      if (v.is_null()) continue;
      if (!v.is_string() || name_to_id(v.get_ref<const std::string&>()) != ids[i])
        store_error(path, fmt::format("metadata 'names' entry {} does not belong to the id of row {}", v.dump(), i));
      m.names.emplace(ids[i], v.get<std::string>());
    }
  }
  m.normalized = normalized;
  return m;
}

bool f16_is_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

// float16 -> float32. The F16C instruction converts 8 values at once, an order of magnitude faster
// than ATen 1.13's scalar CPU conversion, which would otherwise dominate searching a float16 store.
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)  // round to nearest even, as c10::Half does
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

bool have_f16c() { return cpu_features().f16c; }

void float_to_half(const float* src, uint16_t* dst, size_t n) {
  if (have_f16c()) return float_to_half_f16c(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = c10::Half(src[i]).x;
}

void half_to_float(const uint16_t* src, float* dst, size_t n) {
  if (have_f16c()) return half_to_float_f16c(src, dst, n);
  for (size_t i = 0; i < n; ++i) {
    c10::Half h;
    h.x = src[i];
    dst[i] = static_cast<float>(h);
  }
}

// Where each output row comes from: a FeatureSet and a row of it.
struct RowRef {
  const FeatureSet* src;
  int64_t row;
};

// Streams a store to `path` atomically. Rows are copied when the dtype matches and converted
// otherwise; every written value is checked to be finite in the output dtype.
void write_rows(const std::string& path, const std::vector<int64_t>& ids, const std::vector<RowRef>& rows, int64_t dim,
                StoreDtype dtype, const StoreMeta& meta) {
  if (!host_is_little_endian()) throw DataError("feature stores are little-endian; this host is not supported");
  if (dim <= 0 || static_cast<uint64_t>(dim) > kMaxDim)
    throw DataError(fmt::format("cannot write '{}': feature dim {} is out of range (1..{})", path, dim, kMaxDim));
  if (meta.kind != "image" && meta.kind != "text" && !meta.kind.empty())
    throw DataError(fmt::format("cannot write '{}': kind '{}' is neither \"image\" nor \"text\"", path, meta.kind));
  {
    std::unordered_map<int64_t, size_t> seen;
    seen.reserve(ids.size() * 2);
    for (size_t i = 0; i < ids.size(); ++i) {
      auto [it, fresh] = seen.emplace(ids[i], i);
      if (!fresh)
        throw DataError(fmt::format("cannot write '{}': id {} occurs twice (rows {} and {}); ids must be unique", path,
                                    ids[i], it->second, i));
    }
  }
  const std::string meta_text = meta_to_json(meta, ids).dump();
  if (meta_text.size() > UINT32_MAX) throw DataError(fmt::format("cannot write '{}': metadata too large", path));
  const uint64_t count = ids.size();
  const Layout l = layout_for(count, dim, dtype, meta_text.size());

  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kStoreVersion;
  h.header_size = kHeaderSize;
  h.count = count;
  h.dim = static_cast<uint32_t>(dim);
  h.dtype = static_cast<uint32_t>(dtype);
  h.flags = meta.normalized ? kFlagNormalized : 0;
  h.meta_size = static_cast<uint32_t>(meta_text.size());
  h.ids_offset = l.ids_offset;
  h.data_offset = l.data_offset;
  h.file_size = l.file_size;

  AtomicFile f(path);
  const std::string zeros(64, '\0');
  f.write(&h, sizeof h);
  f.write(meta_text);
  f.write(zeros.data(), l.ids_offset - kHeaderSize - meta_text.size());
  f.write(ids.data(), ids.size() * sizeof(int64_t));
  f.write(zeros.data(), l.data_offset - l.ids_offset - 8 * count);

  const size_t esize = dtype_size(dtype);
  const size_t row_bytes = static_cast<size_t>(dim) * esize;
  const size_t rows_per_buf = std::max<size_t>(1, (8u << 20) / row_bytes);
  std::vector<uint8_t> buf(rows_per_buf * row_bytes);
  std::vector<float> tmp(dim);
  for (size_t begin = 0; begin < count; begin += rows_per_buf) {
    const size_t end = std::min<size_t>(count, begin + rows_per_buf);
    for (size_t i = begin; i < end; ++i) {
      uint8_t* dst = buf.data() + (i - begin) * row_bytes;
      const FeatureSet& s = *rows[i].src;
      if (s.dim != dim)
        throw DataError(fmt::format("cannot write '{}': id {} has {} values, expected {}", path, ids[i], s.dim, dim));
      if (s.dtype == dtype) {
        std::memcpy(dst, static_cast<const uint8_t*>(s.data) + rows[i].row * row_bytes, row_bytes);
      } else {
        s.copy_rows(rows[i].row, rows[i].row + 1, tmp.data());
        if (dtype == StoreDtype::f32) {
          std::memcpy(dst, tmp.data(), row_bytes);
        } else {
          float_to_half(tmp.data(), reinterpret_cast<uint16_t*>(dst), dim);
        }
      }
      bool finite = true;
      if (dtype == StoreDtype::f32) {
        const float* v = reinterpret_cast<const float*>(dst);
        for (int64_t j = 0; j < dim; ++j) finite &= std::isfinite(v[j]);
      } else {
        const uint16_t* v = reinterpret_cast<const uint16_t*>(dst);
        for (int64_t j = 0; j < dim; ++j) finite &= f16_is_finite(v[j]);
      }
      if (!finite)
        throw DataError(fmt::format("cannot write '{}': the feature of id {} has a NaN or infinite value{}", path, ids[i],
                                    dtype == StoreDtype::f16 ? " in float16 (out of its range? use --dtype f32)" : ""));
    }
    f.write(buf.data(), (end - begin) * row_bytes);
  }
  f.commit();
}

// A non-owning float32 FeatureSet over caller memory (rows only; ids are kept separately).
FeatureSet f32_view(const float* data, int64_t dim) {
  FeatureSet v;
  v.dim = dim;
  v.dtype = StoreDtype::f32;
  v.data = data;
  return v;
}

}  // namespace

const char* dtype_name(StoreDtype d) { return d == StoreDtype::f16 ? "f16" : "f32"; }

size_t dtype_size(StoreDtype d) { return d == StoreDtype::f16 ? 2 : 4; }

StoreDtype parse_store_dtype(const std::string& s) {
  if (s == "f32" || s == "float32" || s == "fp32") return StoreDtype::f32;
  if (s == "f16" || s == "float16" || s == "fp16") return StoreDtype::f16;
  throw UsageError("unknown feature dtype '" + s + "' (expected f32 or f16)");
}

SourceFile source_file_info(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw_io_error("stat", path);
  SourceFile s;
  char* abs = ::realpath(path.c_str(), nullptr);
  s.path = abs ? abs : path;
  std::free(abs);
  s.size = static_cast<int64_t>(st.st_size);
  s.mtime = static_cast<int64_t>(st.st_mtime);
  return s;
}

bool source_unchanged(const SourceFile& s) {
  struct stat st;
  if (::stat(s.path.c_str(), &st) != 0) return false;
  if (s.size >= 0 && s.size != static_cast<int64_t>(st.st_size)) return false;
  if (s.mtime >= 0 && s.mtime != static_cast<int64_t>(st.st_mtime)) return false;
  return true;
}

// ---- FeatureSet ----

float FeatureSet::at(int64_t r, int64_t c) const {
  if (dtype == StoreDtype::f32) return f32()[r * dim + c];
  c10::Half h;
  h.x = f16()[r * dim + c];
  return static_cast<float>(h);
}

void FeatureSet::copy_rows(int64_t begin, int64_t end, float* out) const {
  const int64_t n = (end - begin) * dim;
  if (dtype == StoreDtype::f32) {
    std::memcpy(out, f32() + begin * dim, n * sizeof(float));
    return;
  }
  half_to_float(f16() + begin * dim, out, static_cast<size_t>(n));
}

std::vector<float> FeatureSet::row(int64_t i) const {
  std::vector<float> r(dim);
  copy_rows(i, i + 1, r.data());
  return r;
}

int64_t FeatureSet::find(int64_t id) const {
  if (index_.empty() && !ids.empty()) {
    index_.reserve(ids.size() * 2);
    for (size_t i = 0; i < ids.size(); ++i) index_.emplace(ids[i], static_cast<int64_t>(i));
  }
  auto it = index_.find(id);
  return it == index_.end() ? -1 : it->second;
}

FeatureSet make_feature_set(std::vector<int64_t> ids, const float* data, int64_t dim, StoreDtype dtype, StoreMeta meta) {
  FeatureSet fs;
  const size_t n = ids.size() * static_cast<size_t>(dim);
  if (dtype == StoreDtype::f32) {
    auto buf = std::make_shared<std::vector<float>>(data, data + n);
    fs.data = buf->data();
    fs.owner = buf;
  } else {
    auto buf = std::make_shared<std::vector<uint16_t>>(n);
    float_to_half(data, buf->data(), n);
    fs.data = buf->data();
    fs.owner = buf;
  }
  fs.ids = std::move(ids);
  fs.dim = dim;
  fs.dtype = dtype;
  fs.meta = std::move(meta);
  fs.format = "memory";
  return fs;
}

// ---- binary store ----

void write_store(const std::string& path, const std::vector<int64_t>& ids, const float* data, int64_t dim,
                 StoreDtype dtype, const StoreMeta& meta) {
  FeatureSet v = f32_view(data, dim);
  std::vector<RowRef> rows(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) rows[i] = {&v, static_cast<int64_t>(i)};
  write_rows(path, ids, rows, dim, dtype, meta);
}

void write_store(const std::string& path, const FeatureSet& fs) {
  std::vector<RowRef> rows(fs.ids.size());
  for (size_t i = 0; i < fs.ids.size(); ++i) rows[i] = {&fs, static_cast<int64_t>(i)};
  write_rows(path, fs.ids, rows, fs.dim, fs.dtype, fs.meta);
}

bool is_store_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char m[8];
  return in && in.read(m, 8) && std::memcmp(m, kMagic, 8) == 0;
}

FeatureSet open_store(const std::string& path) {
  auto map = std::make_shared<MappedFile>(path);
  const uint64_t size = map->size();
  const uint8_t* p = map->data();
  if (size < 8 || std::memcmp(p, kMagic, 8) != 0)
    throw DataError(fmt::format("'{}' is not a feature store (it does not start with \"CLIPFEAT\"); give a store "
                                "written by clip-index or a cn_clip JSONL feature file",
                                path));
  if (size < kHeaderSize)
    store_error(path, fmt::format("truncated: {} bytes, shorter than the {}-byte header", size, kHeaderSize));
  if (!host_is_little_endian()) store_error(path, "stores are little-endian and this host is not");
  Header h;
  std::memcpy(&h, p, sizeof h);
  if (h.version != kStoreVersion)
    throw DataError(fmt::format("feature store '{}': format version {}, this build reads version {}; {} (or use a "
                                "build that reads it)",
                                path, h.version, kStoreVersion, kRemedy));
  if (h.header_size != kHeaderSize) store_error(path, fmt::format("header size field is {}, expected {}", h.header_size, kHeaderSize));
  if (h.dim == 0 || h.dim > kMaxDim) store_error(path, fmt::format("dim {} is out of range (1..{})", h.dim, kMaxDim));
  if (h.dtype > static_cast<uint32_t>(StoreDtype::f16)) store_error(path, fmt::format("unknown dtype code {}", h.dtype));
  if (h.flags & ~kKnownFlags) store_error(path, fmt::format("unknown flag bits 0x{:x}", h.flags & ~kKnownFlags));
  const StoreDtype dtype = static_cast<StoreDtype>(h.dtype);
  // Bound count so that the layout arithmetic cannot overflow before the size check.
  if (h.count > (uint64_t(1) << 40) / h.dim) store_error(path, fmt::format("row count {} is implausibly large", h.count));
  const Layout l = layout_for(h.count, h.dim, dtype, h.meta_size);
  if (h.ids_offset != l.ids_offset || h.data_offset != l.data_offset || h.file_size != l.file_size)
    store_error(path, fmt::format("inconsistent header: ids at {}, data at {}, size {}; expected {}, {}, {} for {} rows of "
                                  "{} x {}",
                                  h.ids_offset, h.data_offset, h.file_size, l.ids_offset, l.data_offset, l.file_size,
                                  h.count, h.dim, dtype_name(dtype)));
  if (size < l.file_size)
    store_error(path, fmt::format("truncated: {} bytes, the header describes {} rows of {} x {} needing {} bytes (was the "
                                  "write interrupted?)",
                                  size, h.count, h.dim, dtype_name(dtype), l.file_size));
  if (size > l.file_size)
    store_error(path, fmt::format("{} unexpected bytes after the end of the data ({} bytes, expected {})", size - l.file_size,
                                  size, l.file_size));

  FeatureSet fs;
  fs.ids.resize(h.count);
  if (h.count) std::memcpy(fs.ids.data(), p + l.ids_offset, 8 * h.count);
  fs.meta = meta_from_json(path, std::string(reinterpret_cast<const char*>(p + kHeaderSize), h.meta_size),
                           (h.flags & kFlagNormalized) != 0, fs.ids);
  fs.dim = h.dim;
  fs.dtype = dtype;
  fs.data = h.count ? p + l.data_offset : nullptr;
  fs.owner = map;
  fs.path = path;
  fs.format = "store";
  return fs;
}

void append_store(const std::string& path, const std::vector<int64_t>& ids, const float* data, int64_t dim,
                  const AppendOptions& opt) {
  FeatureSet old = open_store(path);
  if (dim != old.dim)
    throw DataError(fmt::format("cannot append to '{}': new features have dim {}, the store has {}", path, dim, old.dim));
  FeatureSet add = f32_view(data, dim);
  std::vector<int64_t> out_ids = old.ids;
  std::vector<RowRef> rows(old.ids.size());
  for (size_t i = 0; i < old.ids.size(); ++i) rows[i] = {&old, static_cast<int64_t>(i)};
  std::unordered_set<int64_t> added;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!added.insert(ids[i]).second)
      throw DataError(fmt::format("cannot append to '{}': id {} occurs twice among the new rows", path, ids[i]));
    int64_t r = old.find(ids[i]);
    if (r >= 0) {
      if (!opt.replace)
        throw DataError(fmt::format("cannot append to '{}': id {} is already in the store (row {}); pass --replace to "
                                    "overwrite it",
                                    path, ids[i], r));
      rows[r] = {&add, static_cast<int64_t>(i)};
    } else {
      out_ids.push_back(ids[i]);
      rows.push_back({&add, static_cast<int64_t>(i)});
    }
  }
  StoreMeta meta = old.meta;
  for (const auto& [id, name] : opt.names) meta.names[id] = name;
  if (!opt.extra_patch.is_null()) meta.extra.merge_patch(opt.extra_patch);
  if (!opt.source.path.empty()) {
    auto same = [&](const SourceFile& s) { return s.path == opt.source.path; };
    auto it = std::find_if(meta.sources.begin(), meta.sources.end(), same);
    if (it == meta.sources.end()) meta.sources.push_back(opt.source);
    else *it = opt.source;
  }
  write_rows(path, out_ids, rows, dim, old.dtype, meta);
}

void merge_stores(const std::string& a_path, const std::string& b_path, const std::string& out, const MergeOptions& opt) {
  FeatureSet a = open_store(a_path), b = open_store(b_path);
  if (a.dim != b.dim)
    throw DataError(fmt::format("cannot merge '{}' (dim {}) and '{}' (dim {}): the feature sizes differ", a_path, a.dim,
                                b_path, b.dim));
  if (a.meta.kind != b.meta.kind)
    throw DataError(fmt::format("cannot merge '{}' ({} features) and '{}' ({} features)", a_path, a.meta.kind, b_path,
                                b.meta.kind));
  if (!opt.force) {
    if (a.meta.model_name != b.meta.model_name || a.meta.weights_hash != b.meta.weights_hash)
      throw DataError(fmt::format("cannot merge '{}' (model {}, weights {}) and '{}' (model {}, weights {}): features of "
                                  "different models are not comparable; pass --force to merge anyway",
                                  a_path, a.meta.model_name, a.meta.weights_hash, b_path, b.meta.model_name,
                                  b.meta.weights_hash));
    if (a.meta.preprocess != b.meta.preprocess)
      log_warn("merging '{}' and '{}' with different preprocessing settings", a_path, b_path);
  }
  std::vector<int64_t> ids = a.ids;
  std::vector<RowRef> rows(a.ids.size());
  for (size_t i = 0; i < a.ids.size(); ++i) rows[i] = {&a, static_cast<int64_t>(i)};
  for (size_t i = 0; i < b.ids.size(); ++i) {
    int64_t r = a.find(b.ids[i]);
    if (r >= 0) {
      if (!opt.replace)
        throw DataError(fmt::format("cannot merge '{}' and '{}': id {} is in both; pass --replace to keep the second "
                                    "file's feature",
                                    a_path, b_path, b.ids[i]));
      rows[r] = {&b, static_cast<int64_t>(i)};
    } else {
      ids.push_back(b.ids[i]);
      rows.push_back({&b, static_cast<int64_t>(i)});
    }
  }
  StoreMeta meta = a.meta;
  meta.normalized = a.meta.normalized && b.meta.normalized;
  for (const auto& [id, name] : b.meta.names) meta.names[id] = name;
  for (const auto& s : b.meta.sources) {
    bool known = std::any_of(meta.sources.begin(), meta.sources.end(), [&](const SourceFile& x) { return x.path == s.path; });
    if (!known) meta.sources.push_back(s);
  }
  // Writing through a temporary file keeps the mapped inputs valid even when out is one of them.
  write_rows(out, ids, rows, a.dim, opt.dtype ? *opt.dtype : a.dtype, meta);
}

// ---- JSONL ----

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest round-trip digits
  std::string s(buf, r.ptr);
  const bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  const size_t epos = s.find('e');
  const int exp10 = std::atoi(s.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (s[i] != '.') digits.push_back(s[i]);
  std::string out = neg ? "-" : "";
  if (exp10 < -4 || exp10 >= 16) {  // Python switches to exponent notation outside 1e-4 <= |v| < 1e16
    out += digits[0];
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp10 < 0 ? '-' : '+', std::abs(exp10));
  } else if (exp10 < 0) {
    out += "0." + std::string(-exp10 - 1, '0') + digits;
  } else {
    const size_t int_len = static_cast<size_t>(exp10) + 1;
    if (digits.size() <= int_len) {
      out += digits + std::string(int_len - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, int_len) + "." + digits.substr(int_len);
    }
  }
  return out;
}

std::string feature_jsonl_line(const std::string& key, int64_t id, const float* row, int64_t dim,
                               const IdNames* names) {
  std::string line;
  line.reserve(32 + 24 * dim);
  line += "{\"";
  line += key;
  line += "\": ";
  line += id_to_json(id, names).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += ", \"feature\": [";
  for (int64_t j = 0; j < dim; ++j) {
    if (j) line += ", ";
    line += python_float_repr(static_cast<double>(row[j]));
  }
  line += "]}\n";
  return line;
}

void write_features_jsonl(const std::string& path, const std::string& key, const std::vector<int64_t>& ids,
                          const float* data, int64_t dim) {
  write_features_jsonl(path, key, ids, data, dim, nullptr);
}

void write_features_jsonl(const std::string& path, const std::string& key, const std::vector<int64_t>& ids,
                          const float* data, int64_t dim, const IdNames* names) {
  if (key != "image_id" && key != "text_id")
    throw UsageError("JSONL feature key must be image_id or text_id, not '" + key + "'");
  if (path == "-") {
    for (size_t i = 0; i < ids.size(); ++i) {
      std::string line = feature_jsonl_line(key, ids[i], data + i * dim, dim, names);
      if (std::fwrite(line.data(), 1, line.size(), stdout) != line.size()) throw_io_error("write", "<stdout>");
    }
    return;
  }
  AtomicFile f(path, false);
  for (size_t i = 0; i < ids.size(); ++i) f.write(feature_jsonl_line(key, ids[i], data + i * dim, dim, names));
  f.commit();
}

void write_features_jsonl(const std::string& path, const FeatureSet& fs) {
  if (fs.meta.kind != "image" && fs.meta.kind != "text")
    throw UsageError("cannot write JSONL features: kind is '" + fs.meta.kind + "', expected image or text");
  const std::string key = fs.meta.kind + "_id";
  if (fs.dtype == StoreDtype::f32) {
    write_features_jsonl(path, key, fs.ids, fs.f32(), fs.dim, fs.meta.names_or_null());
    return;
  }
  std::vector<float> all(static_cast<size_t>(fs.size()) * fs.dim);
  fs.copy_rows(0, fs.size(), all.data());
  write_features_jsonl(path, key, fs.ids, all.data(), fs.dim, fs.meta.names_or_null());
}

size_t for_each_json_line(const std::string& path, const std::function<void(int64_t, const nlohmann::json&)>& fn,
                          const BadLineHandler& on_bad) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io_error("open", path);
  std::string line;
  int64_t lineno = 0;
  size_t good = 0;
  // Stops (throws) without a handler; with one, reports the line under `reason` and goes on.
  auto bad = [&](const std::string& msg, const std::string& reason) {
    if (!on_bad) throw DataError(msg);
    on_bad(msg, reason);
  };
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      bad(fmt::format("{}:{}: not valid JSON ({})", path, lineno, e.what()), "invalid JSON");
      continue;
    }
    if (!j.is_object()) {
      bad(fmt::format("{}:{}: expected a JSON object", path, lineno), "not a JSON object");
      continue;
    }
    if (!on_bad) {
      fn(lineno, j);
      ++good;
      continue;
    }
    try {
      fn(lineno, j);
      ++good;
    } catch (const BadLine& e) {
      bad(e.what(), e.reason);
    } catch (const DataError& e) {
      bad(e.what(), "bad field");
    }
  }
  if (in.bad()) throw_io_error("read", path);
  return good;
}

FeatureSet read_features_jsonl(const std::string& path) {
  auto buf = std::make_shared<std::vector<float>>();
  FeatureSet fs;
  std::string key;
  std::unordered_map<int64_t, int64_t> line_of;
  bool normalized = true;
  for_each_json_line(path, [&](int64_t lineno, const nlohmann::json& j) {
    auto fail = [&](const std::string& what) { throw DataError(fmt::format("{}:{}: {}", path, lineno, what)); };
    if (key.empty()) {
      if (j.contains("image_id")) key = "image_id";
      else if (j.contains("text_id")) key = "text_id";
      else fail("no \"image_id\" or \"text_id\" key");
    }
    auto idit = j.find(key);
    if (idit == j.end()) fail(fmt::format("no \"{}\" key (the first line used \"{}\")", key, key));
    auto idv = id_from_json(*idit, &fs.meta.names);
    if (!idv) fail(fmt::format("\"{}\" is {}, expected an integer or a string id", key, idit->dump()));
    const int64_t id = *idv;
    auto fit = j.find("feature");
    if (fit == j.end() || !fit->is_array()) fail("no \"feature\" list");
    if (fs.ids.empty()) {
      if (fit->empty()) fail("empty \"feature\" list");
      fs.dim = static_cast<int64_t>(fit->size());
    } else if (static_cast<int64_t>(fit->size()) != fs.dim) {
      fail(fmt::format("feature has {} values, earlier lines have {}", fit->size(), fs.dim));
    }
    auto [it, fresh] = line_of.emplace(id, lineno);
    if (!fresh) fail(fmt::format("{} {} already appeared on line {}", key, idit->dump(), it->second));
    double norm2 = 0;
    for (const auto& v : *fit) {
      if (!v.is_number()) fail(fmt::format("feature value {} is not a number", v.dump()));
      float x = static_cast<float>(v.get<double>());
      if (!std::isfinite(x)) fail("feature value out of float32 range");
      norm2 += static_cast<double>(x) * x;
      buf->push_back(x);
    }
    if (std::abs(std::sqrt(norm2) - 1.0) > 1e-3) normalized = false;
    fs.ids.push_back(id);
  });
  if (fs.ids.empty()) throw DataError(fmt::format("'{}' holds no features (empty file?)", path));
  fs.dtype = StoreDtype::f32;
  fs.data = buf->data();
  fs.owner = buf;
  fs.meta.kind = key == "image_id" ? "image" : "text";
  fs.meta.normalized = normalized;
  fs.path = path;
  fs.format = "jsonl";
  return fs;
}

FeatureSet read_features(const std::string& path) {
  if (is_store_file(path)) return open_store(path);
  if (!file_exists(path)) throw IoError("cannot open '" + path + "': no such file");
  // Neither the store magic nor JSON: say which formats were expected instead of blaming the JSON.
  std::ifstream in(path, std::ios::binary);
  char head[8] = {0};
  in.read(head, sizeof head);
  const size_t got = static_cast<size_t>(in.gcount());
  size_t first = 0;
  while (first < got && (head[first] == ' ' || head[first] == '\t' || head[first] == '\r' || head[first] == '\n')) ++first;
  if (got > 0 && first < got && head[first] != '{') {
    std::string hex;
    for (size_t i = 0; i < got; ++i) hex += fmt::format("{:02x}", static_cast<unsigned char>(head[i]));
    throw DataError(fmt::format("'{}' is not a feature file: a store starts with the magic \"CLIPFEAT\" and a cn_clip "
                                "JSONL with '{{', this file starts with bytes {} (bad store magic, or not a clip-index "
                                "output; {})",
                                path, hex, kRemedy));
  }
  return read_features_jsonl(path);
}

}  // namespace clip
