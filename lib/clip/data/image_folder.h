// Photos on disk as an ImageSource: a folder searched recursively, or a file list (one path per line).
//
// A folder yields every regular file whose extension is .jpg/.jpeg/.png, plus .webp, .gif and .bmp
// when this build has libwebp / giflib / stb_image, in byte order of their paths; ids are the paths
// relative to the folder ("2024/cat.jpg"), mapped to int64 by name_to_id (base/ids.h). Files with
// another image extension (.tif, .heic, ...) are reported as skipped (an error with --strict); other files are
// ignored. A file list (a .txt/.lst/.list file, or any file whose first line has no tab) names one
// image per line; blank lines and lines starting with '#' are ignored; relative paths are taken
// from the list's folder, and the id is the path as written. A listed file that does not exist is
// reported like a bad line.
//
// Each file's size and modification time are kept, so that `clip-index --append` can add only
// new or changed files.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "clip/data/dataset.h"

namespace clip {

// True for an existing regular file that looks like a file list (see above), not an images TSV.
bool is_file_list(const std::string& path);

class ImageFolder : public ImageSource {
 public:
  ImageFolder(const std::string& path, ReadReport& report, bool strict);

  size_t size() const override { return files_.size(); }
  int64_t id(size_t i) const override { return files_[i].id; }
  std::vector<uint8_t> bytes(size_t i) const override;  // DataError naming the file when unreadable
  std::string where(size_t i) const override { return files_[i].full; }
  std::optional<size_t> find(int64_t id) const override;
  const std::string& path() const override { return path_; }
  std::string name(size_t i) const override { return files_[i].name; }
  const std::string& full_path(size_t i) const { return files_[i].full; }
  int64_t file_size(size_t i) const { return files_[i].size; }
  int64_t file_mtime(size_t i) const { return files_[i].mtime; }

 private:
  struct File {
    std::string name, full;
    int64_t id, size, mtime;
  };
  std::string path_;
  std::vector<File> files_;
  std::unordered_map<int64_t, size_t> by_id_;
};

}  // namespace clip
