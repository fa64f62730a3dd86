// Training augmentation: see augment.h. The arithmetic of each operation follows Pillow 9.4's C
// code path for 8-bit images (float vs double, truncation vs rounding, border handling) because
// the goal is the same pixels, not merely a similar-looking transform. Keep the expression order
// of the floating-point code as it is: reassociating it changes results in the last bit. For the
// same reason this file assumes no fused multiply-add contraction (true for the default x86-64
// target; a build with -march=<FMA-capable> and -ffp-contract=fast may move the rotate/shear and
// enhance results by one level, which tests/test_augment.cpp would report).
#include "clip/data/augment.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "clip/base/error.h"

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

void augment_to_chw_u8(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index,
                       uint8_t* out) {
  to_chw_u8(augment_image(decoded, cfg, seed, epoch, index), out);
}

// ---------------------------------------------------------------------------------------------
// One planned step (the operations themselves are Pillow's, in image/pillow_ops.h)

namespace aug {

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
