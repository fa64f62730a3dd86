// Training augmentation: see pillow_ops.h. The arithmetic of each operation follows Pillow 9.4's C
// code path for 8-bit images (float vs double, truncation vs rounding, border handling) because
// the goal is the same pixels, not merely a similar-looking transform. Keep the expression order
// of the floating-point code as it is: reassociating it changes results in the last bit. For the
// same reason this file assumes no fused multiply-add contraction (true for the default x86-64
// target; a build with -march=<FMA-capable> and -ffp-contract=fast may move the rotate/shear and
// enhance results by one level, which tests/test_augment.cpp would report).
#include "clip/image/pillow_ops.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "clip/base/cpu.h"
#include "clip/base/error.h"

namespace clip {

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

Image same_shape(const Image& im) { return blank_image(im.width, im.height, im.mode); }

// One lookup table per channel, as Image.point with 256*bands entries. Pixel by pixel (no
// division per byte): these loops are most of the cost of AutoAugment's point operations.
Image apply_luts(const Image& im, const std::vector<std::array<uint8_t, 256>>& luts) {
  Image out = same_shape(im);
  const int c = im.channels();
  const size_t n = im.pixels.size();
  const uint8_t* in = im.pixels.data();
  uint8_t* o = out.pixels.data();
  if (c == 3) {
    const uint8_t *l0 = luts[0].data(), *l1 = luts[1].data(), *l2 = luts[2].data();
    for (size_t i = 0; i + 2 < n; i += 3) {
      o[i] = l0[in[i]];
      o[i + 1] = l1[in[i + 1]];
      o[i + 2] = l2[in[i + 2]];
    }
  } else {
    for (size_t i = 0; i < n; ++i) o[i] = luts[i % c][in[i]];
  }
  return out;
}

Image apply_lut(const Image& im, const std::array<uint8_t, 256>& lut) {
  Image out = same_shape(im);
  const size_t n = im.pixels.size();
  const uint8_t* in = im.pixels.data();
  uint8_t* o = out.pixels.data();
  for (size_t i = 0; i < n; ++i) o[i] = lut[in[i]];
  return out;
}

std::vector<std::array<uint64_t, 256>> histograms(const Image& im) {
  const int c = im.channels();
  std::vector<std::array<uint64_t, 256>> h(c);
  for (auto& a : h) a.fill(0);
  const size_t n = im.pixels.size();
  const uint8_t* in = im.pixels.data();
  if (c == 3) {
    uint64_t *h0 = h[0].data(), *h1 = h[1].data(), *h2 = h[2].data();
    for (size_t i = 0; i + 2 < n; i += 3) {
      ++h0[in[i]];
      ++h1[in[i + 1]];
      ++h2[in[i + 2]];
    }
  } else {
    for (size_t i = 0; i < n; ++i) ++h[i % c][in[i]];
  }
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

// Where output pixel (x, y) of an affine transform samples the source, as Pillow's bicubic affine
// computes it: false when outside the source (the fill colour stays); else the first of the 4 x 4
// taps (xi, yi), unclipped, and the fractions (dx, dy).
inline bool affine_source(const std::array<double, 6>& a, int x, int y, int W, int H, int& xi, int& yi, double& dx,
                          double& dy) {
  const double xo = x + 0.5, yo = y + 0.5;
  double xin = a[0] * xo + a[1] * yo + a[2];
  double yin = a[3] * xo + a[4] * yo + a[5];
  if (xin < 0.0 || xin >= W || yin < 0.0 || yin >= H) return false;
  xin -= 0.5;
  yin -= 0.5;
  xi = pil_floor(xin);
  yi = pil_floor(yin);
  dx = xin - xi;
  dy = yin - yi;
  --xi;
  --yi;
  return true;
}

// Four doubles: an RGB pixel's three channels and one unused lane. Lane-wise IEEE operations in the
// scalar code's order, so each lane's result is the scalar result bit for bit (no contraction into
// fused multiply-adds on the default x86-64 target, as the note at the top of the file says).
// Aligned as a double (unaligned loads and stores): a std::vector would drop a 32-byte alignment.
// Px4 values never cross a call (cubic4 and the body are always inlined), so the ABI note GCC
// gives for 32-byte vectors outside AVX code does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"  // reported at the end of the file: for the rest of it
typedef double Px4 __attribute__((vector_size(32), aligned(8), may_alias));

inline __attribute__((always_inline)) Px4 cubic4(Px4 v1, Px4 v2, Px4 v3, Px4 v4, double d) {
  const Px4 p1 = v2;
  const Px4 p2 = -v1 + v3;
  const Px4 p3 = 2 * (v1 - v2) + v3 - v4;
  const Px4 p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

// affine_bicubic for RGB: the three channels of a pixel at once, from the source converted to
// doubles once (exact: every byte is a double). Compiled twice: for the baseline x86-64 (SSE2, two
// lanes an instruction) and for AVX2 (four), chosen at run time; AVX2 without FMA, so nothing fuses.
inline __attribute__((always_inline)) Image affine_rgb_body(const Image& im, const std::array<double, 6>& a,
                                                            const Fill& fill) {
  const int W = im.width, H = im.height;
  std::vector<double> src_d(4 * static_cast<size_t>(W) * H);
  for (size_t i = 0; i < src_d.size() / 4; ++i) {
    const uint8_t* p = im.pixels.data() + 3 * i;
    src_d[4 * i] = p[0];
    src_d[4 * i + 1] = p[1];
    src_d[4 * i + 2] = p[2];
  }
  const Px4* src = reinterpret_cast<const Px4*>(src_d.data());
  Image out = same_shape(im);
  auto xclip = [W](int x) { return x < 0 ? 0 : x < W ? x : W - 1; };
  auto yclip = [H](int y) { return y < 0 ? 0 : y < H ? y : H - 1; };
  for (int y = 0; y < H; ++y) {
    uint8_t* o = out.pixels.data() + static_cast<size_t>(y) * W * 3;
    for (int x = 0; x < W; ++x, o += 3) {
      int xi, yi;
      double dx, dy;
      if (!affine_source(a, x, y, W, H, xi, yi, dx, dy)) {
        o[0] = fill[0];
        o[1] = fill[1];
        o[2] = fill[2];
        continue;
      }
      const int x0 = xclip(xi), x1 = xclip(xi + 1), x2 = xclip(xi + 2), x3 = xclip(xi + 3);
      // (No lambda here: a Px4 must not cross a call between the two targets' code.)
      const Px4* r1 = src + static_cast<size_t>(yclip(yi)) * W;
      const Px4 v1 = cubic4(r1[x0], r1[x1], r1[x2], r1[x3], dx);
      Px4 v2 = v1, v3, v4;
      if (yi + 1 >= 0 && yi + 1 < H) {
        const Px4* r = src + static_cast<size_t>(yi + 1) * W;
        v2 = cubic4(r[x0], r[x1], r[x2], r[x3], dx);
      }
      v3 = v2;
      if (yi + 2 >= 0 && yi + 2 < H) {
        const Px4* r = src + static_cast<size_t>(yi + 2) * W;
        v3 = cubic4(r[x0], r[x1], r[x2], r[x3], dx);
      }
      v4 = v3;
      if (yi + 3 >= 0 && yi + 3 < H) {
        const Px4* r = src + static_cast<size_t>(yi + 3) * W;
        v4 = cubic4(r[x0], r[x1], r[x2], r[x3], dx);
      }
      const Px4 v = cubic4(v1, v2, v3, v4, dy);
      for (int b = 0; b < 3; ++b) o[b] = v[b] <= 0.0 ? 0 : v[b] >= 255.0 ? 255 : static_cast<uint8_t>(v[b]);
    }
  }
  return out;
}

__attribute__((target("avx2"))) Image affine_rgb_avx2(const Image& im, const std::array<double, 6>& a,
                                                       const Fill& fill) {
  return affine_rgb_body(im, a, fill);
}

Image affine_rgb_base(const Image& im, const std::array<double, 6>& a, const Fill& fill) {
  return affine_rgb_body(im, a, fill);
}

}  // namespace

Image affine_bicubic(const Image& im, const std::array<double, 6>& a, Fill fill) {
  require_rgb_or_l(im, "affine transform");
  if (im.mode == PixelMode::RGB) return cpu_features().avx2 ? affine_rgb_avx2(im, a, fill) : affine_rgb_base(im, a, fill);
  const int W = im.width, H = im.height, C = im.channels();
  Image out = same_shape(im);
  for (size_t i = 0; i < out.pixels.size(); ++i) out.pixels[i] = fill[i % C];
  const uint8_t* src = im.pixels.data();
  const size_t stride = static_cast<size_t>(W) * C;
  auto xclip = [W](int x) { return x < 0 ? 0 : x < W ? x : W - 1; };
  auto yclip = [H](int y) { return y < 0 ? 0 : y < H ? y : H - 1; };
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) {
      int xi, yi;
      double dx, dy;
      if (!affine_source(a, x, y, W, H, xi, yi, dx, dy)) continue;  // keeps the fill colour
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
  Image out = blank_image(im.width, im.height, PixelMode::L);
  const size_t n = static_cast<size_t>(im.width) * im.height;
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
  Image out = blank_image(gray.width, gray.height, PixelMode::RGB);
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

}  // namespace aug
}  // namespace clip
