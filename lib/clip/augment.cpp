// Training augmentation: see augment.h. The arithmetic of each operation follows Pillow 9.4's C
// code path for 8-bit images (float vs double, truncation vs rounding, border handling) because
// the goal is the same pixels, not merely a similar-looking transform. Keep the expression order
// of the floating-point code as it is: reassociating it changes results in the last bit. For the
// same reason this file assumes no fused multiply-add contraction (true for the default x86-64
// target; a build with -march=<FMA-capable> and -ffp-contract=fast may move the rotate/shear and
// enhance results by one level, which tests/test_augment.cpp would report).
#include "clip/augment.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "clip/error.h"

namespace clip {

// ---------------------------------------------------------------------------------------------
// Random stream

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

AugmentRng::AugmentRng(uint64_t seed, uint64_t epoch, uint64_t index) {
  // Each step is a bijection of its input, so for a fixed (seed, epoch) distinct indices get
  // distinct keys, and likewise for epochs.
  uint64_t k = mix64(seed + 0x6A09E667F3BCC909ULL);
  k = mix64(k + epoch + 0xBB67AE8584CAA73BULL);
  k = mix64(k + index + 0x3C6EF372FE94F82BULL);
  state = k;
}

uint64_t AugmentRng::next_u64() {
  state += kGolden;
  return mix64(state);
}

double AugmentRng::uniform01() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

double AugmentRng::uniform(double a, double b) { return a + (b - a) * uniform01(); }

int64_t AugmentRng::randint(int64_t lo, int64_t hi) {
  if (hi < lo) throw UsageError("AugmentRng::randint: empty range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  const uint64_t n = static_cast<uint64_t>(hi - lo) + 1;
  const unsigned __int128 wide = static_cast<unsigned __int128>(next_u64()) * n;
  return lo + static_cast<int64_t>(static_cast<uint64_t>(wide >> 64));
}

// ---------------------------------------------------------------------------------------------
// The policy

namespace {

struct PolicyOp {
  AugOp op;
  double prob;
  int magnitude;
};

// AutoAugment's ImageNet policy (Cubuk et al. 2018), in timm's order and with timm's operation names.
const PolicyOp kOriginalPolicy[25][2] = {
    {{AugOp::PosterizeOriginal, 0.4, 8}, {AugOp::Rotate, 0.6, 9}},
    {{AugOp::Solarize, 0.6, 5}, {AugOp::AutoContrast, 0.6, 5}},
    {{AugOp::Equalize, 0.8, 8}, {AugOp::Equalize, 0.6, 3}},
    {{AugOp::PosterizeOriginal, 0.6, 7}, {AugOp::PosterizeOriginal, 0.6, 6}},
    {{AugOp::Equalize, 0.4, 7}, {AugOp::Solarize, 0.2, 4}},
    {{AugOp::Equalize, 0.4, 4}, {AugOp::Rotate, 0.8, 8}},
    {{AugOp::Solarize, 0.6, 3}, {AugOp::Equalize, 0.6, 7}},
    {{AugOp::PosterizeOriginal, 0.8, 5}, {AugOp::Equalize, 1.0, 2}},
    {{AugOp::Rotate, 0.2, 3}, {AugOp::Solarize, 0.6, 8}},
    {{AugOp::Equalize, 0.6, 8}, {AugOp::PosterizeOriginal, 0.4, 6}},
    {{AugOp::Rotate, 0.8, 8}, {AugOp::Color, 0.4, 0}},
    {{AugOp::Rotate, 0.4, 9}, {AugOp::Equalize, 0.6, 2}},
    {{AugOp::Equalize, 0.0, 7}, {AugOp::Equalize, 0.8, 8}},
    {{AugOp::Invert, 0.6, 4}, {AugOp::Equalize, 1.0, 8}},
    {{AugOp::Color, 0.6, 4}, {AugOp::Contrast, 1.0, 8}},
    {{AugOp::Rotate, 0.8, 8}, {AugOp::Color, 1.0, 2}},
    {{AugOp::Color, 0.8, 8}, {AugOp::Solarize, 0.8, 7}},
    {{AugOp::Sharpness, 0.4, 7}, {AugOp::Invert, 0.6, 8}},
    {{AugOp::ShearX, 0.6, 5}, {AugOp::Equalize, 1.0, 9}},
    {{AugOp::Color, 0.4, 0}, {AugOp::Equalize, 0.6, 3}},
    {{AugOp::Equalize, 0.4, 7}, {AugOp::Solarize, 0.2, 4}},
    {{AugOp::Solarize, 0.6, 5}, {AugOp::AutoContrast, 0.6, 5}},
    {{AugOp::Invert, 0.6, 4}, {AugOp::Equalize, 1.0, 8}},
    {{AugOp::Color, 0.6, 4}, {AugOp::Contrast, 1.0, 8}},
    {{AugOp::Equalize, 0.8, 8}, {AugOp::Equalize, 0.6, 3}},
};

// timm's magnitude -> argument functions (level scale 0..10). Rotate and ShearX draw their sign
// here, after the probability check, exactly where timm's level functions call random().
double level_to_arg(AugOp op, int magnitude, AugmentRng& rng) {
  const double m = std::max(0.0, std::min(static_cast<double>(magnitude), 10.0));
  switch (op) {
    case AugOp::Rotate: {
      const double v = (m / 10.0) * 30.0;
      return rng.uniform01() > 0.5 ? -v : v;
    }
    case AugOp::ShearX: {
      const double v = (m / 10.0) * 0.3;
      return rng.uniform01() > 0.5 ? -v : v;
    }
    case AugOp::PosterizeOriginal: return static_cast<double>(static_cast<int>((m / 10.0) * 4) + 4);
    case AugOp::Solarize: return static_cast<double>(static_cast<int>((m / 10.0) * 256));
    case AugOp::Color:
    case AugOp::Contrast:
    case AugOp::Sharpness: return (m / 10.0) * 1.8 + 0.1;
    default: return 0.0;
  }
}

}  // namespace

const char* aug_op_name(AugOp op) {
  switch (op) {
    case AugOp::PosterizeOriginal: return "PosterizeOriginal";
    case AugOp::Rotate: return "Rotate";
    case AugOp::Solarize: return "Solarize";
    case AugOp::AutoContrast: return "AutoContrast";
    case AugOp::Equalize: return "Equalize";
    case AugOp::Color: return "Color";
    case AugOp::Contrast: return "Contrast";
    case AugOp::Sharpness: return "Sharpness";
    case AugOp::Invert: return "Invert";
    case AugOp::ShearX: return "ShearX";
  }
  return "?";
}

AugmentPlan plan_augment(int width, int height, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch,
                         uint64_t index) {
  if (width <= 0 || height <= 0)
    throw UsageError("augment: source image is empty (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  if (cfg.resolution <= 0)
    throw UsageError("augment: resolution must be positive, got " + std::to_string(cfg.resolution));
  if (!(cfg.scale_min > 0.0 && cfg.scale_min <= cfg.scale_max))
    throw UsageError("augment: crop scale range must satisfy 0 < min <= max");
  AugmentRng rng(seed, epoch, index);
  AugmentPlan plan;

  // RandomResizedCrop.get_params (torchvision / timm), ratio (3/4, 4/3).
  const double ratio_lo = 3.0 / 4.0, ratio_hi = 4.0 / 3.0;
  const double area = static_cast<double>(width) * static_cast<double>(height);
  bool found = false;
  for (int attempt = 0; attempt < 10 && !found; ++attempt) {
    const double target_area = rng.uniform(cfg.scale_min, cfg.scale_max) * area;
    const double aspect = std::exp(rng.uniform(std::log(ratio_lo), std::log(ratio_hi)));
    // Python's round() is round-half-even, as is nearbyint in the default rounding mode.
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (w <= width && h <= height) {
      plan.crop_y = static_cast<int>(rng.randint(0, height - h));
      plan.crop_x = static_cast<int>(rng.randint(0, width - w));
      plan.crop_w = w;
      plan.crop_h = h;
      found = true;
    }
  }
  if (!found) {  // centre crop, clamped to the ratio bounds
    const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
    int w = width, h = height;
    if (in_ratio < ratio_lo) {
      h = static_cast<int>(std::nearbyint(w / ratio_lo));
    } else if (in_ratio > ratio_hi) {
      w = static_cast<int>(std::nearbyint(h * ratio_hi));
    }
    plan.crop_x = (width - w) / 2;
    plan.crop_y = (height - h) / 2;
    plan.crop_w = w;
    plan.crop_h = h;
  }
  // The crop can come out empty only for images of a pixel or two; keep it valid.
  plan.crop_w = std::max(1, plan.crop_w);
  plan.crop_h = std::max(1, plan.crop_h);

  // Drawn even when hflip is 0 or 1 so that the rest of the stream does not shift with the setting.
  plan.flip = rng.uniform01() < cfg.hflip;

  if (cfg.auto_augment) {
    plan.sub_policy = static_cast<int>(rng.randint(0, 24));
    for (const PolicyOp& p : kOriginalPolicy[plan.sub_policy]) {
      if (p.prob < 1.0 && rng.uniform01() > p.prob) continue;
      plan.steps.push_back({p.op, level_to_arg(p.op, p.magnitude, rng)});
    }
  }
  return plan;
}

Image apply_augment(const Image& decoded, const AugmentPlan& plan, const AugmentConfig& cfg) {
  if (plan.crop_x < 0 || plan.crop_y < 0 || plan.crop_x + plan.crop_w > decoded.width ||
      plan.crop_y + plan.crop_h > decoded.height)
    throw UsageError("augment: crop box outside the " + std::to_string(decoded.width) + "x" +
                     std::to_string(decoded.height) + " image (plan made for another size?)");
  // torchvision's resized_crop on a PIL image: crop, then Image.resize in the image's own mode.
  Image out = resize_bicubic(crop(decoded, plan.crop_x, plan.crop_y, plan.crop_w, plan.crop_h), cfg.resolution,
                             cfg.resolution);
  if (plan.flip) out = aug::flip_left_right(out);
  out = convert_rgb(out);
  for (const AugStep& s : plan.steps) out = aug::apply_step(out, s);
  return out;
}

Image augment_image(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index) {
  return apply_augment(decoded, plan_augment(decoded.width, decoded.height, cfg, seed, epoch, index), cfg);
}

void augment_to_chw(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index,
                    float* out) {
  to_chw_normalized(augment_image(decoded, cfg, seed, epoch, index), out);
}

// ---------------------------------------------------------------------------------------------
// Operations

namespace aug {
namespace {

void require_rgb_or_l(const Image& im, const char* what) {
  if (im.mode != PixelMode::RGB && im.mode != PixelMode::L)
    throw UsageError(std::string("augment: ") + what + " needs an RGB or L image, got mode " + mode_name(im.mode) +
                     " (convert to RGB first)");
  if (im.pixels.size() != static_cast<size_t>(im.width) * im.height * im.channels())
    throw UsageError(std::string("augment: ") + what + ": pixel buffer does not match " + std::to_string(im.width) +
                     "x" + std::to_string(im.height) + "x" + std::to_string(im.channels()));
}

Image same_shape(const Image& im) {
  Image out;
  out.width = im.width;
  out.height = im.height;
  out.mode = im.mode;
  out.pixels.resize(im.pixels.size());
  return out;
}

// One lookup table per channel, as Image.point with 256*bands entries.
Image apply_luts(const Image& im, const std::vector<std::array<uint8_t, 256>>& luts) {
  Image out = same_shape(im);
  const int c = im.channels();
  const size_t n = im.pixels.size();
  for (size_t i = 0; i < n; ++i) out.pixels[i] = luts[i % c][im.pixels[i]];
  return out;
}

Image apply_lut(const Image& im, const std::array<uint8_t, 256>& lut) {
  return apply_luts(im, std::vector<std::array<uint8_t, 256>>(im.channels(), lut));
}

std::vector<std::array<uint64_t, 256>> histograms(const Image& im) {
  const int c = im.channels();
  std::vector<std::array<uint64_t, 256>> h(c);
  for (auto& a : h) a.fill(0);
  const size_t n = im.pixels.size();
  for (size_t i = 0; i < n; ++i) ++h[i % c][im.pixels[i]];
  return h;
}

uint8_t clip8(int v) { return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v); }

// Pillow's FLOOR macro in Geometry.c.
int pil_floor(double v) { return v < 0.0 ? static_cast<int>(std::floor(v)) : static_cast<int>(v); }

// Cubic convolution (a = -1) in the form Pillow's BICUBIC macro evaluates it.
double cubic(double v1, double v2, double v3, double v4, double d) {
  const double p1 = v2;
  const double p2 = -v1 + v3;
  const double p3 = 2 * (v1 - v2) + v3 - v4;
  const double p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

// Python's round(x, 15), which Image.rotate applies to the matrix entries: the decimal string
// with 15 places, correctly rounded, read back.
double round15(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15f", x);
  return std::strtod(buf, nullptr);
}

// Python's float modulo (result has the divisor's sign).
double py_mod(double x, double m) {
  double r = std::fmod(x, m);
  if (r != 0.0) {
    if ((m < 0) != (r < 0)) r += m;
  } else {
    r = std::copysign(0.0, m);
  }
  return r;
}

}  // namespace

Image affine_bicubic(const Image& im, const std::array<double, 6>& a, Fill fill) {
  require_rgb_or_l(im, "affine transform");
  const int W = im.width, H = im.height, C = im.channels();
  Image out = same_shape(im);
  for (size_t i = 0; i < out.pixels.size(); ++i) out.pixels[i] = fill[i % C];
  const uint8_t* src = im.pixels.data();
  const size_t stride = static_cast<size_t>(W) * C;
  auto xclip = [W](int x) { return x < 0 ? 0 : x < W ? x : W - 1; };
  auto yclip = [H](int y) { return y < 0 ? 0 : y < H ? y : H - 1; };
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) {
      const double xo = x + 0.5, yo = y + 0.5;
      double xin = a[0] * xo + a[1] * yo + a[2];
      double yin = a[3] * xo + a[4] * yo + a[5];
      if (xin < 0.0 || xin >= W || yin < 0.0 || yin >= H) continue;  // keeps the fill colour
      xin -= 0.5;
      yin -= 0.5;
      int xi = pil_floor(xin), yi = pil_floor(yin);
      const double dx = xin - xi, dy = yin - yi;
      --xi;
      --yi;
      const int x0 = xclip(xi) * C, x1 = xclip(xi + 1) * C, x2 = xclip(xi + 2) * C, x3 = xclip(xi + 3) * C;
      uint8_t* o = out.pixels.data() + (static_cast<size_t>(y) * W + x) * C;
      for (int b = 0; b < C; ++b) {
        auto row = [&](int r) {
          const uint8_t* in = src + static_cast<size_t>(r) * stride + b;
          return cubic(in[x0], in[x1], in[x2], in[x3], dx);
        };
        // First row clamped to the image; missing later rows repeat the previous one (Pillow's rule).
        const double v1 = row(yclip(yi));
        const double v2 = (yi + 1 >= 0 && yi + 1 < H) ? row(yi + 1) : v1;
        const double v3 = (yi + 2 >= 0 && yi + 2 < H) ? row(yi + 2) : v2;
        const double v4 = (yi + 3 >= 0 && yi + 3 < H) ? row(yi + 3) : v3;
        const double v = cubic(v1, v2, v3, v4, dy);
        o[b] = v <= 0.0 ? 0 : v >= 255.0 ? 255 : static_cast<uint8_t>(v);
      }
    }
  }
  return out;
}

namespace {

// Image.transpose ROTATE_90 / ROTATE_180 / ROTATE_270 (counter-clockwise), which Image.rotate uses for
// exact multiples of 90 degrees.
Image rotate_quarter(const Image& im, int quarters) {
  const int W = im.width, H = im.height, C = im.channels();
  Image out = same_shape(im);
  if (quarters % 2) std::swap(out.width, out.height);
  const int OW = out.width;
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) {
      int ox, oy;
      if (quarters == 1) {
        ox = y;
        oy = W - 1 - x;
      } else if (quarters == 2) {
        ox = W - 1 - x;
        oy = H - 1 - y;
      } else {
        ox = H - 1 - y;
        oy = x;
      }
      const uint8_t* s = im.pixels.data() + (static_cast<size_t>(y) * W + x) * C;
      std::copy(s, s + C, out.pixels.data() + (static_cast<size_t>(oy) * OW + ox) * C);
    }
  }
  return out;
}

}  // namespace

Image rotate(const Image& im, double degrees, Fill fill) {
  require_rgb_or_l(im, "rotate");
  const double angle = py_mod(degrees, 360.0);
  if (angle == 0.0) return im;
  if (angle == 180.0) return rotate_quarter(im, 2);
  if ((angle == 90.0 || angle == 270.0) && im.width == im.height) return rotate_quarter(im, angle == 90.0 ? 1 : 3);
  // Inverse mapping about the centre (w/2, h/2), built as Image.rotate builds it.
  const double cx = im.width / 2.0, cy = im.height / 2.0;
  const double rad = -(angle * (M_PI / 180.0));  // -math.radians(angle)
  std::array<double, 6> m{round15(std::cos(rad)), round15(std::sin(rad)), 0.0,
                          round15(-std::sin(rad)), round15(std::cos(rad)), 0.0};
  const double tx = -cx, ty = -cy;
  const double c2 = m[0] * tx + m[1] * ty + m[2];
  const double c5 = m[3] * tx + m[4] * ty + m[5];
  m[2] = c2 + cx;
  m[5] = c5 + cy;
  return affine_bicubic(im, m, fill);
}

Image shear_x(const Image& im, double factor, Fill fill) {
  return affine_bicubic(im, {1.0, factor, 0.0, 0.0, 1.0, 0.0}, fill);
}

Image flip_left_right(const Image& im) {
  const int W = im.width, H = im.height, C = im.channels();
  Image out = im;
  for (int y = 0; y < H; ++y) {
    const uint8_t* s = im.pixels.data() + static_cast<size_t>(y) * W * C;
    uint8_t* d = out.pixels.data() + static_cast<size_t>(y) * W * C;
    for (int x = 0; x < W; ++x) std::copy(s + x * C, s + (x + 1) * C, d + (W - 1 - x) * C);
  }
  return out;
}

Image posterize(const Image& im, int bits) {
  require_rgb_or_l(im, "posterize");
  if (bits < 1 || bits > 8) throw UsageError("augment: posterize keeps 1..8 bits, got " + std::to_string(bits));
  const int mask = ~((1 << (8 - bits)) - 1);
  std::array<uint8_t, 256> lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i & mask);
  return apply_lut(im, lut);
}

Image solarize(const Image& im, int threshold) {
  require_rgb_or_l(im, "solarize");
  std::array<uint8_t, 256> lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i < threshold ? i : 255 - i);
  return apply_lut(im, lut);
}

Image invert(const Image& im) {
  require_rgb_or_l(im, "invert");
  std::array<uint8_t, 256> lut;
  for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(255 - i);
  return apply_lut(im, lut);
}

Image autocontrast(const Image& im) {
  require_rgb_or_l(im, "autocontrast");
  const auto hist = histograms(im);
  std::vector<std::array<uint8_t, 256>> luts(hist.size());
  for (size_t b = 0; b < hist.size(); ++b) {
    const auto& h = hist[b];
    int lo = 0, hi = 255;
    while (lo < 255 && !h[lo]) ++lo;
    while (hi > 0 && !h[hi]) --hi;
    auto& lut = luts[b];
    if (hi <= lo) {
      for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i);
      continue;
    }
    const double scale = 255.0 / (hi - lo);
    const double offset = -lo * scale;
    for (int i = 0; i < 256; ++i) lut[i] = clip8(static_cast<int>(i * scale + offset));  // int() truncates
  }
  return apply_luts(im, luts);
}

Image equalize(const Image& im) {
  require_rgb_or_l(im, "equalize");
  const auto hist = histograms(im);
  std::vector<std::array<uint8_t, 256>> luts(hist.size());
  for (size_t b = 0; b < hist.size(); ++b) {
    const auto& h = hist[b];
    auto& lut = luts[b];
    uint64_t total = 0, last = 0;
    int nonzero = 0;
    for (int i = 0; i < 256; ++i) {
      if (h[i]) {
        total += h[i];
        last = h[i];
        ++nonzero;
      }
    }
    const uint64_t step = nonzero <= 1 ? 0 : (total - last) / 255;
    if (step == 0) {
      for (int i = 0; i < 256; ++i) lut[i] = static_cast<uint8_t>(i);
      continue;
    }
    uint64_t n = step / 2;
    for (int i = 0; i < 256; ++i) {
      lut[i] = static_cast<uint8_t>(std::min<uint64_t>(n / step, 255));  // Image.point clips to 0..255
      n += h[i];
    }
  }
  return apply_luts(im, luts);
}

Image blend(const Image& a, const Image& b, float alpha) {
  if (a.width != b.width || a.height != b.height || a.mode != b.mode || a.pixels.size() != b.pixels.size())
    throw UsageError("augment: blend needs two images of the same size and mode");
  if (alpha == 0.0f) return a;
  if (alpha == 1.0f) return b;
  Image out = same_shape(a);
  const size_t n = a.pixels.size();
  if (alpha >= 0.0f && alpha <= 1.0f) {
    for (size_t i = 0; i < n; ++i) {
      const int x1 = a.pixels[i], x2 = b.pixels[i];
      const float v = x1 + alpha * (x2 - x1);  // single precision, as ImagingBlend
      out.pixels[i] = static_cast<uint8_t>(v);
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      const int x1 = a.pixels[i], x2 = b.pixels[i];
      const float v = x1 + alpha * (x2 - x1);
      out.pixels[i] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : static_cast<uint8_t>(v);
    }
  }
  return out;
}

Image to_gray(const Image& im) {
  require_rgb_or_l(im, "convert to L");
  if (im.mode == PixelMode::L) return im;
  Image out;
  out.width = im.width;
  out.height = im.height;
  out.mode = PixelMode::L;
  const size_t n = static_cast<size_t>(im.width) * im.height;
  out.pixels.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = im.pixels.data() + 3 * i;
    out.pixels[i] = static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
  }
  return out;
}

namespace {

// L -> the target mode (RGB replicates the grey level).
Image gray_to_mode(const Image& gray, PixelMode mode) {
  if (mode == PixelMode::L) return gray;
  Image out;
  out.width = gray.width;
  out.height = gray.height;
  out.mode = PixelMode::RGB;
  out.pixels.resize(gray.pixels.size() * 3);
  for (size_t i = 0; i < gray.pixels.size(); ++i)
    out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = gray.pixels[i];
  return out;
}

// ImageFilter.SMOOTH ((1 1 1; 1 5 1; 1 1 1) / 13) as ImagingFilter3x3 computes it: float kernel,
// +0.5 then truncation, border rows and columns copied unchanged.
Image smooth3x3(const Image& im) {
  const int W = im.width, H = im.height, C = im.channels();
  if (W < 3 || H < 3) return im;  // Pillow returns a copy when the image is smaller than the kernel
  Image out = im;
  const float k_edge = 1.0f / 13.0f, k_mid = 5.0f / 13.0f;
  const float kernel[9] = {k_edge, k_edge, k_edge, k_edge, k_mid, k_edge, k_edge, k_edge, k_edge};
  const float offset = 0.0f + 0.5f;
  const size_t stride = static_cast<size_t>(W) * C;
  auto row3 = [&](const uint8_t* row, int x, int b, const float* k) {
    return static_cast<float>(row[(x - 1) * C + b]) * k[0] + static_cast<float>(row[x * C + b]) * k[1] +
           static_cast<float>(row[(x + 1) * C + b]) * k[2];
  };
  for (int y = 1; y < H - 1; ++y) {
    const uint8_t* in_1 = im.pixels.data() + (y - 1) * stride;
    const uint8_t* in0 = im.pixels.data() + y * stride;
    const uint8_t* in1 = im.pixels.data() + (y + 1) * stride;
    uint8_t* o = out.pixels.data() + y * stride;
    for (int x = 1; x < W - 1; ++x) {
      for (int b = 0; b < C; ++b) {
        float ss = offset;
        ss += row3(in1, x, b, &kernel[0]);
        ss += row3(in0, x, b, &kernel[3]);
        ss += row3(in_1, x, b, &kernel[6]);
        o[x * C + b] = ss <= 0.0f ? 0 : ss >= 255.0f ? 255 : static_cast<uint8_t>(ss);
      }
    }
  }
  return out;
}

}  // namespace

// ImageEnhance: blend(degenerate, image, factor); Python passes the factor as a double that
// ImagingBlend receives as float.
Image color(const Image& im, double factor) {
  require_rgb_or_l(im, "color");
  return blend(gray_to_mode(to_gray(im), im.mode), im, static_cast<float>(factor));
}

Image contrast(const Image& im, double factor) {
  require_rgb_or_l(im, "contrast");
  const Image gray = to_gray(im);
  // ImageStat mean of the L image: float sum of level * count over the pixel count, rounded half up.
  uint64_t hist[256] = {0};
  for (uint8_t v : gray.pixels) ++hist[v];
  double sum = 0.0;
  for (int j = 0; j < 256; ++j) sum += static_cast<double>(j * hist[j]);
  const double mean = gray.pixels.empty() ? 0.0 : sum / static_cast<double>(gray.pixels.size());
  Image degenerate = gray;
  std::fill(degenerate.pixels.begin(), degenerate.pixels.end(), static_cast<uint8_t>(static_cast<int>(mean + 0.5)));
  return blend(gray_to_mode(degenerate, im.mode), im, static_cast<float>(factor));
}

Image sharpness(const Image& im, double factor) {
  require_rgb_or_l(im, "sharpness");
  return blend(smooth3x3(im), im, static_cast<float>(factor));
}

Image apply_step(const Image& rgb, const AugStep& step, Fill fill) {
  switch (step.op) {
    case AugOp::PosterizeOriginal: {
      const int bits = static_cast<int>(step.arg);
      return bits >= 8 ? rgb : posterize(rgb, bits);  // timm skips posterize at 8 bits
    }
    case AugOp::Rotate: return rotate(rgb, step.arg, fill);
    case AugOp::Solarize: return solarize(rgb, static_cast<int>(step.arg));
    case AugOp::AutoContrast: return autocontrast(rgb);
    case AugOp::Equalize: return equalize(rgb);
    case AugOp::Color: return color(rgb, step.arg);
    case AugOp::Contrast: return contrast(rgb, step.arg);
    case AugOp::Sharpness: return sharpness(rgb, step.arg);
    case AugOp::Invert: return invert(rgb);
    case AugOp::ShearX: return shear_x(rgb, step.arg, fill);
  }
  throw UsageError("augment: unknown operation");
}

}  // namespace aug
}  // namespace clip
