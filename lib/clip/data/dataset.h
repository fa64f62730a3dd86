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

// Random access to a set of encoded images with ids: an images TSV (ImageTsv), a folder or file list
// of photos (ImageFolder, image_folder.h), or cn_clip's LMDB "imgs" table (LmdbImages, lmdb.h).
// Every method is const and thread-safe: decode() is called from BatchPipeline workers.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual size_t size() const = 0;
  virtual int64_t id(size_t i) const = 0;
  // Encoded file bytes of image i. Throws DataError naming the image when they cannot be had.
  virtual std::vector<uint8_t> bytes(size_t i) const = 0;
  virtual std::string where(size_t i) const = 0;   // for messages: "<file>:<line> (image_id N)", a path...
  virtual std::optional<size_t> find(int64_t id) const = 0;
  virtual const std::string& path() const = 0;     // the TSV, folder, list or LMDB folder
  // The string id of image i (base/ids.h), or "" for an integer id.
  virtual std::string name(size_t i) const { return {}; }
  // bytes(i) decoded with clip::decode_image; DataError names the image on failure.
  Image decode(size_t i) const;
  // The same turned upright by its EXIF orientation (decode_image_upright): for display.
  Image decode_upright(size_t i) const;

 private:
  Image decode_as(size_t i, bool upright) const;
};

// Opens --images: a folder of photos or a file list (ImageFolder), an LMDB folder holding data.mdb,
// or else an images TSV. `on_error_skip` only matters for folders (unsupported files are counted).
std::unique_ptr<ImageSource> open_images(const std::string& path, ReadReport& report, bool strict);

// Random access to an images TSV through a memory map.
//
// Accepted: LF or CRLF line ends, trailing blank lines, spaces around the id, a missing final
// newline. Problems (skipped, or DataError when strict): a NUL byte, a line that is not exactly two
// tab-separated fields, a non-integer / out-of-range id, an empty payload or one whose length is
// not a multiple of 4, a blank line before the end of the file, and a duplicate id (the first
// occurrence is kept). The base64 alphabet itself is checked when an image is decoded.
class ImageTsv : public ImageSource {
 public:
  // Throws IoError if the file cannot be opened; see above for DataError.
  explicit ImageTsv(const std::string& path, bool strict = true);  // reports via summarize()
  ImageTsv(const std::string& path, ReadReport& report, bool strict);
  ~ImageTsv() override;
  ImageTsv(ImageTsv&&) noexcept;
  ImageTsv& operator=(ImageTsv&&) noexcept;

  size_t size() const override { return entries_.size(); }
  int64_t id(size_t i) const override { return entries_[i].id; }
  std::string_view base64(size_t i) const;  // the payload as stored (valid while this object lives)
  size_t line(size_t i) const { return entries_[i].line; }  // 1-based line number in the file
  std::optional<size_t> find(int64_t id) const override;      // index of an id, O(log n)
  const std::string& path() const override { return path_; }
  std::string where(size_t i) const override;  // "<file>:<line> (image_id N)" for error messages

  // Decoded file bytes of image i (JPEG/PNG/...). Throws DataError naming file, line and id when
  // the payload is not valid base64.
  std::vector<uint8_t> bytes(size_t i) const override;

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
  std::vector<int64_t> image_ids;  // may be empty (unlabelled test sets); string ids as in base/ids.h
  size_t line = 0;                 // 1-based line number in the JSONL file
};

// Reads a texts JSONL file. Problems (skipped, or DataError when strict): invalid UTF-8, invalid
// JSON, a line that is not an object, a missing or non-integer text_id, a duplicate text_id, a
// missing or non-string text, an empty (all-whitespace) text, image_ids missing / not an array of
// integers / repeating an id, and, when `images` is given, an image id that is not in that TSV.
// Blank lines are ignored. Throws IoError if the file cannot be opened.
// image_ids may hold strings (photo paths, base/ids.h).
std::vector<TextRecord> read_texts(const std::string& path, ReadReport& report, bool strict,
                                   const ImageSource* images = nullptr);

// Training pairs as cn_clip's LMDB "pairs" table: one (text index, image index) per image id of
// each text, in file order. Image ids missing from `images` are left out (read_texts with the
// same TSV has already reported them).
std::vector<std::pair<size_t, size_t>> make_pairs(const std::vector<TextRecord>& texts, const ImageSource& images);

// One split of a dataset folder, read and cross-checked: the TSV/JSONL files, or cn_clip's LMDB
// layout {dir}/lmdb/{split}/{imgs,pairs} (lmdb.h) when the TSV is absent and that folder exists.
struct DatasetSplit {
  std::string dir, split;
  std::unique_ptr<ImageSource> images;
  std::vector<TextRecord> texts;
  std::vector<std::pair<size_t, size_t>> pairs;  // make_pairs(texts, images)
  ReadReport report;                              // images + texts together
};
std::string split_images_path(const std::string& dir, const std::string& split);  // <dir>/<split>_imgs.tsv
std::string split_texts_path(const std::string& dir, const std::string& split);   // <dir>/<split>_texts.jsonl
// Opens both files of a split (DataError naming the missing file and the expected layout if one
// is absent), validates the texts against the images and logs the summary of skipped lines.
DatasetSplit open_split(const std::string& dir, const std::string& split, bool strict = true);
// True when {dir}/lmdb/{split} holds cn_clip's imgs and pairs databases.
bool has_lmdb_split(const std::string& dir, const std::string& split);
std::string lmdb_split_path(const std::string& dir, const std::string& split);  // {dir}/lmdb/{split}
// The texts of a split, from its JSONL or (LMDB layout) its pairs.
std::vector<TextRecord> read_split_texts(const std::string& dir, const std::string& split, ReadReport& report,
                                         bool strict);

// UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). Returns the byte offset
// of the first invalid sequence, or npos when valid.
size_t find_invalid_utf8(std::string_view s);

}  // namespace clip
