// SHA-256 (FIPS 180-4), used to fingerprint vocabularies, checkpoints and feature stores so that
// results can name exactly which input produced them.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace clip {

// Incremental hasher: update() any number of times, then digest()/hex(). Both are non-destructive
// (they finish a copy of the state), so more data may be appended afterwards and hashed again.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::array<uint8_t, 32> digest() const;
  std::string hex() const;  // 64 lowercase hex digits

 private:
  void compress(const uint8_t* block);
  void compress_blocks(const uint8_t* blocks, size_t n);  // n whole 64-byte blocks
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes hashed so far
};

std::string sha256_hex(const void* data, size_t n);

// Whether full blocks are compressed with the CPU's SHA instructions (SHA-NI, several times faster);
// the portable code is used where the CPU has none. Tests and bench_hash switch them off to compare.
bool sha256_hardware();
void set_sha256_hardware(bool on);  // on = use them when the CPU has them (the default)
inline std::string sha256_hex(const std::string& s) { return sha256_hex(s.data(), s.size()); }

}  // namespace clip
