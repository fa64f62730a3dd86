// Helpers shared by the Catch2 tests.
#pragma once
#include <cstdlib>
#include <string>

namespace testutil {

// ../shared beside the checkout (fixtures/ and reference/); CLIP_SHARED_DIR overrides.
inline std::string shared_dir() {
  if (const char* e = std::getenv("CLIP_SHARED_DIR")) return e;
  return CLIP_SHARED_DIR;
}
inline std::string fixture(const std::string& rel) { return shared_dir() + "/fixtures/cnclip-tiny/" + rel; }
inline std::string source_dir() { return CLIP_SOURCE_DIR; }
inline std::string bin_dir() { return CLIP_BIN_DIR; }

}  // namespace testutil
