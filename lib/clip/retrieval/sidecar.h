// Files kept beside a feature store that describe its rows (the approximate index STORE.ann, the
// int8 scan file STORE.i8). Each records the identity of the store it was built from, and a reader
// refuses one whose store has changed since, instead of returning rows that are not there.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "clip/retrieval/store.h"

namespace clip {

// Rows, dim, a digest of every id in row order, and a digest of the bytes of up to 4096 rows spread
// evenly over the matrix (a few MB read, so that opening stays fast).
struct StoreIdentity {
  int64_t rows = 0;
  int64_t dim = 0;
  std::string ids_digest;
  std::string rows_digest;
};
StoreIdentity store_identity(const FeatureSet& fs);
nlohmann::json identity_json(const StoreIdentity& id);

// Throws DataError "<what> '<sidecar>' was built for another version of '<store>' (...); <remedy>" when
// the identity recorded in `recorded` differs from the store's.
void check_identity(const nlohmann::json& recorded, const FeatureSet& fs, const std::string& sidecar_path,
                    const std::string& what, const std::string& remedy);

// A sidecar file: 8-byte magic, u32 version, u32 JSON size, the JSON header (with "store": identity),
// padding to 64 bytes, then the payload. read_sidecar validates the magic, version and sizes.
struct Sidecar {
  nlohmann::json header;
  uint64_t payload_offset = 0;  // where the payload starts in the file
  uint64_t payload_size = 0;    // checked against the header's payload_size and the file size
};
void write_sidecar(const std::string& path, const char magic[8], uint32_t version, const nlohmann::json& header,
                   const void* payload, size_t payload_size);
Sidecar read_sidecar(const std::string& path, const char magic[8], uint32_t version, const std::string& what,
                     const std::string& remedy);

}  // namespace clip
