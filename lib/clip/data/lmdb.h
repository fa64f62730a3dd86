// cn_clip's LMDB dataset layout, as cn_clip/preprocess/build_lmdb_dataset.py writes it and
// cn_clip/training/data.py reads it:
//   {data}/lmdb/{split}/imgs   key "<image_id>" -> the base64 of the image file (the TSV's second
//                              column), plus key "num_images" -> the count as decimal text
//   {data}/lmdb/{split}/pairs  key "<n>" (0, 1, ...) -> pickle.dumps((image_id, text_id, text)), one per
//                              image of each text in the JSONL's order, plus "num_samples" -> the count
// The pairs are read with the toolkit's allow-listed unpickler (io/pickle.h), which executes nothing.
// Both databases are opened read-only without a lock file, and everything is read at open time: the
// images' base64 stay in the memory map (a read transaction is held for the object's lifetime).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "clip/data/dataset.h"

namespace clip {

struct LmdbEnv;

// True when `dir` is an LMDB environment folder (it holds data.mdb).
bool is_lmdb_env(const std::string& dir);

// The "imgs" database as an ImageSource, images in increasing id order. Bad keys (not an integer, or
// num_images disagreeing with the count) are reported like bad TSV lines.
class LmdbImages : public ImageSource {
 public:
  LmdbImages(const std::string& dir, ReadReport& report, bool strict);
  ~LmdbImages() override;
  size_t size() const override { return entries_.size(); }
  int64_t id(size_t i) const override { return entries_[i].id; }
  std::vector<uint8_t> bytes(size_t i) const override;
  std::string where(size_t i) const override;
  std::optional<size_t> find(int64_t id) const override;
  const std::string& path() const override { return path_; }

 private:
  struct Entry {
    int64_t id;
    const char* data;
    size_t size;
  };
  std::string path_;
  std::unique_ptr<struct LmdbEnv> env_;
  std::vector<Entry> entries_;  // sorted by id
};

// The "pairs" database turned back into texts: one TextRecord per text_id in the order of its first
// pair, with its image ids in pair order (TextRecord::line = the first pair's index + 1). Texts
// without images are not in an LMDB. Bad values (not a pickled (int|str, int, str) tuple, a text_id
// whose text differs between pairs, a missing index, num_samples disagreeing) are reported.
std::vector<TextRecord> read_lmdb_pairs(const std::string& dir, ReadReport& report, bool strict);

}  // namespace clip
