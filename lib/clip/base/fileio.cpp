#include "clip/base/fileio.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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

AtomicFile::AtomicFile(const std::string& path, bool binary) : path_(path) {
  tmp_ = path + ".tmp." + std::to_string(::getpid());
  fp_ = std::fopen(tmp_.c_str(), binary ? "wb" : "w");
  if (!fp_) throw_io_error("create", tmp_);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    if (fp_) std::fclose(fp_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, fp_) != n) throw_io_error("write", tmp_);
}

void AtomicFile::commit() {
  if (committed_) return;
  if (std::fflush(fp_) != 0) throw_io_error("write", tmp_);
  ::fsync(::fileno(fp_));
  int rc = std::fclose(fp_);
  fp_ = nullptr;
  if (rc != 0) throw_io_error("close", tmp_);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) throw_io_error("rename to " + path_ + " from", tmp_);
  committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace clip
