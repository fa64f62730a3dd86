// cn_clip's training-time image augmentation (`--use-augment`): timm's
// create_transform(R, scale=(0.9, 1.0), auto_augment='original', interpolation='bicubic') with
// convert('RGB') inserted before ToTensor/Normalize:
//   RandomResizedCrop(R, scale, ratio=(3/4, 4/3), bicubic) -> RandomHorizontalFlip(0.5)
//   -> convert('RGB') -> AutoAugment (ImageNet "original" policy, fill (123,117,104), bicubic)
//   -> ToTensor -> Normalize(CLIP mean/std).
// Pixel operations reproduce Pillow 9.4 (what the original pipeline runs on), bit for bit where
// Pillow's arithmetic is deterministic. Randomness does not come from a global generator: every
// sample gets its own counter-based stream keyed by (seed, epoch, sample index), so a sample's
// augmentation is the same whatever the thread count, worker order or batch composition.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "clip/image/image.h"
#include "clip/image/pillow_ops.h"

namespace clip {

struct AugmentConfig {
  int resolution = 224;     // output is resolution x resolution RGB
  double scale_min = 0.9;   // RandomResizedCrop area fraction range
  double scale_max = 1.0;
  double hflip = 0.5;       // probability of a horizontal flip
  bool auto_augment = true; // AutoAugment "original" policy
};

// splitmix64 stream keyed by (seed, epoch, index). Same draws as scripts/make_augment_golden.py.
struct AugmentRng {
  AugmentRng(uint64_t seed, uint64_t epoch, uint64_t index);
  uint64_t next_u64();
  double uniform01();                         // [0, 1), 53 random bits
  double uniform(double a, double b);         // a + (b - a) * uniform01(), like Python's random.uniform
  int64_t randint(int64_t lo, int64_t hi);    // inclusive bounds, like random.randint
  uint64_t state = 0;
};

enum class AugOp { PosterizeOriginal, Rotate, Solarize, AutoContrast, Equalize, Color, Contrast, Sharpness, Invert, ShearX };
const char* aug_op_name(AugOp op);  // timm's names: "PosterizeOriginal", "Rotate", ...

// One operation that will be applied, with its argument already derived from the magnitude:
// bits kept (PosterizeOriginal), degrees (Rotate), threshold (Solarize), enhance factor
// (Color/Contrast/Sharpness), shear factor (ShearX); 0 for the argument-less ops.
struct AugStep {
  AugOp op;
  double arg;
};

// Every random decision for one sample. Draws depend only on the source size, the config and
// (seed, epoch, index), never on pixel values.
struct AugmentPlan {
  int crop_x = 0, crop_y = 0, crop_w = 0, crop_h = 0;  // in source pixels
  bool flip = false;
  int sub_policy = -1;  // 0..24, -1 when auto_augment is off
  std::vector<AugStep> steps;
};

// Throws UsageError for an empty source or a non-positive resolution.
AugmentPlan plan_augment(int width, int height, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch,
                         uint64_t index);
// Runs a plan on a decoded image of any mode (crop and resize in the source's own mode, as Pillow
// does, then RGB). Returns RGB resolution x resolution.
Image apply_augment(const Image& decoded, const AugmentPlan& plan, const AugmentConfig& cfg);

Image augment_image(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index);
// augment_image + ToTensor + Normalize(CLIP mean/std): writes 3*R*R floats (CHW) to out.
void augment_to_chw(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index,
                    float* out);
// augment_image as planar CHW bytes (3*R*R): normalize_table turns them into augment_to_chw's floats.
void augment_to_chw_u8(const Image& decoded, const AugmentConfig& cfg, uint64_t seed, uint64_t epoch, uint64_t index,
                       uint8_t* out);

namespace aug {

// Applies one planned step (timm's AugmentOp after its probability check).
Image apply_step(const Image& rgb, const AugStep& step, Fill fill = kDefaultFill);

}  // namespace aug
}  // namespace clip
