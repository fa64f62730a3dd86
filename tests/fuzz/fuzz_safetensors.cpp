// safetensors: header length, JSON header, dtypes, shapes and byte spans.
#include "clip/io/checkpoint.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] { clip::load_safetensors(fuzz::file_with(data, size, ".safetensors")); });
}
