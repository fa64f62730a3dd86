// Readers for the Flickr30k-CN / MUGE dataset layout used by cn_clip:
//   <dir>/<split>_imgs.tsv     one image per line: image_id<TAB>base64(encoded image file)
//   <dir>/<split>_texts.jsonl  one text per line:  {"text_id": int, "text": str, "image_ids": [int, ...]}
//
// The TSV is memory-mapped and indexed in one pass (id, byte offset, length, line number per image),
// so a several-GB training split costs a few tens of bytes of memory per image; base64 payloads are
// only touched when an image is actually decoded.
//
// Validation. Every bad line is described as "<file>:<line>: <what is wrong>". With strict=true (what
// every tool passes by default: --on-error stop) the first problem throws DataError with that
// message; with strict=false (--on-error skip) bad lines are skipped and counted per reason in a
// ReadReport, and summarize() logs the summary at the end.
//
// Texts are stored raw. cn_clip's datasets lower-case them and replace curly double quotes before
// tokenizing: consumers call clip::preprocess_text (tokenizer.h) themselves.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace clip {

class MappedFile;
struct Image;

// What a reader skipped, for the end-of-run summary.
// Data in the Flickr30k-CN layout: --data DIR --split NAME, or explicit --images / --texts.
struct DataOptions {
  std::string data_dir, split = "test", images, texts;
  bool strict = false;            // --strict: the default's explicit spelling (stop at the first bad item)
  std::string on_error = "stop";  // --on-error stop|skip
  // True when bad lines and images are skipped (--on-error skip) instead of stopping the run.
  bool skip_bad() const { return on_error == "skip"; }
  // Fills images/texts from data_dir/split when they were not given explicitly. UsageError when
  // --strict and --on-error skip are both given.
  void resolve(bool need_images, bool need_texts);
};

struct ReadReport {
  static constexpr size_t kMaxMessages = 50;  // messages kept verbatim; the rest are only counted
  std::vector<std::string> problems;           // "<file>:<line>: <message>" (duplicates listed last)
  size_t skipped = 0;                          // lines (or records) dropped, all of them
  size_t kept = 0;                             // lines (or records) accepted
  std::map<std::string, size_t> reasons;       // skipped lines per reason ("no tab", "duplicate id", ...)

  // Records a problem: throws DataError(msg) when strict, else counts it under `reason` and keeps
  // the message.
  void add(const std::string& msg, bool strict, const std::string& reason = "bad line");
  bool clean() const { return skipped == 0; }
  // log_warn: "<what>: skipped N bad line(s), kept M", the count per reason and the first messages.
  // Logs nothing when nothing was skipped.
  void summarize(const std::string& what) const;
  void merge(const ReadReport& other);
};

// Random access to an images TSV through a memory map.
//
// Accepted: LF or CRLF line ends, trailing blank lines, spaces around the id, a missing final
// newline. Problems (skipped, or DataError when strict): a NUL byte, a line that is not exactly two
// tab-separated fields, a non-integer / out-of-range id, an empty payload or one whose length is
// not a multiple of 4, a blank line before the end of the file, and a duplicate id (the first
// occurrence is kept). The base64 alphabet itself is checked when an image is decoded.
class ImageTsv {
 public:
  // Throws IoError if the file cannot be opened; see above for DataError.
  explicit ImageTsv(const std::string& path, bool strict = true);  // reports via summarize()
  ImageTsv(const std::string& path, ReadReport& report, bool strict);
  ~ImageTsv();
  ImageTsv(ImageTsv&&) noexcept;
  ImageTsv& operator=(ImageTsv&&) noexcept;

  size_t size() const { return entries_.size(); }
  int64_t id(size_t i) const { return entries_[i].id; }
  std::string_view base64(size_t i) const;  // the payload as stored (valid while this object lives)
  size_t line(size_t i) const { return entries_[i].line; }  // 1-based line number in the file
  std::optional<size_t> find(int64_t id) const;               // index of an id, O(log n)
  const std::string& path() const { return path_; }
  std::string where(size_t i) const;  // "<file>:<line> (image_id N)" for error messages

  // Decoded file bytes of image i (JPEG/PNG/...). Throws DataError naming file, line and id when
  // the payload is not valid base64.
  std::vector<uint8_t> bytes(size_t i) const;
  // bytes(i) decoded with clip::decode_image; DataError names file, line and id on failure.
  // Thread-safe (const, no shared mutable state): meant to be called from BatchPipeline workers.
  Image decode(size_t i) const;

 private:
  void build(ReadReport& report, bool strict);
  struct Entry {
    int64_t id;
    uint64_t offset;  // of the payload in the map
    uint32_t length;  // payload bytes
    uint32_t line;
  };
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  std::vector<Entry> entries_;                         // file order
  std::vector<std::pair<int64_t, uint32_t>> by_id_;  // (id, entry index) sorted by id
};

struct TextRecord {
  int64_t text_id = 0;
  std::string text;                // raw, as in the file (valid UTF-8)
  std::vector<int64_t> image_ids;  // may be empty (unlabelled test sets)
  size_t line = 0;                 // 1-based line number in the JSONL file
};

// Reads a texts JSONL file. Problems (skipped, or DataError when strict): invalid UTF-8, invalid
// JSON, a line that is not an object, a missing or non-integer text_id, a duplicate text_id, a
// missing or non-string text, an empty (all-whitespace) text, image_ids missing / not an array of
// integers / repeating an id, and, when `images` is given, an image id that is not in that TSV.
// Blank lines are ignored. Throws IoError if the file cannot be opened.
std::vector<TextRecord> read_texts(const std::string& path, ReadReport& report, bool strict,
                                   const ImageTsv* images = nullptr);

// Training pairs as cn_clip's LMDB "pairs" table: one (text index, image index) per image id of
// each text, in file order. Image ids missing from `images` are left out (read_texts with the
// same TSV has already reported them).
std::vector<std::pair<size_t, size_t>> make_pairs(const std::vector<TextRecord>& texts, const ImageTsv& images);

// One split of a dataset folder, read and cross-checked.
struct DatasetSplit {
  std::string dir, split;
  ImageTsv images;
  std::vector<TextRecord> texts;
  std::vector<std::pair<size_t, size_t>> pairs;  // make_pairs(texts, images)
  ReadReport report;                              // images + texts together
};
std::string split_images_path(const std::string& dir, const std::string& split);  // <dir>/<split>_imgs.tsv
std::string split_texts_path(const std::string& dir, const std::string& split);   // <dir>/<split>_texts.jsonl
// Opens both files of a split (DataError naming the missing file and the expected layout if one
// is absent), validates the texts against the images and logs the summary of skipped lines.
DatasetSplit open_split(const std::string& dir, const std::string& split, bool strict = true);

// UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). Returns the byte offset
// of the first invalid sequence, or npos when valid.
size_t find_invalid_utf8(std::string_view s);

}  // namespace clip
