// Minimal ZIP support for torch.save archives: a bounds-checked reader over a memory buffer (the
// mapped checkpoint) that only accepts stored (uncompressed) entries, and a streaming writer of
// stored entries whose data start on 64-byte boundaries, as PyTorch's own writer does. ZIP64
// records are read and written when sizes or offsets need them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "clip/base/crc32.h"

namespace clip {

class AtomicFile;


struct ZipEntry {
  std::string name;
  uint16_t method = 0;          // 0 = stored
  uint32_t crc = 0;
  uint64_t size = 0;            // uncompressed
  uint64_t compressed_size = 0;
  uint64_t data_offset = 0;     // of the entry's bytes inside the archive (stored entries only)
};

// Parses the central directory of `data[0, size)`. Throws ModelError("<what>: ...") on anything
// malformed; every entry's data range is checked to lie inside the buffer.
class ZipReader {
 public:
  ZipReader(const uint8_t* data, size_t size, std::string what);
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // nullptr when absent
  // Pointer to a stored entry's bytes; throws ModelError for a compressed entry.
  const uint8_t* data(const ZipEntry& e) const;
  // Same, and checks the CRC-32 (used for the small metadata entries).
  const uint8_t* checked_data(const ZipEntry& e) const;

 private:
  const uint8_t* base_;
  size_t size_;
  std::string what_;
  std::vector<ZipEntry> entries_;
};

// Writes stored entries one after the other to `out`, then the central directory on finish().
class ZipWriter {
 public:
  explicit ZipWriter(AtomicFile& out, bool force_zip64 = false) : out_(out), force_zip64_(force_zip64) {}
  // Adds an entry whose bytes are the concatenation of `parts` (pointer, length); the data start at
  // a multiple of `align` inside the archive.
  void add(const std::string& name, const std::vector<std::pair<const void*, size_t>>& parts, size_t align = 64);
  void add(const std::string& name, const void* data, size_t n, size_t align = 64) { add(name, {{data, n}}, align); }
  void finish();

 private:
  struct Rec {
    std::string name;
    uint32_t crc;
    uint64_t size, offset;
  };
  void put(const void* p, size_t n);
  AtomicFile& out_;
  bool force_zip64_;
  uint64_t pos_ = 0;
  std::vector<Rec> recs_;
};

}  // namespace clip
