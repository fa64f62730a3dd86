#include "clip/retrieval/sidecar.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>

#include "clip/base/error.h"
#include "clip/base/fileio.h"

namespace clip {

namespace {

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

}  // namespace

StoreIdentity store_identity(const FeatureSet& fs) {
  StoreIdentity id;
  id.rows = fs.size();
  id.dim = fs.dim;
  id.ids_digest = fmt::format("{:016x}", fnv1a(fs.ids.data(), fs.ids.size() * sizeof(int64_t)));
  const size_t row_bytes = static_cast<size_t>(fs.dim) * dtype_size(fs.dtype);
  const int64_t step = std::max<int64_t>(1, fs.size() / 4096);
  uint64_t h = 1469598103934665603ull;
  std::vector<float> row(fs.dim);
  for (int64_t r = 0; r < fs.size(); r += step) {
    // Hash the values as float32, so that the digest does not depend on the element type.
    fs.copy_rows(r, r + 1, row.data());
    h = fnv1a(row.data(), row.size() * sizeof(float), h);
  }
  if (fs.size() > 0) {
    fs.copy_rows(fs.size() - 1, fs.size(), row.data());
    h = fnv1a(row.data(), row.size() * sizeof(float), h);
  }
  (void)row_bytes;
  id.rows_digest = fmt::format("{:016x}", h);
  return id;
}

nlohmann::json identity_json(const StoreIdentity& id) {
  return {{"rows", id.rows}, {"dim", id.dim}, {"ids_digest", id.ids_digest}, {"rows_digest", id.rows_digest}};
}

void check_identity(const nlohmann::json& rec, const FeatureSet& fs, const std::string& path, const std::string& what,
                    const std::string& remedy) {
  const StoreIdentity id = store_identity(fs);
  auto fail = [&](const std::string& why) {
    throw DataError(fmt::format("{} '{}' does not match the store '{}' ({}): it was built for another store or an older "
                                "version of it; {}",
                                what, path, fs.path, why, remedy));
  };
  if (!rec.is_object()) fail("no store identity recorded");
  if (rec.value("rows", int64_t(-1)) != id.rows)
    fail(fmt::format("{} rows recorded, the store has {}", rec.value("rows", int64_t(-1)), id.rows));
  if (rec.value("dim", int64_t(-1)) != id.dim)
    fail(fmt::format("dim {} recorded, the store has {}", rec.value("dim", int64_t(-1)), id.dim));
  if (rec.value("ids_digest", std::string()) != id.ids_digest) fail("its ids differ");
  if (rec.value("rows_digest", std::string()) != id.rows_digest) fail("its feature values differ");
}

void write_sidecar(const std::string& path, const char magic[8], uint32_t version, const nlohmann::json& header,
                   const void* payload, size_t payload_size) {
  const std::string h = header.dump();
  const uint32_t hs = static_cast<uint32_t>(h.size());
  const size_t used = 16 + h.size();
  const size_t pad = (64 - used % 64) % 64;
  AtomicFile f(path);
  f.write(magic, 8);
  f.write(&version, 4);
  f.write(&hs, 4);
  f.write(h);
  f.write(std::string(pad, '\0'));
  if (payload_size) f.write(payload, payload_size);
  f.commit();
}

Sidecar read_sidecar(const std::string& path, const char magic[8], uint32_t version, const std::string& what,
                     const std::string& remedy) {
  auto fail = [&](const std::string& why) { throw DataError(fmt::format("{} '{}': {}; {}", what, path, why, remedy)); };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_io_error("open", path);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  char head[16];
  if (size < 16 || !in.read(head, 16) || std::memcmp(head, magic, 8) != 0)
    fail(fmt::format("wrong magic: it does not start with \"{}\"", std::string(magic, strnlen(magic, 8))));
  uint32_t v, hs;
  std::memcpy(&v, head + 8, 4);
  std::memcpy(&hs, head + 12, 4);
  if (v != version) fail(fmt::format("format version {}, this build reads version {}", v, version));
  if (16 + static_cast<uint64_t>(hs) > size) fail("truncated header");
  std::string h(hs, '\0');
  if (!in.read(h.data(), hs)) throw_io_error("read", path);
  Sidecar out;
  try {
    out.header = nlohmann::json::parse(h);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!out.header.is_object()) fail("header is not a JSON object");
  const uint64_t used = 16 + hs;
  out.payload_offset = used + (64 - used % 64) % 64;
  const int64_t want = out.header.value("payload_size", int64_t(-1));
  if (want < 0 || out.payload_offset + static_cast<uint64_t>(want) != size)
    fail(fmt::format("{} bytes, the header describes {} (truncated or over-long file)", size,
                     out.payload_offset + static_cast<uint64_t>(std::max<int64_t>(want, 0))));
  out.payload_size = static_cast<uint64_t>(want);
  return out;
}

}  // namespace clip
