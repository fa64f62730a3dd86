// Pillow 9.4's 8-bit image operations that timm's AutoAugment calls (rotate, shear, posterize,
// solarize, autocontrast, equalize, enhance, blend, ...), reproduced bit for bit.
#pragma once
#include <array>
#include <cstdint>

#include "clip/image/image.h"

namespace clip {

// The individual operations, as timm calls them on PIL images. Inputs must be mode RGB or L
// (UsageError otherwise); outputs have the input's mode and size.
namespace aug {

using Fill = std::array<uint8_t, 3>;
constexpr Fill kDefaultFill{123, 117, 104};  // timm img_mean: round(255 * CLIP mean)

// Image.rotate(degrees, resample=BICUBIC, fillcolor=fill): counter-clockwise about the centre,
// same size, uncovered pixels take the fill colour (its first component for L).
Image rotate(const Image& im, double degrees, Fill fill = kDefaultFill);
// Image.transform(size, AFFINE, (1, factor, 0, 0, 1, 0), BICUBIC, fillcolor=fill).
Image shear_x(const Image& im, double factor, Fill fill = kDefaultFill);
// Pillow's generic affine transform with bicubic sampling: output pixel (x, y) samples the source at
// (a0*(x+.5) + a1*(y+.5) + a2, a3*(x+.5) + a4*(y+.5) + a5).
Image affine_bicubic(const Image& im, const std::array<double, 6>& a, Fill fill = kDefaultFill);
Image flip_left_right(const Image& im);  // any mode (palette kept)

Image posterize(const Image& im, int bits);      // ImageOps.posterize, bits 1..8
Image solarize(const Image& im, int threshold);  // ImageOps.solarize: v >= threshold -> 255 - v
Image invert(const Image& im);
Image autocontrast(const Image& im);  // ImageOps.autocontrast(cutoff=0), per channel
Image equalize(const Image& im);      // ImageOps.equalize, per channel
Image color(const Image& im, double factor);      // ImageEnhance.Color
Image contrast(const Image& im, double factor);   // ImageEnhance.Contrast
Image sharpness(const Image& im, double factor);  // ImageEnhance.Sharpness (SMOOTH kernel)
// Image.blend(a, b, alpha) with Pillow's single-precision lerp and truncation.
Image blend(const Image& a, const Image& b, float alpha);
Image to_gray(const Image& rgb);  // convert('L'): ITU-R 601-2 luma, 16-bit fixed point

}  // namespace aug
}  // namespace clip
