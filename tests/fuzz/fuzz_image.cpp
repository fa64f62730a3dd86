// Image decoding (every format decode_image accepts), the EXIF orientation reader, and, for what
// decodes, the orientation applied and cn_clip's eval transform.
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "clip/image/image.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz::expect_clean([&] {
    const int orientation = clip::exif_orientation(data, size);
    if (orientation < 1 || orientation > 8) throw std::logic_error("exif_orientation out of 1..8");
    clip::Image im = clip::decode_image(data, size);
    // The eval transform for images up to 4 M pixels: its cost grows with the pixels (a 135 M pixel
    // JPEG of 615 bytes squashed to 32 x 32 sums 271 M products, over 10 s under the sanitizers),
    // which is work, not a fault; larger images are still decoded.
    if (static_cast<uint64_t>(im.width) * static_cast<uint64_t>(im.height) > (uint64_t{4} << 20)) return;
    im = clip::apply_orientation(std::move(im), orientation);
    std::vector<float> px(3 * 32 * 32);
    clip::preprocess_eval(im, 32, px.data());
  });
}
