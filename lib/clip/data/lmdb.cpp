#include "clip/data/lmdb.h"

#include <fmt/format.h>
#ifdef CLIP_HAVE_LMDB
#include <lmdb.h>
#endif

#include <algorithm>
#include <charconv>
#include <map>
#include <unordered_map>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/ids.h"
#include "clip/base/log.h"
#include "clip/image/image.h"
#include "clip/io/pickle.h"

namespace clip {

bool is_lmdb_env(const std::string& dir) { return is_directory(dir) && file_exists(path_join(dir, "data.mdb")); }

#ifndef CLIP_HAVE_LMDB
// Built without liblmdb-dev: an LMDB folder is recognised and refused with the remedy.
struct LmdbEnv {
  std::string path;
  explicit LmdbEnv(const std::string& dir) : path(dir) {
    throw DataError(fmt::format("'{}' is an LMDB dataset, but this build reads no LMDB (it was built without "
                                "liblmdb-dev): install it and rebuild, or use the TSV/JSONL layout",
                                dir));
  }
  template <typename F>
  void for_each(F&&) {}
};
#else
// A read-only environment and one read transaction over its unnamed database.
struct LmdbEnv {
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  MDB_dbi dbi = 0;
  std::string path;
  explicit LmdbEnv(const std::string& dir) : path(dir) {
    if (!is_lmdb_env(dir))
      throw DataError(fmt::format("'{}' is not an LMDB folder (no data.mdb); cn_clip's build_lmdb_dataset.py makes "
                                  "{{data}}/lmdb/{{split}}/imgs and .../pairs",
                                  dir));
    check(mdb_env_create(&env), "create");
    check(mdb_env_set_mapsize(env, size_t(1) << 40), "set_mapsize");
    check(mdb_env_open(env, dir.c_str(), MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS | MDB_NORDAHEAD, 0644), "open");
    check(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, 0, &dbi), "dbi_open");
  }
  ~LmdbEnv() {
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
  }
  void check(int rc, const char* what) {
    if (rc != 0) {
      if (txn) mdb_txn_abort(txn), txn = nullptr;
      if (env) mdb_env_close(env), env = nullptr;
      throw DataError(fmt::format("LMDB '{}': {} failed: {}", path, what, mdb_strerror(rc)));
    }
  }
  // Calls fn(key, value) for every record, in key order.
  template <typename F>
  void for_each(F&& fn) {
    MDB_cursor* cur = nullptr;
    check(mdb_cursor_open(txn, dbi, &cur), "cursor_open");
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0) {
      fn(std::string_view(static_cast<const char*>(k.mv_data), k.mv_size),
         std::string_view(static_cast<const char*>(v.mv_data), v.mv_size));
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) check(rc, "cursor_get");
  }
};
#endif

namespace {

std::optional<int64_t> to_int(std::string_view s) {
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::string shown(std::string_view s) {
  std::string o;
  for (char c : s.substr(0, 40)) o += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  return o;
}

}  // namespace

LmdbImages::LmdbImages(const std::string& dir, ReadReport& report, bool strict)
    : path_(dir), env_(std::make_unique<LmdbEnv>(dir)) {
  std::optional<int64_t> declared;
  env_->for_each([&](std::string_view k, std::string_view v) {
    if (k == "num_images") {
      declared = to_int(v);
      if (!declared) report.add(fmt::format("{}: num_images '{}' is not an integer", dir, shown(v)), strict);
      return;
    }
    auto id = to_int(k);
    if (!id) {
      report.add(fmt::format("{}: key '{}' is not an integer image_id", dir, shown(k)), strict);
      return;
    }
    if (v.empty()) {
      report.add(fmt::format("{}: image {} has an empty base64 payload", dir, *id), strict);
      return;
    }
    entries_.push_back({*id, v.data(), v.size()});
  });
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.id < b.id; });
  // "0012" and "12" are different keys but the same integer id: keep the first.
  auto dup = std::adjacent_find(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.id == b.id; });
  if (dup != entries_.end()) {
    report.add(fmt::format("{}: image_id {} appears under two keys; keeping one", dir, dup->id), strict);
    entries_.erase(std::unique(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.id == b.id; }),
                   entries_.end());
  }
  if (!declared) log_warn("{}: no num_images record (not written by cn_clip's build_lmdb_dataset.py?)", dir);
  else if (*declared != static_cast<int64_t>(entries_.size()) + static_cast<int64_t>(report.skipped))
    log_warn("{}: num_images says {}, the database holds {} images", dir, *declared, entries_.size());
  report.kept += entries_.size();
}

LmdbImages::~LmdbImages() = default;

std::vector<uint8_t> LmdbImages::bytes(size_t i) const {
  try {
    return base64_decode(std::string_view(entries_[i].data, entries_[i].size));
  } catch (const DataError& e) {
    throw DataError(fmt::format("{}: {}", where(i), e.what()));
  }
}

std::string LmdbImages::where(size_t i) const { return fmt::format("{} (image_id {})", path_, entries_[i].id); }

std::optional<size_t> LmdbImages::find(int64_t id) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), id, [](const Entry& e, int64_t v) { return e.id < v; });
  if (it == entries_.end() || it->id != id) return std::nullopt;
  return static_cast<size_t>(it - entries_.begin());
}

std::vector<TextRecord> read_lmdb_pairs(const std::string& dir, ReadReport& report, bool strict) {
  LmdbEnv env(dir);
  std::map<int64_t, std::string> raw;  // pair index -> pickled value
  std::optional<int64_t> declared;
  env.for_each([&](std::string_view k, std::string_view v) {
    if (k == "num_samples") {
      declared = to_int(v);
      if (!declared) report.add(fmt::format("{}: num_samples '{}' is not an integer", dir, shown(v)), strict);
      return;
    }
    auto idx = to_int(k);
    if (!idx || *idx < 0) {
      report.add(fmt::format("{}: key '{}' is not a pair index", dir, shown(k)), strict);
      return;
    }
    raw.emplace(*idx, std::string(v));
  });
  if (!declared) throw DataError(fmt::format("{}: no num_samples record; not a pairs database written by cn_clip's "
                                             "build_lmdb_dataset.py",
                                             dir));
  if (*declared != static_cast<int64_t>(raw.size()))
    report.add(fmt::format("{}: num_samples says {}, the database holds {} pairs", dir, *declared, raw.size()), strict);
  std::vector<TextRecord> out;
  std::unordered_map<int64_t, size_t> by_text;
  int64_t expect = 0;
  for (const auto& [idx, val] : raw) {
    if (idx != expect) {
      report.add(fmt::format("{}: pairs {}..{} are missing", dir, expect, idx - 1), strict);
      expect = idx;
    }
    ++expect;
    const std::string what = fmt::format("{}: pair {}", dir, idx);
    PyPtr v;
    try {
      v = unpickle(reinterpret_cast<const uint8_t*>(val.data()), val.size(), what);
    } catch (const Error& e) {
      report.add(fmt::format("{}: {}", what, e.what()), strict);
      continue;
    }
    if (v->kind != PyValue::Kind::tuple || v->items.size() != 3 ||
        (v->items[0]->kind != PyValue::Kind::integer && v->items[0]->kind != PyValue::Kind::string) ||
        v->items[1]->kind != PyValue::Kind::integer || v->items[2]->kind != PyValue::Kind::string) {
      report.add(what + ": expected a pickled (image_id, text_id, text) tuple", strict);
      continue;
    }
    int64_t image_id = v->items[0]->kind == PyValue::Kind::integer ? v->items[0]->i : name_to_id(v->items[0]->s);
    if (v->items[0]->kind == PyValue::Kind::string) {
      if (auto n = to_int(v->items[0]->s)) image_id = *n;  // TSV ids pickled as text
    }
    const int64_t text_id = v->items[1]->i;
    const std::string& text = v->items[2]->s;
    auto [it, fresh] = by_text.emplace(text_id, out.size());
    if (fresh) {
      TextRecord r;
      r.text_id = text_id;
      r.text = text;
      r.line = static_cast<size_t>(idx) + 1;
      out.push_back(std::move(r));
    } else if (out[it->second].text != text) {
      report.add(fmt::format("{}: text_id {} has a different text than pair {}", what, text_id, out[it->second].line - 1),
                 strict);
      continue;
    }
    auto& ids = out[it->second].image_ids;
    if (std::find(ids.begin(), ids.end(), image_id) == ids.end()) ids.push_back(image_id);
  }
  report.kept += out.size();
  return out;
}

}  // namespace clip
