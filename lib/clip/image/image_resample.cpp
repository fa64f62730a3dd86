// Pillow 9.4's Image.resize for 8-bit images, reproduced so that the output bytes are identical:
//  * BICUBIC (a = -0.5), antialiased: the filter support grows with the downscale factor;
//  * per output pixel the taps come from a window [xmin, xmin+n) rounded from centre +- support;
//    weights are computed in double, normalised to sum 1, then turned into 22-bit fixed point
//    (32 - 8 - 2 bits: 8 for the value, 2 of headroom for the negative lobes / overshoot);
//  * horizontal pass first (only over the source rows the vertical pass will read), 8-bit rounded
//    and clipped intermediate, then the vertical pass;
//  * an axis whose size does not change is not resampled at all;
//  * P and 1 images always use NEAREST; RGBA/LA are premultiplied (RGBa/La) before and
//    un-premultiplied after, with Pillow's integer rounding.
// The arithmetic order of the double computations matters for bit-exactness, so this file must not
// be compiled with FMA contraction or -ffast-math.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "clip/base/cpu.h"
#include "clip/base/error.h"
#include "clip/image/image.h"

namespace clip {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  // Keys' cubic convolution kernel with a = -0.5, written in the same evaluation order as Pillow.
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

using Taps = BicubicTaps;

Taps make_taps(int in_size, int out_size) {
  constexpr double kSupport = 2.0;  // bicubic
  // Pillow passes the box as floats: in0 = 0, in1 = in_size.
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = kSupport * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.k.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  const double ss = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);  // truncation, as in C
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = bicubic((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    int32_t* k = &t.k[static_cast<size_t>(xx) * t.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      k[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                   : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

inline uint8_t clip8(int32_t v) {
  const int32_t s = v >> kPrecisionBits;  // arithmetic shift, like Pillow's table lookup index
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

// Horizontal pass over source rows [row0, row0 + rows): interleaved C channels in and out.
template <int C>
void horizontal(const uint8_t* in, int in_w, int row0, int rows, const Taps& t, int out_w, uint8_t* out) {
  // Local copies of the tap tables: the uint8_t stores below could otherwise alias them.
  const int32_t* __restrict kk = t.k.data();
  const int* __restrict first = t.first.data();
  const int* __restrict count = t.count.data();
  const int ksize = t.ksize;
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* __restrict src = in + static_cast<size_t>(yy + row0) * in_w * C;
    uint8_t* __restrict dst = out + static_cast<size_t>(yy) * out_w * C;
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = kk + static_cast<size_t>(xx) * ksize;
      const uint8_t* s = src + static_cast<size_t>(first[xx]) * C;
      const int n = count[xx];
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = 1 << (kPrecisionBits - 1);
      for (int x = 0; x < n; ++x) {
        const int32_t kx = k[x];
        for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(s[x * C + c]) * kx;
      }
      for (int c = 0; c < C; ++c) dst[xx * C + c] = clip8(acc[c]);
    }
  }
}

// Vertical pass: a whole output row at a time (integer sums, so the order does not change the result).
// The loops over a row vectorise; vertical() runs an AVX2 build of them where the CPU has AVX2 (8
// 32-bit products an instruction; the portable build has SSE2, without a 32-bit vector multiply).
#if defined(__GNUC__) && defined(__x86_64__)
#define CLIP_ALWAYS_INLINE inline __attribute__((always_inline))
#define CLIP_HAVE_AVX2_BUILD 1
#else
#define CLIP_ALWAYS_INLINE inline
#endif
CLIP_ALWAYS_INLINE void vertical_rows(const uint8_t* in, int row_bytes, const Taps& t, int out_h, uint8_t* out,
                                      int first_shift) {
  std::vector<int32_t> acc_buf(row_bytes);
  int32_t* __restrict acc = acc_buf.data();
  for (int yy = 0; yy < out_h; ++yy) {
    for (int i = 0; i < row_bytes; ++i) acc[i] = 1 << (kPrecisionBits - 1);
    const int32_t* k = &t.k[static_cast<size_t>(yy) * t.ksize];
    const int y0 = t.first[yy] - first_shift;
    for (int y = 0; y < t.count[yy]; ++y) {
      const uint8_t* __restrict src = in + static_cast<size_t>(y0 + y) * row_bytes;
      const int32_t ky = k[y];
      for (int i = 0; i < row_bytes; ++i) acc[i] += static_cast<int32_t>(src[i]) * ky;
    }
    uint8_t* __restrict dst = out + static_cast<size_t>(yy) * row_bytes;
    for (int i = 0; i < row_bytes; ++i) dst[i] = clip8(acc[i]);
  }
}

#ifdef CLIP_HAVE_AVX2_BUILD
__attribute__((target("avx2"))) void vertical_avx2(const uint8_t* in, int row_bytes, const Taps& t, int out_h,
                                                   uint8_t* out, int first_shift) {
  vertical_rows(in, row_bytes, t, out_h, out, first_shift);
}
#endif

void vertical(const uint8_t* in, int row_bytes, const Taps& t, int out_h, uint8_t* out, int first_shift,
              bool simd = true) {
#ifdef CLIP_HAVE_AVX2_BUILD
  if (simd && cpu_features().avx2) return vertical_avx2(in, row_bytes, t, out_h, out, first_shift);
#endif
  vertical_rows(in, row_bytes, t, out_h, out, first_shift);
}

// src is `rows` x `cols` pixels of C bytes; dst becomes `cols` x `rows` (dst[x][y] = src[y][x]), in
// tiles that stay in the cache, each destination row written front to back. A 3-byte pixel moves as
// one 4-byte load and store: the byte too many lands on the next pixel of the same destination row,
// written after it (the next y, in this tile or the next one down), and the last pixel of each
// destination row, whose extra byte would land on the next row, moves as 3 bytes (so does the
// source's last pixel, the only one whose 4-byte read would run past the source).
template <int C>
void transpose(const uint8_t* src, int rows, int cols, uint8_t* dst) {
  constexpr int kTile = 32;
  for (int x0 = 0; x0 < cols; x0 += kTile)
    for (int y0 = 0; y0 < rows; y0 += kTile) {
      const int y1 = std::min(rows, y0 + kTile), x1 = std::min(cols, x0 + kTile);
      for (int x = x0; x < x1; ++x) {
        uint8_t* d = dst + static_cast<size_t>(x) * rows * C;
        const uint8_t* s = src + static_cast<size_t>(x) * C;
        if constexpr (C == 3) {
          const int wide_end = std::min(y1, rows - 1);
          int y = y0;
          for (; y < wide_end; ++y) std::memcpy(d + static_cast<size_t>(y) * 3, s + static_cast<size_t>(y) * cols * 3, 4);
          for (; y < y1; ++y) std::memcpy(d + static_cast<size_t>(y) * 3, s + static_cast<size_t>(y) * cols * 3, 3);
        } else {
          for (int y = y0; y < y1; ++y)
            std::memcpy(d + static_cast<size_t>(y) * C, s + static_cast<size_t>(y) * cols * C, C);
        }
      }
    }
}

// The horizontal pass as a vertical one: the source rows [row0, row0 + rows) transposed, so that each
// output column is the weighted sum of whole source columns, which vertical() computes over all
// rows x channels at once (vectorised), then transposed back. The sums are the same integers in
// another order, so the bytes are horizontal()'s.
template <int C>
void horizontal_by_columns(const uint8_t* in, int in_w, int row0, int rows, const Taps& t, int out_w, uint8_t* out) {
  std::vector<uint8_t> cols(static_cast<size_t>(in_w) * rows * C), res(static_cast<size_t>(out_w) * rows * C);
  transpose<C>(in + static_cast<size_t>(row0) * in_w * C, rows, in_w, cols.data());
  vertical(cols.data(), rows * C, t, out_w, res.data(), 0);
  transpose<C>(res.data(), out_w, rows, out);
}

template <int C>
std::vector<uint8_t> resample(const std::vector<uint8_t>& in, int in_w, int in_h, int out_w, int out_h,
                              bool by_columns) {
  const bool need_h = out_w != in_w, need_v = out_h != in_h;
  const Taps th = make_taps(in_w, out_w);
  const Taps tv = make_taps(in_h, out_h);
  // Only the source rows that the vertical taps touch go through the horizontal pass.
  const int ybox_first = tv.first[0];
  const int ybox_last = tv.first[out_h - 1] + tv.count[out_h - 1];
  std::vector<uint8_t> tmp;
  const std::vector<uint8_t>* cur = &in;
  int cur_w = in_w, shift = 0;
  if (need_h) {
    tmp.resize(static_cast<size_t>(out_w) * (ybox_last - ybox_first) * C);
    // Column-wise where a column is long enough to fill vector registers and the transposed copy stays
    // moderate (up to 16 M pixels: photos; the same bytes either way).
    const int64_t pixels = static_cast<int64_t>(in_w) * (ybox_last - ybox_first);
    if (by_columns && (ybox_last - ybox_first) * C >= 64 && pixels <= (int64_t{16} << 20))
      horizontal_by_columns<C>(in.data(), in_w, ybox_first, ybox_last - ybox_first, th, out_w, tmp.data());
    else
      horizontal<C>(in.data(), in_w, ybox_first, ybox_last - ybox_first, th, out_w, tmp.data());
    cur = &tmp;
    cur_w = out_w;
    shift = ybox_first;
  }
  if (need_v) {
    std::vector<uint8_t> out(static_cast<size_t>(cur_w) * out_h * C);
    vertical(cur->data(), cur_w * C, tv, out_h, out.data(), shift, /*simd=*/by_columns);
    return out;
  }
  return *cur;  // need_h only: the horizontal pass covered every row
}

void check_size(const Image& im, int width, int height, const char* what) {
  if (width < 1 || height < 1)
    throw UsageError(std::string(what) + ": target size must be at least 1x1, got " + std::to_string(width) + "x" +
                     std::to_string(height));
  if (im.width < 1 || im.height < 1) throw DataError(std::string(what) + ": empty source image");
  if (im.pixels.size() != static_cast<size_t>(im.width) * im.height * im.channels())
    throw DataError(std::string(what) + ": pixel buffer size does not match a " + std::to_string(im.width) + "x" +
                    std::to_string(im.height) + " " + mode_name(im.mode) + " image");
}

inline uint8_t muldiv255(unsigned a, unsigned b) {
  const unsigned t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

inline uint8_t unpremul(unsigned v, unsigned alpha) {
  if (alpha == 0 || alpha == 255) return static_cast<uint8_t>(v);
  const unsigned q = (255 * v) / alpha;
  return static_cast<uint8_t>(q > 255 ? 255 : q);
}

}  // namespace

Image resize_nearest(const Image& im, int width, int height) {
  check_size(im, width, height, "resize_nearest");
  if (width == im.width && height == im.height) return im;
  Image out = blank_image(width, height, im.mode, im.palette);
  const int c = im.channels();
  // Pillow's affine "scale" transform: sample points start at half a step and advance by
  // repeated addition (the accumulated double is what gets truncated).
  const double ax = static_cast<double>(static_cast<float>(im.width)) / width;
  const double ay = static_cast<double>(static_cast<float>(im.height)) / height;
  std::vector<int> xin(width, -1);
  double xo = 0.0 + ax * 0.5;
  for (int x = 0; x < width; ++x) {
    const int xi = xo < 0.0 ? -1 : static_cast<int>(xo);
    if (xi >= 0 && xi < im.width) xin[x] = xi;
    xo += ax;
  }
  double yo = 0.0 + ay * 0.5;
  for (int y = 0; y < height; ++y) {
    const int yi = yo < 0.0 ? -1 : static_cast<int>(yo);
    yo += ay;
    if (yi < 0 || yi >= im.height) continue;
    const uint8_t* src = &im.pixels[static_cast<size_t>(yi) * im.width * c];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * width * c];
    for (int x = 0; x < width; ++x)
      if (xin[x] >= 0) std::memcpy(dst + static_cast<size_t>(x) * c, src + static_cast<size_t>(xin[x]) * c, c);
  }
  return out;
}

namespace {

Image resize_bicubic(const Image& im, int width, int height, bool by_columns) {
  check_size(im, width, height, "resize_bicubic");
  if (width == im.width && height == im.height) return im;
  if (im.mode == PixelMode::P || im.mode == PixelMode::One) return resize_nearest(im, width, height);
  Image out;
  out.width = width;
  out.height = height;
  out.mode = im.mode;
  const size_t n = static_cast<size_t>(im.width) * im.height;
  switch (im.mode) {
    case PixelMode::L:
    case PixelMode::P:
    case PixelMode::One:
      out.pixels = resample<1>(im.pixels, im.width, im.height, width, height, by_columns);
      break;
    case PixelMode::RGB:
      out.pixels = resample<3>(im.pixels, im.width, im.height, width, height, by_columns);
      break;
    case PixelMode::CMYK:
      out.pixels = resample<4>(im.pixels, im.width, im.height, width, height, by_columns);
      break;
    case PixelMode::LA:
    case PixelMode::RGBA: {
      const int c = im.channels();
      std::vector<uint8_t> pre(im.pixels.size());
      const uint8_t* s = im.pixels.data();
      for (size_t i = 0; i < n; ++i, s += c) {
        const unsigned a = s[c - 1];
        for (int j = 0; j < c - 1; ++j) pre[i * c + j] = muldiv255(s[j], a);
        pre[i * c + c - 1] = static_cast<uint8_t>(a);
      }
      out.pixels = c == 2 ? resample<2>(pre, im.width, im.height, width, height, by_columns)
                          : resample<4>(pre, im.width, im.height, width, height, by_columns);
      const size_t m = static_cast<size_t>(width) * height;
      uint8_t* p = out.pixels.data();
      for (size_t i = 0; i < m; ++i, p += c) {
        const unsigned a = p[c - 1];
        for (int j = 0; j < c - 1; ++j) p[j] = unpremul(p[j], a);
      }
      break;
    }
  }
  return out;
}

}  // namespace

Image resize_bicubic(const Image& im, int width, int height) { return resize_bicubic(im, width, height, true); }
Image resize_bicubic_by_rows(const Image& im, int width, int height) { return resize_bicubic(im, width, height, false); }

std::vector<int32_t> BicubicTaps::packed() const {
  std::vector<int32_t> v(first.begin(), first.end());
  v.insert(v.end(), count.begin(), count.end());
  v.insert(v.end(), k.begin(), k.end());
  return v;
}

BicubicTaps bicubic_taps(int in_size, int out_size) {
  if (in_size < 1 || out_size < 1) throw UsageError("bicubic_taps: sizes must be positive");
  return make_taps(in_size, out_size);
}

std::vector<float> bicubic_matrix(int in_size, int out_size) {
  if (in_size < 1 || out_size < 1) throw UsageError("bicubic_matrix: sizes must be positive");
  const Taps t = make_taps(in_size, out_size);
  std::vector<float> m(static_cast<size_t>(out_size) * in_size, 0.0f);
  for (int i = 0; i < out_size; ++i)
    for (int j = 0; j < t.count[i]; ++j)
      m[static_cast<size_t>(i) * in_size + t.first[i] + j] =
          static_cast<float>(t.k[static_cast<size_t>(i) * t.ksize + j]) / static_cast<float>(1 << kPrecisionBits);
  return m;
}

}  // namespace clip
