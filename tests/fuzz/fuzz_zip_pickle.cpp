// torch.save archives: the zip container and the allow-listed unpickler behind it (load_checkpoint).
#include "clip/io/checkpoint.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] { clip::load_checkpoint(fuzz::file_with(data, size, ".pt")); });
}
