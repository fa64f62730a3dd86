#include "clip/base/fileio.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "clip/base/error.h"

namespace clip {

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw_io_error("open", path);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  bool bad = std::ferror(f);
  std::fclose(f);
  if (bad) throw_io_error("read", path);
  return out;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string path_dirname(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string path_basename(const std::string& path) {
  std::string s = path;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  size_t k = s.rfind('/');
  return k == std::string::npos ? s : s.substr(k + 1);
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io_error("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    throw_io_error("stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw IoError("'" + path + "' is a directory, expected a file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      errno = e;
      throw_io_error("mmap", path);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

// The process umask, read without a race-prone umask() round trip where /proc allows it.
mode_t current_umask() {
  static const mode_t m = [] {
    if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
      char line[256];
      unsigned v = 0;
      bool found = false;
      while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "Umask: %o", &v) == 1) {
          found = true;
          break;
        }
      std::fclose(f);
      if (found) return static_cast<mode_t>(v);
    }
    const mode_t old = ::umask(022);
    ::umask(old);
    return old;
  }();
  return m;
}

}  // namespace

AtomicFile::AtomicFile(const std::string& path, bool binary) : path_(path) {
  (void)binary;  // POSIX: no text mode
  // mkstemp: a fresh name (O_CREAT | O_EXCL, so a planted file or symbolic link is never opened or
  // followed) in the destination's folder, so that the final rename stays on one file system.
  std::string tmpl = path + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) throw_io_error("create a temporary file for", path);
  tmp_ = tmpl;
  // The result gets the permissions the destination has (or a new file would get), not mkstemp's 0600.
  struct stat st;
  mode_t mode = 0666 & ~current_umask();
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) mode = st.st_mode & 07777;
  if (::fchmod(fd, mode) != 0) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp_.c_str());
    errno = e;
    throw_io_error("set the permissions of", tmp_);
  }
  fp_ = ::fdopen(fd, "wb");
  if (!fp_) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp_.c_str());
    errno = e;
    throw_io_error("open", tmp_);
  }
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    if (fp_) std::fclose(fp_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, fp_) != n) throw_io_error("write", tmp_);
}

void AtomicFile::commit() {
  if (committed_) return;
  if (!fp_) throw IoError("'" + tmp_ + "' was already closed after an earlier failure");
  if (std::fflush(fp_) != 0) throw_io_error("write", tmp_);
  if (::fsync(::fileno(fp_)) != 0 && errno != EINVAL) throw_io_error("fsync", tmp_);
  int rc = std::fclose(fp_);
  fp_ = nullptr;
  if (rc != 0) throw_io_error("close", tmp_);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) throw_io_error("rename to " + path_ + " from", tmp_);
  committed_ = true;
  // Make the rename itself durable.
  const int dfd = ::open(path_dirname(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

bool same_file(const std::string& a, const std::string& b) {
  if (a.empty() || b.empty()) return false;
  struct stat sa, sb;
  const bool ea = ::stat(a.c_str(), &sa) == 0, eb = ::stat(b.c_str(), &sb) == 0;
  if (ea && eb) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  if (ea != eb) return false;
  // Neither exists yet: compare the canonical folders and the names.
  char da[PATH_MAX], db[PATH_MAX];
  if (!::realpath(path_dirname(a).c_str(), da) || !::realpath(path_dirname(b).c_str(), db)) return a == b;
  return std::string(da) == db && path_basename(a) == path_basename(b);
}

void write_file_atomic(const std::string& path, const std::string& content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace clip
