// Training augmentation against Pillow 9.4 (goldens from scripts/make_augment_golden.py in
// tests/data/augment), plus determinism and sampling properties.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "clip/data/augment.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "util.h"

using namespace clip;
using nlohmann::json;

namespace {

std::string data_dir() { return testutil::source_dir() + "/tests/data/augment/"; }

const json& cases() {
  static const json j = json::parse(read_file(data_dir() + "cases.json"));
  return j;
}

Image load_png(const std::string& name) {
  const std::string bytes = read_file(data_dir() + name);
  return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

struct Diff {
  int max = 0;
  double mean = 0.0;
  size_t differing = 0;
};

Diff compare(const Image& a, const Image& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  REQUIRE(a.mode == b.mode);
  REQUIRE(a.pixels.size() == b.pixels.size());
  Diff d;
  double sum = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const int e = std::abs(int(a.pixels[i]) - int(b.pixels[i]));
    d.max = std::max(d.max, e);
    sum += e;
    d.differing += e != 0;
  }
  d.mean = a.pixels.empty() ? 0.0 : sum / a.pixels.size();
  return d;
}

AugOp op_from_name(const std::string& n) {
  for (AugOp op : {AugOp::PosterizeOriginal, AugOp::Rotate, AugOp::Solarize, AugOp::AutoContrast, AugOp::Equalize,
                   AugOp::Color, AugOp::Contrast, AugOp::Sharpness, AugOp::Invert, AugOp::ShearX})
    if (n == aug_op_name(op)) return op;
  FAIL("unknown op name " << n);
  return AugOp::Invert;
}

void check_plan(const AugmentPlan& p, const json& want) {
  INFO("want " << want.dump());
  REQUIRE(p.crop_x == want["crop"][0].get<int>());
  REQUIRE(p.crop_y == want["crop"][1].get<int>());
  REQUIRE(p.crop_w == want["crop"][2].get<int>());
  REQUIRE(p.crop_h == want["crop"][3].get<int>());
  REQUIRE(p.flip == want["flip"].get<bool>());
  REQUIRE(p.sub_policy == want["sub_policy"].get<int>());
  REQUIRE(p.steps.size() == want["steps"].size());
  for (size_t i = 0; i < p.steps.size(); ++i) {
    REQUIRE(std::string(aug_op_name(p.steps[i].op)) == want["steps"][i][0].get<std::string>());
    REQUIRE(p.steps[i].arg == want["steps"][i][1].get<double>());  // bit-exact: same double arithmetic
  }
}

AugmentConfig small_config() {
  AugmentConfig cfg;
  cfg.resolution = cases()["resolution"].get<int>();
  return cfg;
}

}  // namespace

TEST_CASE("AugmentRng reproduces the reference stream and is keyed by all three numbers", "[augment]") {
  AugmentRng rng(1, 2, 3);
  for (const auto& v : cases()["rng_stream_1_2_3"]) REQUIRE(rng.next_u64() == std::stoull(v.get<std::string>()));
  auto first = [](uint64_t s, uint64_t e, uint64_t i) { return AugmentRng(s, e, i).next_u64(); };
  std::set<uint64_t> seen{first(1, 2, 3), first(1, 2, 4), first(1, 3, 3), first(2, 2, 3), first(3, 2, 1), first(0, 0, 0)};
  REQUIRE(seen.size() == 6);
  AugmentRng r(7, 7, 7);
  for (int i = 0; i < 1000; ++i) {
    const double u = r.uniform01();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    const int64_t k = r.randint(-2, 3);
    REQUIRE(k >= -2);
    REQUIRE(k <= 3);
  }
  REQUIRE_THROWS_AS(r.randint(3, 2), UsageError);
}

TEST_CASE("plans match the reference sampler (crop, flip, sub-policy, op arguments)", "[augment]") {
  AugmentConfig cfg;
  for (const auto& c : cases()["plans"]) {
    const AugmentPlan p = plan_augment(c["width"].get<int>(), c["height"].get<int>(), cfg, c["seed"].get<uint64_t>(),
                                       c["epoch"].get<uint64_t>(), c["index"].get<uint64_t>());
    check_plan(p, c["plan"]);
  }
  for (const auto& c : cases()["pipeline"]) {
    const Image src = load_png(c["source"].get<std::string>());
    const AugmentPlan p = plan_augment(src.width, src.height, small_config(), c["seed"].get<uint64_t>(),
                                       c["epoch"].get<uint64_t>(), c["index"].get<uint64_t>());
    check_plan(p, c["plan"]);
  }
}

TEST_CASE("each AutoAugment operation matches Pillow", "[augment]") {
  // Per-op worst case over the golden images, printed so the exactness is visible in test logs.
  std::map<std::string, Diff> worst;
  for (const auto& c : cases()["ops"]) {
    const std::string op = c["op"].get<std::string>();
    const Image src = load_png(c["source"].get<std::string>());
    REQUIRE(src.mode == PixelMode::RGB);
    const Image want = load_png(c["expected"].get<std::string>());
    const Image got = aug::apply_step(src, {op_from_name(op), c["arg"].get<double>()});
    const Diff d = compare(got, want);
    INFO(op << " arg " << c["arg"].get<double>() << " on " << c["source"].get<std::string>() << ": max " << d.max
            << " mean " << d.mean << " differing " << d.differing);
    Diff& w = worst[op];
    w.max = std::max(w.max, d.max);
    w.mean = std::max(w.mean, d.mean);
    w.differing = std::max(w.differing, d.differing);
    // Exact for every op, rotate and shear included: Pillow's affine bicubic is plain double arithmetic
    // that the C++ code evaluates in the same order (see the note on FMA contraction in augment.cpp).
    CHECK(d.max == 0);
  }
  for (const auto& [op, d] : worst)
    std::fprintf(stderr, "augment vs Pillow: %-18s max abs diff %d, mean abs diff %.5f, pixels differing %zu\n",
                 op.c_str(), d.max, d.mean, d.differing);
  REQUIRE(worst.size() == 10);
}

TEST_CASE("whole training transform matches Pillow for every sub-policy", "[augment]") {
  const AugmentConfig cfg = small_config();
  std::set<int> sub_policies;
  Diff worst;
  for (const auto& c : cases()["pipeline"]) {
    const Image src = load_png(c["source"].get<std::string>());
    const Image want = load_png(c["expected"].get<std::string>());
    const Image got = augment_image(src, cfg, c["seed"].get<uint64_t>(), c["epoch"].get<uint64_t>(),
                                    c["index"].get<uint64_t>());
    REQUIRE(got.mode == PixelMode::RGB);
    const Diff d = compare(got, want);
    INFO("pipeline " << c["expected"].get<std::string>() << " (" << c["source"].get<std::string>() << ", plan "
                     << c["plan"].dump() << "): max " << d.max << " mean " << d.mean);
    CHECK(d.max == 0);  // crop + resize (image.cpp) + flip + AutoAugment, all bit-exact
    worst.max = std::max(worst.max, d.max);
    worst.mean = std::max(worst.mean, d.mean);
    sub_policies.insert(c["plan"]["sub_policy"].get<int>());
  }
  std::fprintf(stderr, "augment vs Pillow: whole pipeline    max abs diff %d, worst mean abs diff %.5f\n", worst.max,
               worst.mean);
  REQUIRE(sub_policies.size() == 25);
}

TEST_CASE("augmentation is a function of (seed, epoch, index) only", "[augment]") {
  const Image src = load_png("src_rgb48x36.png");
  AugmentConfig cfg;
  cfg.resolution = 40;
  const Image a = augment_image(src, cfg, 11, 2, 5);
  const Image b = augment_image(src, cfg, 11, 2, 5);
  REQUIRE(a.pixels == b.pixels);
  REQUIRE(a.width == 40);
  REQUIRE(a.height == 40);
  REQUIRE(a.mode == PixelMode::RGB);
  // Other indices / epochs / seeds give other images (the crop alone almost always differs).
  int different = 0;
  for (uint64_t i = 0; i < 8; ++i) different += augment_image(src, cfg, 11, 2, 100 + i).pixels != a.pixels;
  different += augment_image(src, cfg, 11, 3, 5).pixels != a.pixels;
  different += augment_image(src, cfg, 12, 2, 5).pixels != a.pixels;
  REQUIRE(different == 10);

  std::vector<float> chw(3 * 40 * 40), chw2(3 * 40 * 40);
  augment_to_chw(src, cfg, 11, 2, 5, chw.data());
  augment_to_chw(src, cfg, 11, 2, 5, chw2.data());
  REQUIRE(chw == chw2);
  // Same values as normalising the RGB image by hand; all within the normalised [0, 1] range.
  for (int c = 0; c < 3; ++c) {
    const float lo = (0.0f - kClipMean[c]) / kClipStd[c], hi = (1.0f - kClipMean[c]) / kClipStd[c];
    for (int p = 0; p < 40 * 40; ++p) {
      const float v = chw[c * 1600 + p];
      REQUIRE(v >= lo - 1e-5f);
      REQUIRE(v <= hi + 1e-5f);
      const float expect = (a.pixels[3 * p + c] / 255.0f - kClipMean[c]) / kClipStd[c];
      REQUIRE(std::abs(v - expect) < 1e-5f);
    }
  }
}

TEST_CASE("crop sampling follows RandomResizedCrop(scale=(0.9,1), ratio=(3/4,4/3))", "[augment]") {
  AugmentConfig cfg;
  const int W = 640, H = 480;
  std::vector<int> sub_count(25, 0);
  int flips = 0, fallback = 0;
  const int n = 4000;
  double area_sum = 0;
  for (int i = 0; i < n; ++i) {
    const AugmentPlan p = plan_augment(W, H, cfg, 42, 1, i);
    REQUIRE(p.crop_x >= 0);
    REQUIRE(p.crop_y >= 0);
    REQUIRE(p.crop_x + p.crop_w <= W);
    REQUIRE(p.crop_y + p.crop_h <= H);
    // w and h are rounded from sqrt(area*r) and sqrt(area/r): allow half a pixel on each side.
    const double frac_hi = (p.crop_w + 0.5) * (p.crop_h + 0.5) / double(W * H);
    const double frac_lo = (p.crop_w - 0.5) * (p.crop_h - 0.5) / double(W * H);
    REQUIRE(frac_hi >= 0.9);
    REQUIRE(frac_lo <= 1.0);
    const double ratio_lo = (p.crop_w + 0.5) / (p.crop_h - 0.5), ratio_hi = (p.crop_w - 0.5) / (p.crop_h + 0.5);
    REQUIRE(ratio_lo >= 0.75);
    REQUIRE(ratio_hi <= 4.0 / 3.0);
    area_sum += double(p.crop_w) * p.crop_h / (W * H);
    fallback += p.crop_w == W && p.crop_h == H;
    flips += p.flip;
    REQUIRE(p.sub_policy >= 0);
    REQUIRE(p.sub_policy < 25);
    ++sub_count[p.sub_policy];
    REQUIRE(p.steps.size() <= 2);
  }
  // Accepted crops cover 0.9..1 of the image (smaller ones fit more often), fallbacks all of it.
  REQUIRE(area_sum / n > 0.92);
  REQUIRE(area_sum / n < 0.98);
  // With scale >= 0.9 most attempts do not fit inside a 4:3 image, so all 10 fail fairly often and
  // the fallback (the whole image, its ratio being within bounds) is taken: probability
  // (1 - p_fit)^10, p_fit integrated here on a grid over the area fraction and the log-ratio.
  double p_fit = 0;
  const int grid = 400;
  for (int a = 0; a < grid; ++a) {
    for (int r = 0; r < grid; ++r) {
      const double area = (0.9 + 0.1 * (a + 0.5) / grid) * W * H;
      const double ratio = std::exp(std::log(0.75) + (std::log(4.0 / 3.0) - std::log(0.75)) * (r + 0.5) / grid);
      p_fit += std::nearbyint(std::sqrt(area * ratio)) <= W && std::nearbyint(std::sqrt(area / ratio)) <= H;
    }
  }
  p_fit /= double(grid) * grid;
  const double p_fallback = std::pow(1.0 - p_fit, 10);
  INFO("fallbacks " << fallback << " of " << n << ", expected fraction " << p_fallback);
  REQUIRE(std::abs(double(fallback) / n - p_fallback) < 0.035);  // ~4.5 sigma
  REQUIRE(std::abs(flips - n / 2) < 200);  // ~6 sigma
  for (int c : sub_count) {
    REQUIRE(c > 100);  // expected 160 each
    REQUIRE(c < 230);
  }
  // A strip far outside the ratio bounds never fits: centre crop clamped to ratio 4/3.
  const AugmentPlan wide = plan_augment(300, 50, cfg, 1, 0, 0);
  REQUIRE(wide.crop_w == 67);
  REQUIRE(wide.crop_h == 50);
  REQUIRE(wide.crop_x == (300 - 67) / 2);
  REQUIRE(wide.crop_y == 0);

  AugmentConfig no_aa = cfg;
  no_aa.auto_augment = false;
  no_aa.hflip = 0.0;
  for (int i = 0; i < 50; ++i) {
    const AugmentPlan p = plan_augment(W, H, no_aa, 42, 1, i);
    REQUIRE(p.sub_policy == -1);
    REQUIRE(p.steps.empty());
    REQUIRE(!p.flip);
    // Switching AutoAugment or the flip off does not move the crop.
    const AugmentPlan q = plan_augment(W, H, cfg, 42, 1, i);
    REQUIRE(p.crop_x == q.crop_x);
    REQUIRE(p.crop_w == q.crop_w);
  }
  REQUIRE_THROWS_AS(plan_augment(0, 10, cfg, 1, 0, 0), UsageError);
  AugmentConfig bad = cfg;
  bad.resolution = 0;
  REQUIRE_THROWS_AS(plan_augment(10, 10, bad, 1, 0, 0), UsageError);
}

TEST_CASE("parallel augmentation gives the same results as sequential", "[augment]") {
  const Image src = load_png("src_rgb30x44.png");
  AugmentConfig cfg;
  cfg.resolution = 24;
  const int n = 48;
  const size_t per = 3 * 24 * 24;
  std::vector<float> seq(n * per), par(n * per, -100.0f);
  for (int i = 0; i < n; ++i) augment_to_chw(src, cfg, 5, 9, i, seq.data() + i * per);
  // Two threads, interleaved indices, processed in reverse order.
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (int i = n - 1 - t; i >= 0; i -= 2) augment_to_chw(src, cfg, 5, 9, i, par.data() + i * per);
    });
  for (auto& th : threads) th.join();
  REQUIRE(seq == par);
}

TEST_CASE("operation edge cases", "[augment]") {
  const Image src = load_png("src_rgb32.png");
  // Rotation by whole turns is exact; half turns compose to the identity.
  REQUIRE(aug::rotate(src, 360.0).pixels == src.pixels);
  REQUIRE(aug::rotate(aug::rotate(src, 180.0), -180.0).pixels == src.pixels);
  REQUIRE(aug::rotate(aug::rotate(src, 90.0), 270.0).pixels == src.pixels);
  REQUIRE(aug::flip_left_right(aug::flip_left_right(src)).pixels == src.pixels);
  // Enhance factor 1 returns the image; posterize 8 bits and solarize at 256 change nothing.
  REQUIRE(aug::color(src, 1.0).pixels == src.pixels);
  REQUIRE(aug::contrast(src, 1.0).pixels == src.pixels);
  REQUIRE(aug::sharpness(src, 1.0).pixels == src.pixels);
  REQUIRE(aug::posterize(src, 8).pixels == src.pixels);
  REQUIRE(aug::solarize(src, 256).pixels == src.pixels);
  REQUIRE(aug::invert(aug::invert(src)).pixels == src.pixels);
  // A flat image: autocontrast and equalize leave it alone, contrast keeps its grey.
  Image flat = src;
  std::fill(flat.pixels.begin(), flat.pixels.end(), uint8_t(77));
  REQUIRE(aug::autocontrast(flat).pixels == flat.pixels);
  REQUIRE(aug::equalize(flat).pixels == flat.pixels);
  // Shear keeps the fill colour where the source is not covered.
  const Image sheared = aug::shear_x(src, 0.3, {1, 2, 3});
  const uint8_t* last = sheared.pixels.data() + sheared.pixels.size() - 3;
  REQUIRE(std::vector<uint8_t>(last, last + 3) == std::vector<uint8_t>{1, 2, 3});
  // L images are accepted, other modes are refused with a UsageError.
  const Image gray = aug::to_gray(src);
  REQUIRE(gray.mode == PixelMode::L);
  REQUIRE(aug::equalize(gray).pixels.size() == gray.pixels.size());
  REQUIRE(aug::rotate(gray, 10.0).mode == PixelMode::L);
  Image rgba;
  rgba.width = rgba.height = 2;
  rgba.mode = PixelMode::RGBA;
  rgba.pixels.assign(16, 0);
  REQUIRE_THROWS_AS(aug::rotate(rgba, 10.0), UsageError);
  REQUIRE_THROWS_AS(aug::posterize(src, 0), UsageError);
}

TEST_CASE("RGB rotate and shear equal the channel-by-channel computation", "[augment]") {
  // RGB images take a path of their own (three channels at once, in SSE2 or AVX2 lanes); L images
  // the plain per-channel loop. Each RGB channel must be that channel's L result, bit for bit.
  const Image src = load_png("src_rgb32.png");
  Image wide = resize_bicubic(src, 57, 41);  // not square, odd sizes: borders and clipping on all sides
  for (const Image& im : {src, wide}) {
    std::vector<Image> planes(3);
    for (int c = 0; c < 3; ++c) {
      planes[c] = blank_image(im.width, im.height, PixelMode::L);
      for (size_t i = 0; i < planes[c].pixels.size(); ++i) planes[c].pixels[i] = im.pixels[3 * i + c];
    }
    const aug::Fill fill{123, 117, 104};
    for (double arg : {-30.0, -7.5, 0.3, 13.0, 29.9, 45.0, 123.0}) {
      for (bool shear : {false, true}) {
        const double a = shear ? arg / 60.0 : arg;
        const Image rgb = shear ? aug::shear_x(im, a, fill) : aug::rotate(im, a, fill);
        for (int c = 0; c < 3; ++c) {
          const aug::Fill f{fill[c], fill[c], fill[c]};
          const Image one = shear ? aug::shear_x(planes[c], a, f) : aug::rotate(planes[c], a, f);
          size_t differing = 0;
          for (size_t i = 0; i < one.pixels.size(); ++i) differing += rgb.pixels[3 * i + c] != one.pixels[i];
          INFO((shear ? "shear " : "rotate ") << a << " channel " << c << " on " << im.width << "x" << im.height);
          CHECK(differing == 0);
        }
      }
    }
  }
}

TEST_CASE("8-bit training pixels become augment_to_chw's floats through normalize_table", "[augment]") {
  // clip-finetune's workers write augment_to_chw_u8's bytes and the step's device looks each byte up
  // in normalize_table (normalize_pixels_u8): that must give the float path's values bit for bit.
  const Image src = load_png("src_rgb32.png");
  const AugmentConfig cfg = small_config();
  const size_t n = 3 * size_t(cfg.resolution) * cfg.resolution;
  const NormalizeTable table = normalize_table();
  std::vector<float> f(n);
  std::vector<uint8_t> u(n);
  std::set<int> sub_policies;
  for (uint64_t i = 0; i < 60; ++i) {
    augment_to_chw(src, cfg, 3, 1, i, f.data());
    augment_to_chw_u8(src, cfg, 3, 1, i, u.data());
    size_t differing = 0;
    for (size_t k = 0; k < n; ++k) differing += table[k / (n / 3)][u[k]] != f[k];
    INFO("index " << i);
    CHECK(differing == 0);
    sub_policies.insert(plan_augment(src.width, src.height, cfg, 3, 1, i).sub_policy);
  }
  REQUIRE(sub_policies.size() > 10);  // many different operations went through both paths
}
