// Feature files: the toolkit's binary feature store (docs/store-format.md) and cn_clip's JSONL feature
// files ({"image_id"|"text_id": int, "feature": [floats]} per line). Torch-free: search.h turns a
// FeatureSet into tensors.
//
// A store is one file: a fixed 64-byte header (magic "CLIPFEAT", version, count, dim, dtype, flags),
// a JSON metadata block (kind, model, weights hash, preprocessing, source TSV), the int64 ids, then
// the row-major matrix aligned to 64 bytes. open_store() maps it read-only and validates every header
// field and the exact file size, so opening a million rows takes milliseconds and a truncated or
// foreign file is refused with a DataError that names it and says how to rebuild it.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "clip/base/error.h"
#include "clip/base/ids.h"

namespace clip {

enum class StoreDtype : uint32_t { f32 = 0, f16 = 1 };
const char* dtype_name(StoreDtype d);           // "f32" | "f16"
StoreDtype parse_store_dtype(const std::string& s);  // "f32"/"float32"/"fp32", "f16"/"float16"/"fp16"; else UsageError
size_t dtype_size(StoreDtype d);

// The file the features were computed from (an images TSV or texts JSONL), so that a reader can find
// the images again and notice when the file changed since.
struct SourceFile {
  std::string path;    // absolute when made by source_file_info()
  int64_t size = -1;   // bytes; -1 = unknown
  int64_t mtime = -1;  // seconds since the epoch; -1 = unknown
};
// Stats an existing file: absolute path, size, mtime. Throws IoError when it cannot be stat'ed.
SourceFile source_file_info(const std::string& path);
// True when the file still has the recorded size and mtime (unknown fields are not compared).
bool source_unchanged(const SourceFile& s);

struct StoreMeta {
  std::string kind;              // "image" | "text" (JSONL: from the id key)
  std::string model_name;        // e.g. "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
  std::string weights_hash;      // digest of the checkpoint the features came from
  nlohmann::json preprocess = nlohmann::json::object();  // resolution, mean, std, interpolation, context_length, vocab_sha256...
  std::vector<SourceFile> sources;
  bool normalized = true;        // every row has unit L2 norm (scores are cosines)
  nlohmann::json extra = nlohmann::json::object();  // anything else the writer wants kept (tool, version, split)
  // String ids (base/ids.h): the name of each id that has one. Stored as the metadata key "names", a
  // list in row order (a string, or null for an integer id); a reader checks name_to_id(name) == id.
  IdNames names;
  const IdNames* names_or_null() const { return names.empty() ? nullptr : &names; }
};

// A matrix of features with one int64 id per row, either memory-mapped from a store (zero copy) or
// owned (JSONL, or built in memory). Rows are float32 or IEEE float16, row-major, dim per row.
struct FeatureSet {
  std::vector<int64_t> ids;
  int64_t dim = 0;
  StoreDtype dtype = StoreDtype::f32;
  const void* data = nullptr;    // ids.size() * dim elements of dtype; valid while `owner` lives
  std::shared_ptr<const void> owner;  // the mapping or the owned buffer
  StoreMeta meta;
  std::string path;              // the file it was read from (empty when built in memory)
  std::string format;            // "store" | "jsonl" | "memory"

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
  const float* f32() const { return dtype == StoreDtype::f32 ? static_cast<const float*>(data) : nullptr; }
  const uint16_t* f16() const { return dtype == StoreDtype::f16 ? static_cast<const uint16_t*>(data) : nullptr; }
  float at(int64_t row, int64_t col) const;
  // Rows [begin, end) converted to float32 into out ((end-begin)*dim floats).
  void copy_rows(int64_t begin, int64_t end, float* out) const;
  std::vector<float> row(int64_t i) const;
  // Row index of an id, or -1. The id index is built on first use (not thread-safe on that first call).
  int64_t find(int64_t id) const;

 private:
  mutable std::unordered_map<int64_t, int64_t> index_;
};

// Wraps float32 rows already in memory (copied) as a FeatureSet of the given dtype.
FeatureSet make_feature_set(std::vector<int64_t> ids, const float* data, int64_t dim,
                            StoreDtype dtype = StoreDtype::f32, StoreMeta meta = {});

// ---- binary store ----------------------------------------------------------------------------------

constexpr uint32_t kStoreVersion = 1;

// Writes a store atomically (temporary file + rename): `ids.size()` rows of `dim` floats, converted to
// `dtype`. Throws DataError on a duplicate id, a non-finite value or dim <= 0; IoError on write errors.
void write_store(const std::string& path, const std::vector<int64_t>& ids, const float* data, int64_t dim,
                 StoreDtype dtype, const StoreMeta& meta);
void write_store(const std::string& path, const FeatureSet& fs);  // any FeatureSet, keeping its dtype and meta

// Maps and validates a store. Throws DataError (naming the file, the field and the remedy) for a
// foreign file, an unknown version, inconsistent header fields, a truncated or over-long file or bad
// metadata; IoError when it cannot be opened.
FeatureSet open_store(const std::string& path);

// True when the file starts with the store magic (false for a missing or short file).
bool is_store_file(const std::string& path);

// Adds rows to an existing store (rewritten atomically, in the store's dtype). A duplicate id is a
// DataError unless `replace`, which overwrites that row in place. The new rows' dim must match. When
// `source` has a path not yet listed it is added to meta.sources.
struct AppendOptions {
  bool replace = false;
  SourceFile source;
  IdNames names;  // names of the new rows' string ids
  nlohmann::json extra_patch;  // merged into meta.extra (JSON merge patch) when not null
};
void append_store(const std::string& path, const std::vector<int64_t>& ids, const float* data, int64_t dim,
                  const AppendOptions& opt = {});

// Writes a ∪ b to `out` (a's rows first, then b's). Requires the same dim and kind, and the same
// model_name and weights_hash unless `force`; duplicate ids are a DataError unless `replace` (b wins).
// The output dtype is a's unless `dtype` is given. `out` may be one of the inputs.
struct MergeOptions {
  bool force = false;
  bool replace = false;
  const StoreDtype* dtype = nullptr;
};
void merge_stores(const std::string& a, const std::string& b, const std::string& out, const MergeOptions& opt = {});

// ---- cn_clip JSONL ---------------------------------------------------------------------------------

// A bad JSONL line that fn reports under its own reason ("duplicate text_id") when lines are skipped.
class BadLine : public DataError {
 public:
  BadLine(const std::string& what, std::string why) : DataError(what), reason(std::move(why)) {}
  std::string reason;
};

// Calls fn(line number, object) for every non-blank line of a JSONL file. Throws DataError
// "<path>:<line>: ..." for invalid JSON or a value that is not an object; IoError when unreadable.
// With `on_bad` (--on-error skip), such lines and the lines for which fn throws DataError are
// reported to it with a reason (BadLine's, else "bad field") instead, and reading goes on.
// Returns the number of lines fn accepted.
using BadLineHandler = std::function<void(const std::string& message, const std::string& reason)>;
size_t for_each_json_line(const std::string& path, const std::function<void(int64_t, const nlohmann::json&)>& fn,
                          const BadLineHandler& on_bad = nullptr);

// Reads {"image_id"|"text_id": int or string, "feature": [numbers]} lines (string ids: base/ids.h, kept
// in meta.names) (blank lines skipped). Errors name the
// line: bad JSON, a missing/non-integer id, a key different from the first line's, a dim different from
// the first line's, a duplicate id, a non-finite value. meta.kind comes from the key; meta.normalized is
// true when every row's norm is within 1e-3 of 1.
FeatureSet read_features_jsonl(const std::string& path);

// Writes features exactly as cn_clip's extract_features.py does: one `{"<key>": id, "feature": [...]}`
// per line with Python's json.dumps spacing, each float32 printed as Python prints the equivalent
// double (shortest round-trip repr, "1.0" not "1"). `key` is "image_id" or "text_id". path "-" = stdout.
void write_features_jsonl(const std::string& path, const std::string& key, const std::vector<int64_t>& ids,
                          const float* data, int64_t dim);
void write_features_jsonl(const std::string& path, const FeatureSet& fs);  // key from fs.meta.kind
// With `names`, an id that has a name is written as that string ({"image_id": "cats/1.jpg", ...}).
void write_features_jsonl(const std::string& path, const std::string& key, const std::vector<int64_t>& ids,
                          const float* data, int64_t dim, const IdNames* names);
// One line (with '\n') of the above; exposed for streaming writers.
std::string feature_jsonl_line(const std::string& key, int64_t id, const float* row, int64_t dim,
                               const IdNames* names = nullptr);
// Python's repr() of the double equal to f (the digits json.dumps writes for a float32 feature).
std::string python_float_repr(double v);

// Either format, sniffed by the magic: a store is mapped, anything else read as JSONL.
FeatureSet read_features(const std::string& path);

}  // namespace clip
