// The allow-listed unpickler on raw bytes (no zip around it), with torch's persistent ids resolved
// to nothing: stack, memo and nesting bounds, opcodes, GLOBAL refusals.
#include "clip/io/pickle.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] { clip::unpickle(data, size, "fuzz input"); });
}
