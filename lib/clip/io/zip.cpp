#include "clip/io/zip.h"

#include <algorithm>
#include <cstring>

#include "clip/base/byteorder.h"
#include "clip/base/crc32.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"

namespace clip {

namespace {


void wr16(std::string& s, uint16_t v) {
  s.push_back(char(v & 0xFF));
  s.push_back(char(v >> 8));
}
void wr32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xFF));
}
void wr64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xFF));
}

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;
constexpr uint64_t k32Max = 0xFFFFFFFFu;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01, like PyTorch's writer: reproducible files

}  // namespace


// ---------------------------------------------------------------------------------------------
// Reader

ZipReader::ZipReader(const uint8_t* data, size_t size, std::string what) : base_(data), size_(size), what_(std::move(what)) {
  auto fail = [&](const std::string& msg) -> ModelError {
    return ModelError(what_ + ": " + msg + " (the file is truncated or damaged; re-download or re-save it)");
  };
  if (size_ < 22) throw fail("too small to be a zip archive (" + std::to_string(size_) + " bytes)");
  // End of central directory: the last 22 bytes plus an optional comment of up to 65535 bytes. The
  // last record whose comment ends exactly at the end of the file is the one (a comment may itself
  // hold the signature).
  size_t eocd = SIZE_MAX;
  size_t lowest = size_ >= 22 + 65535 ? size_ - 22 - 65535 : 0;
  for (size_t p = size_ - 22 + 1; p-- > lowest;) {
    if (le32(base_ + p) == kEndSig && p + 22 + le16(base_ + p + 20) == size_) {
      eocd = p;
      break;
    }
  }
  if (eocd == SIZE_MAX) throw fail("not a complete zip archive (end of central directory record not found)");
  const uint8_t* e = base_ + eocd;
  if (le16(e + 4) != 0 || le16(e + 6) != 0 || le16(e + 8) != le16(e + 10))
    throw ModelError(what_ + ": a multi-part (spanned or split) zip archive, which is not supported");
  uint64_t n_entries = le16(e + 10);
  uint64_t cd_size = le32(e + 12);
  uint64_t cd_offset = le32(e + 16);
  size_t cd_limit = eocd;  // the central directory ends before the (ZIP64) end records
  if (eocd >= 20 && le32(e - 20) == kLocator64Sig) {
    const uint8_t* loc = e - 20;
    uint64_t z64 = le64(loc + 8);
    if (le32(loc + 4) != 0 || le32(loc + 16) > 1)
      throw ModelError(what_ + ": a multi-part (spanned or split) zip archive, which is not supported");
    if (z64 > eocd - 20 || eocd - 20 - z64 < 56 || le32(base_ + z64) != kEnd64Sig)
      throw fail("bad ZIP64 end of central directory (not where its locator points)");
    const uint8_t* r = base_ + z64;
    const uint64_t rec_size = le64(r + 4);  // of the rest of the record
    if (rec_size < 44 || rec_size > eocd - 20 - z64 - 12)
      throw fail("bad ZIP64 end of central directory (its size field is " + std::to_string(rec_size) + ")");
    if (le32(r + 16) != 0 || le32(r + 20) != 0 || le64(r + 24) != le64(r + 32))
      throw ModelError(what_ + ": a multi-part (spanned or split) zip archive, which is not supported");
    // The 32-bit record must either agree or hold the "see ZIP64" marker.
    const uint64_t n64 = le64(r + 32), size64 = le64(r + 40), off64 = le64(r + 48);
    if ((n_entries != 0xFFFF && n_entries != n64) || (cd_size != k32Max && cd_size != size64) ||
        (cd_offset != k32Max && cd_offset != off64))
      throw fail("the ZIP64 end of central directory disagrees with the end of central directory");
    n_entries = n64;
    cd_size = size64;
    cd_offset = off64;
    cd_limit = size_t(z64);
  } else if (n_entries == 0xFFFF || cd_size == k32Max || cd_offset == k32Max) {
    throw fail("the end of central directory points to ZIP64 records that are missing");
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
    throw fail("central directory lies outside the file (or overlaps its end records)");
  if (n_entries > cd_size / 46) throw fail("central directory too small for " + std::to_string(n_entries) + " entries");
  entries_.reserve(size_t(n_entries));
  struct Span {
    uint64_t begin, end;
    size_t entry;
  };
  std::vector<Span> spans;
  spans.reserve(size_t(n_entries));
  const uint8_t* p = base_ + cd_offset;
  const uint8_t* end = p + cd_size;
  for (uint64_t i = 0; i < n_entries; ++i) {
    if (end - p < 46 || le32(p) != kCentralSig) throw fail("bad central directory entry #" + std::to_string(i));
    ZipEntry e;
    const uint16_t flags = le16(p + 8);
    e.method = le16(p + 10);
    e.crc = le32(p + 16);
    e.compressed_size = le32(p + 20);
    e.size = le32(p + 24);
    size_t nlen = le16(p + 28), elen = le16(p + 30), clen = le16(p + 32);
    uint32_t disk = le16(p + 34);
    uint64_t local = le32(p + 42);
    if (size_t(end - p) < 46 + nlen + elen + clen) throw fail("central directory entry #" + std::to_string(i) + " overruns");
    e.name.assign(reinterpret_cast<const char*>(p + 46), nlen);
    // ZIP64 extended information: the fields whose 32-bit value is 0xFFFFFFFF (0xFFFF for the disk)
    // follow in the order usize, csize, offset, disk.
    bool z64_seen = false;
    const uint8_t* x = p + 46 + nlen;
    const uint8_t* xend = x + elen;
    while (x < xend) {
      if (xend - x < 4) throw fail("malformed extra field in entry '" + e.name + "'");
      uint16_t id = le16(x), len = le16(x + 2);
      if (size_t(xend - x - 4) < len) throw fail("malformed extra field in entry '" + e.name + "'");
      if (id == 0x0001) {
        if (z64_seen) throw fail("two ZIP64 fields in entry '" + e.name + "'");
        z64_seen = true;
        const uint8_t* f = x + 4;
        const uint8_t* fend = f + len;
        auto take = [&](uint64_t& v) {
          if (v != k32Max) return;
          if (fend - f < 8) throw fail("short ZIP64 field in entry '" + e.name + "'");
          v = le64(f);
          f += 8;
        };
        take(e.size);
        take(e.compressed_size);
        take(local);
        if (disk == 0xFFFF) {
          if (fend - f < 4) throw fail("short ZIP64 field in entry '" + e.name + "'");
          disk = le32(f);
        }
      }
      x += 4 + len;
    }
    if (e.size == k32Max || e.compressed_size == k32Max || local == k32Max)
      throw fail("entry '" + e.name + "' lacks the ZIP64 field its sizes or offset point to");
    if (disk != 0) throw ModelError(what_ + ": entry '" + e.name + "' is on another disk of a multi-part zip archive, which is not supported");
    if (flags & (1 | 64 | 8192)) throw ModelError(what_ + ": entry '" + e.name + "' is encrypted, which is not supported");
    if (local > size_ || size_ - local < 30 || le32(base_ + local) != kLocalSig)
      throw fail("local header of entry '" + e.name + "' is missing");
    // The local header must describe the same entry as the central directory.
    const uint8_t* lh = base_ + local;
    const uint16_t lflags = le16(lh + 6), lmethod = le16(lh + 8);
    const size_t lnlen = le16(lh + 26), lelen = le16(lh + 28);
    const uint64_t start = local + 30 + lnlen + uint64_t(lelen);
    if (start > size_) throw fail("local header of entry '" + e.name + "' extends past the end of the file");
    if (lnlen != nlen || std::memcmp(lh + 30, e.name.data(), nlen) != 0)
      throw fail("the local header at offset " + std::to_string(local) + " names another entry than the central directory's '" + e.name + "'");
    if (lmethod != e.method)
      throw fail("local header and central directory disagree on the compression method of entry '" + e.name + "'");
    if (!((flags | lflags) & 8)) {  // without a data descriptor the local header holds CRC and sizes
      uint64_t lcsize = le32(lh + 18), lsize = le32(lh + 22);
      if (lcsize == k32Max || lsize == k32Max) {  // both then follow in the local ZIP64 field
        const uint8_t* lx = lh + 30 + lnlen;
        const uint8_t* lxend = lx + lelen;
        bool found = false;
        while (lxend - lx >= 4) {
          uint16_t id = le16(lx), len = le16(lx + 2);
          if (size_t(lxend - lx - 4) < len) break;
          if (id == 0x0001 && len >= 16) {
            lsize = le64(lx + 4);
            lcsize = le64(lx + 12);
            found = true;
            break;
          }
          lx += 4 + len;
        }
        if (!found) throw fail("local header of entry '" + e.name + "' lacks its ZIP64 sizes");
      }
      if (le32(lh + 14) != e.crc || lcsize != e.compressed_size || lsize != e.size)
        throw fail("local header and central directory disagree on the CRC or sizes of entry '" + e.name + "'");
    }
    if (e.compressed_size > size_ - start)
      throw fail("data of entry '" + e.name + "' extends past the end of the file");
    e.data_offset = start;
    spans.push_back({local, start + e.compressed_size, entries_.size()});
    entries_.push_back(std::move(e));
    p += 46 + nlen + elen + clen;
  }
  if (p != end) throw fail("the central directory is " + std::to_string(cd_size) + " bytes but its entries take " +
                           std::to_string(p - (base_ + cd_offset)));
  // Every entry (local header and data) lies before the central directory, and no two overlap:
  // an archive whose entries share bytes reads differently in different readers.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < spans.size(); ++i) {
    if (spans[i].end > cd_offset)
      throw fail("entry '" + entries_[spans[i].entry].name + "' overlaps the central directory");
    if (i + 1 < spans.size() && spans[i].end > spans[i + 1].begin)
      throw fail("entries '" + entries_[spans[i].entry].name + "' and '" + entries_[spans[i + 1].entry].name + "' overlap");
  }
  // Names are unique: a reader that takes the first of two and one that takes the last would
  // otherwise see different archives.
  std::vector<const std::string*> names;
  names.reserve(entries_.size());
  for (const auto& en : entries_) names.push_back(&en.name);
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  for (size_t i = 1; i < names.size(); ++i)
    if (*names[i] == *names[i - 1]) throw fail("entry '" + *names[i] + "' appears twice");
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

const uint8_t* ZipReader::data(const ZipEntry& e) const {
  if (e.method != 0)
    throw ModelError(what_ + ": zip entry '" + e.name + "' is compressed (method " + std::to_string(e.method) +
                     "); torch.save never compresses, so this archive was repacked by another tool. "
                     "Re-save it with torch.save or repack it without compression (zip -0)");
  if (e.compressed_size != e.size)
    throw ModelError(what_ + ": stored zip entry '" + e.name + "' has inconsistent sizes (damaged file)");
  return base_ + e.data_offset;
}

const uint8_t* ZipReader::checked_data(const ZipEntry& e) const {
  const uint8_t* d = data(e);
  if (crc32(d, size_t(e.size)) != e.crc)
    throw ModelError(what_ + ": CRC mismatch in zip entry '" + e.name + "' (the file is damaged; re-download or re-save it)");
  return d;
}

// ---------------------------------------------------------------------------------------------
// Writer

void ZipWriter::put(const void* p, size_t n) {
  out_.write(p, n);
  pos_ += n;
}

void ZipWriter::add(const std::string& name, const std::vector<std::pair<const void*, size_t>>& parts, size_t align) {
  if (name.size() > 0xFFFF) throw ModelError("zip entry name too long: " + name.substr(0, 80) + "...");
  uint64_t size = 0;
  uint32_t crc = 0;
  for (const auto& [ptr, n] : parts) {
    size += n;
    crc = crc32_update(crc, ptr, n);
  }
  bool z64 = force_zip64_ || size >= k32Max || pos_ >= k32Max;
  std::string h;
  wr32(h, kLocalSig);
  wr16(h, z64 ? 45 : 20);
  wr16(h, 0);  // flags: sizes are known up front, so no data descriptor
  wr16(h, 0);  // stored
  wr16(h, 0);
  wr16(h, kDosDate);
  wr32(h, crc);
  wr32(h, z64 ? uint32_t(k32Max) : uint32_t(size));
  wr32(h, z64 ? uint32_t(k32Max) : uint32_t(size));
  wr16(h, uint16_t(name.size()));
  size_t extra_pos = h.size();
  wr16(h, 0);  // extra length, patched below
  h += name;
  std::string extra;
  if (z64) {
    wr16(extra, 0x0001);
    wr16(extra, 16);
    wr64(extra, size);
    wr64(extra, size);
  }
  if (align > 1) {
    // Padding extra field ("FB" + length + filler) as PyTorch writes it, so that tensor data can
    // be mapped and used in place.
    uint64_t start = pos_ + h.size() + extra.size() + 4;
    size_t pad = size_t((align - start % align) % align);
    extra += "FB";
    wr16(extra, uint16_t(pad));
    extra.append(pad, 'Z');
  }
  h[extra_pos] = char(extra.size() & 0xFF);
  h[extra_pos + 1] = char(extra.size() >> 8);
  h += extra;
  Rec r{name, crc, size, pos_};
  put(h.data(), h.size());
  for (const auto& [ptr, n] : parts) put(ptr, n);
  recs_.push_back(std::move(r));
}

void ZipWriter::finish() {
  uint64_t cd_start = pos_;
  for (const auto& r : recs_) {
    bool big_size = force_zip64_ || r.size >= k32Max;
    bool big_off = force_zip64_ || r.offset >= k32Max;
    std::string extra;
    if (big_size || big_off) {
      std::string f;
      if (big_size) {
        wr64(f, r.size);
        wr64(f, r.size);
      }
      if (big_off) wr64(f, r.offset);
      wr16(extra, 0x0001);
      wr16(extra, uint16_t(f.size()));
      extra += f;
    }
    std::string c;
    wr32(c, kCentralSig);
    wr16(c, extra.empty() ? 20 : 45);  // version made by
    wr16(c, extra.empty() ? 20 : 45);  // version needed
    wr16(c, 0);
    wr16(c, 0);
    wr16(c, 0);
    wr16(c, kDosDate);
    wr32(c, r.crc);
    wr32(c, big_size ? uint32_t(k32Max) : uint32_t(r.size));
    wr32(c, big_size ? uint32_t(k32Max) : uint32_t(r.size));
    wr16(c, uint16_t(r.name.size()));
    wr16(c, uint16_t(extra.size()));
    wr16(c, 0);  // comment
    wr16(c, 0);  // disk
    wr16(c, 0);  // internal attributes
    wr32(c, 0);  // external attributes
    wr32(c, big_off ? uint32_t(k32Max) : uint32_t(r.offset));
    c += r.name;
    c += extra;
    put(c.data(), c.size());
  }
  uint64_t cd_size = pos_ - cd_start;
  uint64_t n = recs_.size();
  bool z64 = force_zip64_ || n >= 0xFFFF || cd_start >= k32Max || cd_size >= k32Max;
  std::string e;
  if (z64) {
    uint64_t z64_pos = pos_;
    wr32(e, kEnd64Sig);
    wr64(e, 44);
    wr16(e, 45);
    wr16(e, 45);
    wr32(e, 0);
    wr32(e, 0);
    wr64(e, n);
    wr64(e, n);
    wr64(e, cd_size);
    wr64(e, cd_start);
    wr32(e, kLocator64Sig);
    wr32(e, 0);
    wr64(e, z64_pos);
    wr32(e, 1);
  }
  wr32(e, kEndSig);
  wr16(e, 0);
  wr16(e, 0);
  wr16(e, z64 ? 0xFFFF : uint16_t(n));
  wr16(e, z64 ? 0xFFFF : uint16_t(n));
  wr32(e, z64 ? uint32_t(k32Max) : uint32_t(cd_size));
  wr32(e, z64 ? uint32_t(k32Max) : uint32_t(cd_start));
  wr16(e, 0);
  put(e.data(), e.size());
}

}  // namespace clip
