// Small file utilities shared by every reader and writer: whole-file reads, read-only memory maps,
// and atomic writes (temporary file in the same folder, then rename) so that nothing already
// written is ever left half-overwritten.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

namespace clip {

std::string read_file(const std::string& path);  // throws IoError
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string path_dirname(const std::string& path);   // "a/b/c.pt" -> "a/b", "c.pt" -> "."
std::string path_basename(const std::string& path);  // "a/b/c.pt" -> "c.pt", "a/hf-model/" -> "hf-model"
std::string path_join(const std::string& a, const std::string& b);
// Creates `path` and its missing parents (like mkdir -p); throws IoError naming the folder.
void make_dirs(const std::string& path);

// A file's identity and state as stat gives them: device, inode, size, modification and change
// times in nanoseconds (DigestKey's key). False when it cannot be read.
struct FileIdentity {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
};
bool file_identity(const std::string& path, FileIdentity& out);

// Read-only memory map of a whole file (an empty file maps to size 0, data nullptr).
//
// A guarded map (checkpoints, whose tensors are used in place) also survives the file being
// truncated or rewritten while it is mapped: a page that no longer exists would raise SIGBUS; a
// process-wide handler turns such a page into zeros and marks the map damaged, and check_intact()
// (also fstat: size and modification time against those at open) then throws IoError naming the
// file. Callers check after the work that read the map and discard that work's results. Guarded
// maps are private and writable: a write makes a private copy of the page (copy-on-write), so
// tensors used in place may be updated (training) without touching the file.
class MappedFile {
 public:
  enum class Mode { read_only, guarded };
  explicit MappedFile(const std::string& path, Mode mode = Mode::read_only);  // throws IoError
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Guarded maps: false once a page went missing or the file's size/mtime changed. Read-only maps: true.
  bool intact() const;
  // Throws IoError ("'<path>' was truncated or rewritten while in use ...") unless intact().
  void check_intact() const;
  // The mapped file's identity (guarded maps: of the open file itself, whatever its path names now).
  bool identity(FileIdentity& out) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;             // kept open by guarded maps, for fstat
  int64_t mtime_ns_ = 0;
  int slot_ = -1;           // index in the SIGBUS registry
};

// True when both paths name the same file (same device and inode when both exist; same canonical
// folder and name when neither does). For refusing an output that would overwrite an input.
bool same_file(const std::string& a, const std::string& b);

// Writes to a fresh "<path>.tmp.XXXXXX" (mkstemp: O_CREAT|O_EXCL in the destination's folder, so a
// planted file or symbolic link is never followed), then on commit() flushes, fsyncs, renames over
// <path> and fsyncs the folder. The result keeps the permissions of the file it replaces (a new
// file gets 0666 minus the umask). If commit() is never reached or fails, the destination is
// untouched and the temporary file is removed. A writer killed outright (kill -9, power loss) can
// leave its temporary file behind: the next AtomicFile for the same destination removes such files
// ("<path>.tmp." and six characters, regular, ours, at least 2 s old, and not locked: a live writer
// holds an flock on its temporary file until the rename).
// The whole of `content` written atomically to `path` (AtomicFile below); throws IoError.
void write_file_atomic(const std::string& path, const std::string& content);

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path, bool binary = true);  // throws IoError
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  std::FILE* fp() { return fp_; }
  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();  // flush, fsync, close, rename; throws IoError
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  std::FILE* fp_ = nullptr;
  int lock_fd_ = -1;  // holds the flock on the temporary file until the rename
  bool committed_ = false;
};

}  // namespace clip
