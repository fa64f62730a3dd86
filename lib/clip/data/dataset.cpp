#include "clip/data/dataset.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/ids.h"
#include "clip/data/image_folder.h"
#include "clip/data/lmdb.h"
#include "clip/image/image.h"
#include "clip/base/log.h"

namespace clip {

// ---------------------------------------------------------------------------------------------
// ReadReport

void ReadReport::add(const std::string& msg, bool strict, const std::string& reason) {
  if (strict)
    throw DataError(msg + " (the run stops at the first bad line, as with --strict: fix the line, or pass "
                          "--on-error skip to skip bad lines)");
  ++skipped;
  ++reasons[reason];
  if (problems.size() < kMaxMessages) problems.push_back(msg);
}

void ReadReport::merge(const ReadReport& other) {
  skipped += other.skipped;
  kept += other.kept;
  for (const auto& [r, n] : other.reasons) reasons[r] += n;
  for (const auto& p : other.problems) {
    if (problems.size() >= kMaxMessages) break;
    problems.push_back(p);
  }
}

void ReadReport::summarize(const std::string& what) const {
  if (skipped == 0) return;
  std::string msg = fmt::format("{}: skipped {} bad line(s), kept {}; by reason:", what, skipped, kept);
  for (const auto& [r, n] : reasons) msg += fmt::format(" {} x{};", r, n);
  size_t show = std::min<size_t>(problems.size(), 10);
  for (size_t i = 0; i < show; ++i) msg += "\n  " + problems[i];
  if (skipped > show) msg += fmt::format("\n  ... and {} more", skipped - show);
  msg += "\n  (--on-error skip was given; without it the run stops at the first bad line)";
  log_warn("{}", msg);
}

// ---------------------------------------------------------------------------------------------
// Helpers

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // stray continuation byte, overlong lead (C0/C1) or F5..FF
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      unsigned cc = p[i + k];
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Strict decimal int64 (optional sign), as Python's int() accepts after strip().
std::optional<int64_t> parse_int64(std::string_view s) {
  if (s.empty()) return std::nullopt;
  bool neg = false;
  size_t i = 0;
  if (s[0] == '+' || s[0] == '-') {
    neg = s[0] == '-';
    i = 1;
  }
  if (i == s.size()) return std::nullopt;
  uint64_t v = 0;
  const uint64_t limit = neg ? uint64_t(std::numeric_limits<int64_t>::max()) + 1 : uint64_t(std::numeric_limits<int64_t>::max());
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = uint64_t(c - '0');
    if (v > (limit - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
}

// Shows a short, printable excerpt of a bad field in messages.
std::string excerpt(std::string_view s, size_t max = 40) {
  std::string out;
  for (char c : s.substr(0, max)) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) out += fmt::format("\\x{:02x}", u);
    else out += c;
  }
  if (s.size() > max) out += "...";
  return out;
}

// Iterates over the lines of a memory-mapped file: [begin, end) without the '\n' and without a
// trailing '\r'. Line numbers are 1-based.
template <typename F>
void for_each_line(const MappedFile& map, F&& f) {
  const char* base = reinterpret_cast<const char*>(map.data());
  size_t size = map.size(), pos = 0, line = 0;
  if (size >= 3 && std::memcmp(base, "\xEF\xBB\xBF", 3) == 0) pos = 3;  // UTF-8 byte-order mark
  while (pos < size) {
    const void* nl = std::memchr(base + pos, '\n', size - pos);
    size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - base) : size;
    size_t stop = end;
    if (stop > pos && base[stop - 1] == '\r') --stop;
    ++line;
    f(std::string_view(base + pos, stop - pos), pos, line);
    pos = end + 1;
  }
}

// Positions of the non-blank lines; blank lines after the last non-blank one are tolerated.
bool is_blank(std::string_view s) { return trim(s).empty(); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// ImageTsv

ImageTsv::ImageTsv(const std::string& path, bool strict) : path_(path) {
  ReadReport report;
  build(report, strict);
  report.summarize(path_);
}

ImageTsv::ImageTsv(const std::string& path, ReadReport& report, bool strict) : path_(path) { build(report, strict); }

ImageTsv::~ImageTsv() = default;
ImageTsv::ImageTsv(ImageTsv&&) noexcept = default;
ImageTsv& ImageTsv::operator=(ImageTsv&&) noexcept = default;

void ImageTsv::build(ReadReport& report, bool strict) {
  map_ = std::make_unique<MappedFile>(path_);
  if (map_->size() >= (uint64_t(1) << 62)) throw DataError(path_ + ": file too large");
  const char* base = reinterpret_cast<const char*>(map_->data());
  // Blank lines are only a problem when something follows them, so they are held back until the
  // next non-blank line shows up.
  std::vector<size_t> pending_blank;
  for_each_line(*map_, [&](std::string_view text, size_t, size_t line) {
    if (is_blank(text)) {
      pending_blank.push_back(line);
      return;
    }
    for (size_t b : pending_blank) report.add(fmt::format("{}:{}: blank line", path_, b), strict, "blank line");
    pending_blank.clear();
    if (line > std::numeric_limits<uint32_t>::max()) throw DataError(path_ + ": more than 2^32 lines");
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
      report.add(fmt::format("{}:{}: NUL byte at column {} (not a text TSV line)", path_, line, nul + 1), strict,
                 "NUL byte");
      return;
    }
    size_t tab = text.find('\t');
    if (tab == std::string_view::npos) {
      report.add(fmt::format("{}:{}: expected 'image_id<TAB>base64', found no tab in '{}'", path_, line, excerpt(text)),
                 strict, "no tab");
      return;
    }
    std::string_view id_text = trim(text.substr(0, tab));
    std::string_view payload = text.substr(tab + 1);
    if (payload.find('\t') != std::string_view::npos) {
      report.add(fmt::format("{}:{}: expected 2 tab-separated fields (image_id, base64), found {}", path_, line,
                             1 + std::count(text.begin(), text.end(), '\t')),
                 strict, "wrong field count");
      return;
    }
    auto id = parse_int64(id_text);
    if (!id) {
      report.add(fmt::format("{}:{}: image_id '{}' is not an integer (or exceeds 64 bits)", path_, line, excerpt(id_text)), strict,
                 "bad id");
      return;
    }
    payload = trim(payload);
    if (payload.empty()) {
      report.add(fmt::format("{}:{}: image {} has an empty base64 payload", path_, line, *id), strict, "empty payload");
      return;
    }
    if (payload.size() % 4 != 0) {
      report.add(fmt::format("{}:{}: image {}: base64 payload length {} is not a multiple of 4 (truncated line?)",
                             path_, line, *id, payload.size()),
                 strict, "bad base64 length");
      return;
    }
    if (payload.size() > std::numeric_limits<uint32_t>::max()) {
      report.add(fmt::format("{}:{}: image {}: payload larger than 4 GiB", path_, line, *id), strict, "payload too large");
      return;
    }
    entries_.push_back(
        {*id, static_cast<uint64_t>(payload.data() - base), static_cast<uint32_t>(payload.size()), static_cast<uint32_t>(line)});
  });

  // Duplicates: sort (id, entry) once; the entry with the lowest line wins, later ones are
  // reported in line order and removed.
  by_id_.resize(entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) by_id_[i] = {entries_[i].id, static_cast<uint32_t>(i)};
  std::sort(by_id_.begin(), by_id_.end());
  std::vector<uint32_t> dups;
  for (size_t i = 1; i < by_id_.size(); ++i)
    if (by_id_[i].first == by_id_[i - 1].first) dups.push_back(by_id_[i].second);
  if (!dups.empty()) {
    std::sort(dups.begin(), dups.end());
    for (uint32_t d : dups) {
      auto first = std::lower_bound(by_id_.begin(), by_id_.end(), std::make_pair(entries_[d].id, uint32_t(0)));
      report.add(fmt::format("{}:{}: duplicate image_id {} (first seen on line {}); keeping the first", path_,
                             entries_[d].line, entries_[d].id, entries_[first->second].line),
                 strict, "duplicate id");
    }
    std::vector<char> drop(entries_.size(), 0);
    for (uint32_t d : dups) drop[d] = 1;
    std::vector<Entry> kept;
    kept.reserve(entries_.size() - dups.size());
    for (size_t i = 0; i < entries_.size(); ++i)
      if (!drop[i]) kept.push_back(entries_[i]);
    entries_.swap(kept);
    by_id_.resize(entries_.size());
    for (size_t i = 0; i < entries_.size(); ++i) by_id_[i] = {entries_[i].id, static_cast<uint32_t>(i)};
    std::sort(by_id_.begin(), by_id_.end());
  }
  entries_.shrink_to_fit();
  by_id_.shrink_to_fit();
  report.kept += entries_.size();
}

std::string_view ImageTsv::base64(size_t i) const {
  const Entry& e = entries_[i];
  return std::string_view(reinterpret_cast<const char*>(map_->data()) + e.offset, e.length);
}

std::optional<size_t> ImageTsv::find(int64_t id) const {
  auto it = std::lower_bound(by_id_.begin(), by_id_.end(), std::make_pair(id, uint32_t(0)));
  if (it == by_id_.end() || it->first != id) return std::nullopt;
  return it->second;
}

std::string ImageTsv::where(size_t i) const {
  return fmt::format("{}:{} (image_id {})", path_, entries_[i].line, entries_[i].id);
}

std::vector<uint8_t> ImageTsv::bytes(size_t i) const {
  try {
    return base64_decode(base64(i));
  } catch (const DataError& e) {
    throw DataError(fmt::format("{}: {}", where(i), e.what()));
  }
}

Image ImageSource::decode(size_t i) const { return decode_as(i, false); }
Image ImageSource::decode_upright(size_t i) const { return decode_as(i, true); }

Image ImageSource::decode_as(size_t i, bool upright) const {
  std::vector<uint8_t> b = bytes(i);
  try {
    return upright ? decode_image_upright(b.data(), b.size()) : decode_image(b.data(), b.size());
  } catch (const DataError& e) {
    throw DataError(fmt::format("{}: {}", where(i), e.what()));
  }
}

std::unique_ptr<ImageSource> open_images(const std::string& path, ReadReport& report, bool strict) {
  if (is_lmdb_env(path)) return std::make_unique<LmdbImages>(path, report, strict);
  if (is_directory(path) || is_file_list(path)) return std::make_unique<ImageFolder>(path, report, strict);
  return std::make_unique<ImageTsv>(path, report, strict);
}

// ---------------------------------------------------------------------------------------------
// Texts

namespace {

std::optional<int64_t> json_int(const nlohmann::json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned()) {
      auto u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    return v.get<int64_t>();
  }
  return std::nullopt;
}

}  // namespace

std::vector<TextRecord> read_texts(const std::string& path, ReadReport& report, bool strict, const ImageSource* images) {
  if (is_lmdb_env(path)) {
    auto texts = read_lmdb_pairs(path, report, strict);
    if (!images) return texts;
    std::vector<TextRecord> kept;
    for (auto& t : texts) {
      auto missing = std::find_if(t.image_ids.begin(), t.image_ids.end(), [&](int64_t id) { return !images->find(id); });
      if (missing != t.image_ids.end()) {
        report.add(fmt::format("{}: text_id {}: image_id {} is not in {}", path, t.text_id, *missing, images->path()),
                   strict);
        --report.kept;
        continue;
      }
      kept.push_back(std::move(t));
    }
    return kept;
  }
  MappedFile map(path);
  std::vector<TextRecord> out;
  std::unordered_set<int64_t> seen_ids;
  std::string img_name = images ? images->path() : std::string();
  for_each_line(map, [&](std::string_view text, size_t, size_t line) {
    if (is_blank(text)) return;
    auto bad = [&](const std::string& what, const char* reason) {
      report.add(fmt::format("{}:{}: {}", path, line, what), strict, reason);
    };
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
      bad(fmt::format("NUL byte at column {}", nul + 1), "NUL byte");
      return;
    }
    size_t badpos = find_invalid_utf8(text);
    if (badpos != std::string_view::npos) {
      bad(fmt::format("invalid UTF-8 at byte {} of the line (byte 0x{:02x}); the file must be UTF-8", badpos + 1,
                      static_cast<unsigned char>(text[badpos])), "invalid UTF-8");
      return;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::parse_error& e) {
      // e.byte is 1-based within the line.
      bad(fmt::format("invalid JSON at column {}: {}", e.byte, e.what()), "invalid JSON");
      return;
    } catch (const nlohmann::json::exception& e) {  // valid syntax it cannot hold: a number overflowing
      bad(fmt::format("invalid JSON: {}", e.what()), "invalid JSON");
      return;
    }
    if (!j.is_object()) {
      bad(fmt::format("expected a JSON object {{\"text_id\": int, \"text\": str, \"image_ids\": [int, ...]}}, found {}",
                      j.type_name()), "not an object");
      return;
    }
    TextRecord rec;
    rec.line = line;
    auto tid = j.find("text_id");
    if (tid == j.end()) {
      bad("missing key \"text_id\"", "missing key");
      return;
    }
    auto tid_v = json_int(*tid);
    if (!tid_v) {
      bad(fmt::format("\"text_id\" must be an integer, found {} {}", tid->type_name(), excerpt(tid->dump())), "bad id");
      return;
    }
    rec.text_id = *tid_v;
    auto txt = j.find("text");
    if (txt == j.end() || !txt->is_string()) {
      bad(fmt::format("text_id {}: {}", rec.text_id,
                      txt == j.end() ? std::string("missing key \"text\"")
                                     : fmt::format("\"text\" must be a string, found {}", txt->type_name())), "missing or mistyped key");
      return;
    }
    rec.text = txt->get<std::string>();
    if (trim(rec.text).empty()) {
      bad(fmt::format("text_id {}: empty text", rec.text_id), "empty text");
      return;
    }
    auto ids = j.find("image_ids");
    if (ids == j.end() || !ids->is_array()) {
      bad(fmt::format("text_id {}: {}", rec.text_id,
                      ids == j.end() ? std::string("missing key \"image_ids\" (use [] for unlabelled texts)")
                                     : fmt::format("\"image_ids\" must be an array, found {}", ids->type_name())), "missing or mistyped key");
      return;
    }
    rec.image_ids.reserve(ids->size());
    for (const auto& v : *ids) {
      auto iv = id_from_json(v);
      if (!iv) {
        bad(fmt::format("text_id {}: image id {} is not an integer (nor a path-like string id)", rec.text_id, excerpt(v.dump())), "bad image id");
        return;
      }
      if (std::find(rec.image_ids.begin(), rec.image_ids.end(), *iv) != rec.image_ids.end()) {
        bad(fmt::format("text_id {}: image id {} listed twice", rec.text_id, excerpt(v.dump())), "duplicate image id");
        return;
      }
      if (images && !images->find(*iv)) {
        bad(fmt::format("text_id {}: image_id {} is not in {}", rec.text_id, excerpt(v.dump()), img_name), "unknown image id");
        return;
      }
      rec.image_ids.push_back(*iv);
    }
    if (!seen_ids.insert(rec.text_id).second) {
      auto first = std::find_if(out.begin(), out.end(), [&](const TextRecord& r) { return r.text_id == rec.text_id; });
      bad(fmt::format("duplicate text_id {} (first seen on line {}); keeping the first", rec.text_id,
                      first != out.end() ? first->line : 0), "duplicate id");
      return;
    }
    out.push_back(std::move(rec));
  });
  report.kept += out.size();
  return out;
}

std::vector<std::pair<size_t, size_t>> make_pairs(const std::vector<TextRecord>& texts, const ImageSource& images) {
  std::vector<std::pair<size_t, size_t>> pairs;
  pairs.reserve(texts.size());
  for (size_t t = 0; t < texts.size(); ++t)
    for (int64_t id : texts[t].image_ids)
      if (auto i = images.find(id)) pairs.emplace_back(t, *i);
  return pairs;
}

std::string split_images_path(const std::string& dir, const std::string& split) {
  return path_join(dir, split + "_imgs.tsv");
}
std::string split_texts_path(const std::string& dir, const std::string& split) {
  return path_join(dir, split + "_texts.jsonl");
}

std::string lmdb_split_path(const std::string& dir, const std::string& split) {
  return path_join(path_join(dir, "lmdb"), split);
}

bool has_lmdb_split(const std::string& dir, const std::string& split) {
  const std::string d = lmdb_split_path(dir, split);
  return is_lmdb_env(path_join(d, "imgs")) && is_lmdb_env(path_join(d, "pairs"));
}

std::vector<TextRecord> read_split_texts(const std::string& dir, const std::string& split, ReadReport& report,
                                         bool strict) {
  DataOptions d;
  d.data_dir = dir;
  d.split = split;
  d.resolve(false, true);
  return read_texts(d.texts, report, strict);
}

DatasetSplit open_split(const std::string& dir, const std::string& split, bool strict) {
  if (!is_directory(dir)) throw DataError(fmt::format("dataset folder '{}' does not exist or is not a folder", dir));
  std::string img_path = split_images_path(dir, split), txt_path = split_texts_path(dir, split);
  if (!file_exists(img_path) && has_lmdb_split(dir, split)) {
    img_path = path_join(lmdb_split_path(dir, split), "imgs");
    txt_path = path_join(lmdb_split_path(dir, split), "pairs");
  }
  for (const auto& p : {img_path, txt_path})
    if (!file_exists(p))
      throw DataError(fmt::format("'{}' not found: a dataset folder holds <split>_imgs.tsv (image_id<TAB>base64) and "
                                  "<split>_texts.jsonl ({{\"text_id\", \"text\", \"image_ids\"}}) for split '{}', "
                                  "or cn_clip's LMDB folders lmdb/<split>/imgs and lmdb/<split>/pairs",
                                  p, split));
  ReadReport img_report, txt_report;
  std::unique_ptr<ImageSource> images = open_images(img_path, img_report, strict);
  auto texts = read_texts(txt_path, txt_report, strict, images.get());
  auto pairs = make_pairs(texts, *images);
  img_report.summarize(img_path);
  txt_report.summarize(txt_path);
  ReadReport all = img_report;
  all.merge(txt_report);
  log_info("{} split '{}': {} images, {} texts, {} pairs", dir, split, images->size(), texts.size(), pairs.size());
  return DatasetSplit{dir, split, std::move(images), std::move(texts), std::move(pairs), std::move(all)};
}

void DataOptions::resolve(bool need_images, bool need_texts) {
  if (strict && skip_bad())
    throw UsageError("--strict (stop at the first bad line or image, the default) contradicts --on-error skip: give one");
  if (!data_dir.empty()) {
    const bool lmdb = !file_exists(split_images_path(data_dir, split)) &&
                      !file_exists(split_texts_path(data_dir, split)) && has_lmdb_split(data_dir, split);
    const std::string l = lmdb_split_path(data_dir, split);
    if (need_images && images.empty()) images = lmdb ? path_join(l, "imgs") : split_images_path(data_dir, split);
    if (need_texts && texts.empty()) texts = lmdb ? path_join(l, "pairs") : split_texts_path(data_dir, split);
  }
}

}  // namespace clip
