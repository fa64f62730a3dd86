// Image decoding (every format decode_image accepts) and, for what decodes, cn_clip's eval transform.
#include <vector>

#include "clip/image/image.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] {
    clip::Image im = clip::decode_image(data, size);
    std::vector<float> px(3 * 32 * 32);
    clip::preprocess_eval(im, 32, px.data());
  });
}
