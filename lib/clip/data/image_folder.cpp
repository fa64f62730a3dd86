#include "clip/data/image_folder.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/ids.h"
#include "clip/base/log.h"
#include "clip/image/image.h"

namespace clip {
namespace fs = std::filesystem;

namespace {

std::string lower_ext(const std::string& p) {
  std::string e = fs::path(p).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e;
}

// Whether this build decodes BMP (uncompressed and bit-field BMPs, headers checked; through
// stb_image, which a build may lack).
bool bmp_supported() {
#ifdef CLIP_HAVE_STB
  return true;
#else
  return false;
#endif
}

// Extensions decoded here, and image extensions that are recognised but not decoded.
bool supported_ext(const std::string& e) {
  if (e == ".jpg" || e == ".jpeg" || e == ".png") return true;
  if (e == ".webp") return image_format_supported("webp");
  if (e == ".gif") return image_format_supported("gif");
  if (e == ".bmp") return bmp_supported();
  return false;
}
bool image_ext(const std::string& e) {
  static const char* known[] = {".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".webp", ".gif", ".jxl", ".jp2", ".ico"};
  return std::find(std::begin(known), std::end(known), e) != std::end(known);
}

bool stat_file(const std::string& p, int64_t& size, int64_t& mtime) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  size = static_cast<int64_t>(st.st_size);
  mtime = static_cast<int64_t>(st.st_mtime);
  return true;
}

}  // namespace

bool is_file_list(const std::string& path) {
  if (is_directory(path) || !file_exists(path)) return false;
  const std::string e = lower_ext(path);
  if (e == ".txt" || e == ".lst" || e == ".list") return true;
  if (e == ".tsv") return false;
  std::ifstream in(path, std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    return line.find('\t') == std::string::npos && line.size() < 4096;
  }
  return false;
}

ImageFolder::ImageFolder(const std::string& path, ReadReport& report, bool strict) : path_(path) {
  std::vector<File> files;
  size_t unsupported = 0, other = 0;
  auto add = [&](const std::string& name, const std::string& full, const std::string& where) {
    File f{name, full, name_to_id(name), 0, 0};
    if (!stat_file(full, f.size, f.mtime)) {
      report.add(fmt::format("{}: '{}' is not a readable file", where, full), strict);
      return;
    }
    const std::string e = lower_ext(full);
    if (!supported_ext(e)) {
      if (image_ext(e)) {
        ++unsupported;
        report.add(fmt::format("{}: format '{}' is not read from folders (JPEG, PNG{}{}{} are)", full, e,
                               image_format_supported("webp") ? ", WebP" : "", image_format_supported("gif") ? ", GIF" : "",
                               bmp_supported() ? ", BMP" : ""),
                   strict);
      } else {
        ++other;
      }
      return;
    }
    files.push_back(std::move(f));
  };
  if (is_directory(path)) {
    std::error_code ec;
    fs::recursive_directory_iterator it(path, fs::directory_options::skip_permission_denied, ec), end;
    if (ec) throw IoError(fmt::format("cannot list folder '{}': {}", path, ec.message()));
    for (; it != end; it.increment(ec)) {
      if (ec) throw IoError(fmt::format("cannot list folder '{}': {}", path, ec.message()));
      if (!it->is_regular_file(ec)) continue;
      const std::string full = it->path().string();
      add(fs::relative(it->path(), path).generic_string(), full, path);
    }
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw_io_error("open", path);
    const std::string base = path_dirname(path);
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos || line[0] == '#') continue;
      const std::string full = line[0] == '/' ? line : path_join(base, line);
      add(line, full, fmt::format("{}:{}", path, lineno));
    }
  }
  std::sort(files.begin(), files.end(), [](const File& a, const File& b) { return a.name < b.name; });
  for (size_t i = 0; i < files.size(); ++i) {
    auto [it, fresh] = by_id_.emplace(files[i].id, i);
    if (!fresh) {
      report.add(fmt::format("{}: '{}' is listed twice; keeping the first", path, files[i].name), strict);
      continue;
    }
    files_.push_back(files[i]);
    it->second = files_.size() - 1;
  }
  report.kept += files_.size();
  if (unsupported) log_warn("{}: {} image file(s) in formats this build does not decode were left out", path, unsupported);
  if (other) log_info("{}: {} file(s) that are not images ignored", path, other);
  if (files_.empty()) throw DataError(fmt::format("'{}' holds no JPEG or PNG images", path));
}

std::vector<uint8_t> ImageFolder::bytes(size_t i) const {
  try {
    std::string b = read_file(files_[i].full);
    return std::vector<uint8_t>(b.begin(), b.end());
  } catch (const IoError& e) {
    throw DataError(fmt::format("{}: {}", files_[i].full, e.what()));
  }
}

std::optional<size_t> ImageFolder::find(int64_t id) const {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return std::nullopt;
  return it->second;
}

}  // namespace clip
