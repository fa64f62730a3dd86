// Image decoding (every format decode_image accepts) and, for what decodes, cn_clip's eval transform.
#include <cstdint>
#include <vector>

#include "clip/image/image.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] {
    clip::Image im = clip::decode_image(data, size);
    // The eval transform for images up to 4 M pixels: its cost grows with the pixels (a 135 M pixel
    // JPEG of 615 bytes squashed to 32 x 32 sums 271 M products, over 10 s under the sanitizers),
    // which is work, not a fault; larger images are still decoded.
    if (static_cast<uint64_t>(im.width) * static_cast<uint64_t>(im.height) > (uint64_t{4} << 20)) return;
    std::vector<float> px(3 * 32 * 32);
    clip::preprocess_eval(im, 32, px.data());
  });
}
