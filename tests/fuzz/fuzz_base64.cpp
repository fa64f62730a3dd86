// base64 as the TSV readers decode it; a decoded string re-encodes to a string that decodes to it.
#include <cstdlib>
#include <string_view>

#include "clip/image/image.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] {
    auto bytes = clip::base64_decode(std::string_view(reinterpret_cast<const char*>(data), size));
    const std::string again = clip::base64_encode(bytes.data(), bytes.size());
    if (clip::base64_decode(again) != bytes) std::abort();
  });
}
