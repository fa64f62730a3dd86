#include "clip/base/digest_cache.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>

#include "clip/base/error.h"
#include "clip/base/sha256.h"

namespace clip {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

}  // namespace

std::string digest_cache_dir() {
  if (set("CLIP_NO_CACHE")) return "";
  if (set("CLIP_CACHE_DIR")) return std::getenv("CLIP_CACHE_DIR");
  if (set("XDG_CACHE_HOME")) return path_join(std::getenv("XDG_CACHE_HOME"), "clip-cpp");
  if (set("HOME")) return path_join(path_join(std::getenv("HOME"), ".cache"), "clip-cpp");
  return "";
}

DigestKey::DigestKey(const std::string& label, const std::vector<FileIdentity>& files, double min_age_s) {
  std::string key = label + "\n";
  const int64_t newest_ok = now_ns() - static_cast<int64_t>(min_age_s * 1e9);
  storable_ = !files.empty();
  for (const auto& f : files) {
    key += fmt::format("{} {} {} {} {}\n", f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns);
    if (f.mtime_ns > newest_ok || f.ctime_ns > newest_ok) storable_ = false;
  }
  hex_ = sha256_hex(key.data(), key.size()).substr(0, 32);
}

std::optional<std::string> DigestKey::lookup() const {
  const std::string dir = digest_cache_dir();
  if (dir.empty()) return std::nullopt;
  const std::string entry = path_join(path_join(dir, "digests"), hex_);
  try {
    if (!file_exists(entry)) return std::nullopt;
    std::string d = read_file(entry);
    while (!d.empty() && (d.back() == '\n' || d.back() == '\r')) d.pop_back();
    if (d.empty() || d.size() > 256 || d.find('\n') != std::string::npos) return std::nullopt;
    return d;
  } catch (const Error&) {
    return std::nullopt;
  }
}

void DigestKey::store(const std::string& digest) const {
  if (!storable_ || digest.empty() || digest.size() > 256 || digest.find('\n') != std::string::npos) return;
  const std::string dir = digest_cache_dir();
  if (dir.empty()) return;
  try {
    const std::string folder = path_join(dir, "digests");
    make_dirs(folder);
    write_file_atomic(path_join(folder, hex_), digest + "\n");
  } catch (const Error&) {
    // a read-only or full disk: the next run computes the digest again
  }
}

}  // namespace clip
