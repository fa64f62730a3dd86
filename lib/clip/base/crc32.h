// CRC-32 (IEEE 802.3, the one zip and PNG use): zip entries and PNG chunks are checked with it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace clip {

uint32_t crc32_update(uint32_t crc, const void* data, size_t n);  // start with 0
inline uint32_t crc32(const void* data, size_t n) { return crc32_update(0, data, n); }

}  // namespace clip
