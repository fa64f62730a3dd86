// Helpers shared by the Catch2 tests.
#pragma once
#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

namespace testutil {

// A 50-byte run-length-encoded Radiance HDR whose first scanline stops right after its header:
// stb_image 2.27 loops forever on it (CVE-2021-42715). Decoders must refuse it at once.
inline std::string hdr_bomb() {
  return std::string("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 1 +X 16\n") + std::string("\x02\x02\x00\x10", 4);
}

// ../shared beside the checkout (fixtures/ and reference/); CLIP_SHARED_DIR overrides.
inline std::string shared_dir() {
  if (const char* e = std::getenv("CLIP_SHARED_DIR")) return e;
  return CLIP_SHARED_DIR;
}
inline std::string fixture(const std::string& rel) { return shared_dir() + "/fixtures/cnclip-tiny/" + rel; }
inline std::string source_dir() { return CLIP_SOURCE_DIR; }
inline std::string bin_dir() { return CLIP_BIN_DIR; }

// A fresh folder /tmp/clip<tag>XXXXXX, removed with everything in it when the object goes.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag = "test") {
    std::string tmpl = "/tmp/clip" + tag + "XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
    path = tmpl;
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  // Writes `content` to <path>/<name> and returns that file's path.
  std::string write(const std::string& name, const std::string& content) const {
    std::string p = path + "/" + name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
};

}  // namespace testutil
