// Shared by the libFuzzer harnesses: inputs that need a file go through one scratch file per process,
// and the library's typed errors (clip::Error) are the expected answer to bad input. Anything else
// (another exception, a crash, a sanitizer report, a hang past -timeout) is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "clip/base/error.h"

namespace fuzz {

// A file holding `data` (rewritten for each input), under $TMPDIR.
inline const std::string& file_with(const uint8_t* data, size_t size, const char* suffix = "") {
  static std::string path;
  if (path.empty()) {
    const char* dir = std::getenv("TMPDIR");
    path = std::string(dir && *dir ? dir : "/tmp") + "/clip-fuzz-" + std::to_string(getpid()) + suffix;
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

template <class F>
int expect_clean(F&& body) {
  try {
    body();
  } catch (const clip::Error&) {
    // the documented answer to bad input
  }
  return 0;
}

}  // namespace fuzz
