#include "clip/base/fileio.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <vector>

#include "clip/base/error.h"
#include "clip/base/log.h"

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

// ---- guarded maps: SIGBUS on a vanished page becomes zeros + a damage flag ----------------------

namespace {

constexpr int kGuardSlots = 1024;
struct GuardSlot {
  std::atomic<uintptr_t> begin{0}, end{0};
  std::atomic<int> damaged{0};
  std::atomic<int> used{0};
};
GuardSlot g_slots[kGuardSlots];
struct sigaction g_prev_bus;
std::once_flag g_handler_once;

void sigbus_handler(int sig, siginfo_t* info, void* ctx) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& s : g_slots) {
    const uintptr_t b = s.begin.load(std::memory_order_acquire), e = s.end.load(std::memory_order_acquire);
    if (b == 0 || addr < b || addr >= e) continue;
    // The page is past the file's end now: put a private zero page there and remember it.
    const uintptr_t page = addr & ~uintptr_t(::sysconf(_SC_PAGESIZE) - 1);
    void* p = ::mmap(reinterpret_cast<void*>(page), size_t(::sysconf(_SC_PAGESIZE)), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != MAP_FAILED) {
      s.damaged.store(1, std::memory_order_release);
      return;
    }
    break;
  }
  // Not ours (or the repair failed): behave as before the handler was installed.
  if (g_prev_bus.sa_flags & SA_SIGINFO) {
    if (g_prev_bus.sa_sigaction) return g_prev_bus.sa_sigaction(sig, info, ctx);
  } else if (g_prev_bus.sa_handler != SIG_DFL && g_prev_bus.sa_handler != SIG_IGN && g_prev_bus.sa_handler) {
    return g_prev_bus.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void install_sigbus_handler() {
  std::call_once(g_handler_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigbus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_prev_bus);
  });
}

int register_guard(const uint8_t* data, size_t size) {
  install_sigbus_handler();
  for (int i = 0; i < kGuardSlots; ++i) {
    int expected = 0;
    if (!g_slots[i].used.compare_exchange_strong(expected, 1)) continue;
    g_slots[i].damaged.store(0);
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + size, std::memory_order_release);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    return i;
  }
  return -1;  // more than 1024 guarded maps at once: the extra ones rely on fstat only
}

void unregister_guard(int i) {
  if (i < 0) return;
  g_slots[i].begin.store(0, std::memory_order_release);
  g_slots[i].end.store(0, std::memory_order_release);
  g_slots[i].used.store(0, std::memory_order_release);
}

int64_t mtime_ns(const struct stat& st) { return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec; }

}  // namespace

MappedFile::MappedFile(const std::string& path, Mode mode) : path_(path) {
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
  mtime_ns_ = mtime_ns(st);
  const bool guarded = mode == Mode::guarded;
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, guarded ? PROT_READ | PROT_WRITE : PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      errno = e;
      throw_io_error("mmap", path);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  if (guarded) {
    fd_ = fd;
    if (data_) slot_ = register_guard(data_, size_);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  unregister_guard(slot_);
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

bool MappedFile::intact() const {
  if (fd_ < 0) return true;
  if (slot_ >= 0 && g_slots[slot_].damaged.load(std::memory_order_acquire)) return false;
  struct stat st;
  if (::fstat(fd_, &st) != 0) return false;
  return static_cast<size_t>(st.st_size) == size_ && mtime_ns(st) == mtime_ns_;
}

namespace {
void identity_from(const struct stat& st, FileIdentity& out) {
  out.dev = static_cast<uint64_t>(st.st_dev);
  out.ino = static_cast<uint64_t>(st.st_ino);
  out.size = static_cast<uint64_t>(st.st_size);
  out.mtime_ns = mtime_ns(st);
  out.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
}
}  // namespace

bool file_identity(const std::string& path, FileIdentity& out) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  identity_from(st, out);
  return true;
}

bool MappedFile::identity(FileIdentity& out) const {
  if (fd_ < 0) return file_identity(path_, out);
  struct stat st;
  if (::fstat(fd_, &st) != 0) return false;
  identity_from(st, out);
  return true;
}

void MappedFile::check_intact() const {
  if (!intact())
    throw IoError("'" + path_ + "' was truncated or rewritten while in use (it is mapped, not copied); results that "
                  "read it were discarded. Do not overwrite a checkpoint in place while a tool uses it: write a new "
                  "file and rename it over the old one, then run the tool again");
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

namespace {

// mkstemp's six replacement characters.
bool is_mkstemp_suffix(const std::string& s) {
  if (s.size() != 6) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return false;
  return true;
}

// Removes "<path>.tmp.XXXXXX" files that a killed writer of the same destination left behind.
// A live writer holds an exclusive flock on its temporary file until the rename (and the lock goes
// with the process, however it dies), so a file that can be locked has no writer. Only regular
// files of this user with one link are touched, never followed through a symbolic link, and only
// when at least kStaleSeconds old: a writer locks its file right after mkstemp, and a file that
// young may still be in that instant.
void remove_stale_temporaries(const std::string& path, const std::string& own_tmp) {
  constexpr int64_t kStaleSeconds = 2;
  const std::string dir = path_dirname(path);
  const std::string prefix = path_basename(path) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> candidates;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() == prefix.size() + 6 && name.compare(0, prefix.size(), prefix) == 0 &&
        is_mkstemp_suffix(name.substr(prefix.size())))
      candidates.push_back(path_join(dir, name));
  }
  ::closedir(d);
  const time_t now = std::time(nullptr);
  for (const std::string& c : candidates) {
    if (c == own_tmp) continue;
    const int fd = ::open(c.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st, now_st;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() && st.st_nlink == 1 &&
        int64_t(now) - int64_t(st.st_mtime) >= kStaleSeconds && ::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
        ::lstat(c.c_str(), &now_st) == 0 && now_st.st_dev == st.st_dev && now_st.st_ino == st.st_ino &&
        ::unlink(c.c_str()) == 0)
      log_info("removed '{}', a temporary file left by an interrupted write of '{}'", c, path);
    ::close(fd);  // releases the lock
  }
}

// A failed write, flush or sync of the temporary file, named by the destination the user gave.
[[noreturn]] void write_failed(const char* action, const std::string& dest, const std::string& tmp) {
  const int e = errno;
  throw IoError("cannot " + std::string(action) + " '" + dest + "': " + std::strerror(e) + " (in its temporary file '" +
                path_basename(tmp) + "', which is removed; '" + dest + "' is left as it was)");
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
  // Held until the rename: tells remove_stale_temporaries() of another process that this file is
  // being written. A second descriptor keeps the lock when the stream is closed before the rename.
  ::flock(fd, LOCK_EX | LOCK_NB);
  lock_fd_ = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  // The result gets the permissions the destination has (or a new file would get), not mkstemp's 0600.
  struct stat st;
  mode_t mode = 0666 & ~current_umask();
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) mode = st.st_mode & 07777;
  if (::fchmod(fd, mode) != 0) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp_.c_str());
    if (lock_fd_ >= 0) ::close(lock_fd_);
    lock_fd_ = -1;
    errno = e;
    throw_io_error("set the permissions of", tmp_);
  }
  fp_ = ::fdopen(fd, "wb");
  if (!fp_) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp_.c_str());
    if (lock_fd_ >= 0) ::close(lock_fd_);
    lock_fd_ = -1;
    errno = e;
    throw_io_error("open", tmp_);
  }
  remove_stale_temporaries(path, tmp_);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    if (fp_) std::fclose(fp_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, fp_) != n) write_failed("write", path_, tmp_);
}

void AtomicFile::commit() {
  if (committed_) return;
  if (!fp_) throw IoError("'" + tmp_ + "' was already closed after an earlier failure");
  if (std::fflush(fp_) != 0) write_failed("write", path_, tmp_);
  if (::fsync(::fileno(fp_)) != 0 && errno != EINVAL) write_failed("sync", path_, tmp_);
  int rc = std::fclose(fp_);
  fp_ = nullptr;
  if (rc != 0) write_failed("write", path_, tmp_);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) throw_io_error("rename to " + path_ + " from", tmp_);
  committed_ = true;
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
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

void make_dirs(const std::string& path) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) throw_io_error("create folder", cur);
  }
}

}  // namespace clip
