// Pixel modes, base64, crops, Pillow's convert('RGB') and the final ToTensor + Normalize step.
// Decoding lives in image_decode.cpp, resampling in image_resample.cpp, encoders in
// image_encode.cpp and the bitmap font / contact sheets in image_draw.cpp.
#include "clip/image/image.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "clip/base/error.h"

namespace clip {

int mode_channels(PixelMode m) {
  switch (m) {
    case PixelMode::L: return 1;
    case PixelMode::LA: return 2;
    case PixelMode::RGB: return 3;
    case PixelMode::RGBA: return 4;
    case PixelMode::P: return 1;
    case PixelMode::CMYK: return 4;
    case PixelMode::One: return 1;
  }
  return 1;
}

const char* mode_name(PixelMode m) {
  switch (m) {
    case PixelMode::L: return "L";
    case PixelMode::LA: return "LA";
    case PixelMode::RGB: return "RGB";
    case PixelMode::RGBA: return "RGBA";
    case PixelMode::P: return "P";
    case PixelMode::CMYK: return "CMYK";
    case PixelMode::One: return "1";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// base64
//
// Reproduces Python's base64.urlsafe_b64decode (binascii.a2b_base64 in its default, non-strict
// mode, after mapping '-' -> '+' and '_' -> '/'):
//  * characters outside the alphabet (whitespace, line breaks, any other ASCII) are skipped;
//  * an '=' only counts once two data characters of the current quad have been seen; the quad is
//    complete when data + '=' reach 4, and everything after that point is ignored;
//  * an unfinished quad at the end is an error ("Incorrect padding"), so padding is required.
// Differences: non-ASCII bytes are rejected (Python refuses a str with non-ASCII characters, which
// is what cn_clip's TSV reader passes), and errors are DataError.

namespace {

struct B64Table {
  int8_t v[256];
  constexpr B64Table() : v() {
    for (int i = 0; i < 256; ++i) v[i] = -1;
    for (int i = 0; i < 26; ++i) {
      v['A' + i] = static_cast<int8_t>(i);
      v['a' + i] = static_cast<int8_t>(26 + i);
    }
    for (int i = 0; i < 10; ++i) v['0' + i] = static_cast<int8_t>(52 + i);
    v['+'] = v['-'] = 62;
    v['/'] = v['_'] = 63;
  }
};
constexpr B64Table kB64;

}  // namespace

std::vector<uint8_t> base64_decode(std::string_view s) {
  std::vector<uint8_t> out;
  out.reserve(s.size() / 4 * 3 + 3);
  int quad_pos = 0, pads = 0;
  unsigned left = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80)
      throw DataError("base64: non-ASCII byte 0x" + std::to_string(c) + " at offset " + std::to_string(i) +
                      " (expected the +/ or -_ base64 alphabet)");
    if (c == '=') {
      if (quad_pos >= 2 && quad_pos + ++pads >= 4) return out;  // padding closes the data; the rest is ignored
      continue;
    }
    const int v = kB64.v[c];
    if (v < 0) continue;  // not in the alphabet: discarded, as Python does
    pads = 0;
    switch (quad_pos) {
      case 0: left = static_cast<unsigned>(v); quad_pos = 1; break;
      case 1:
        out.push_back(static_cast<uint8_t>((left << 2) | (static_cast<unsigned>(v) >> 4)));
        left = static_cast<unsigned>(v) & 0x0f;
        quad_pos = 2;
        break;
      case 2:
        out.push_back(static_cast<uint8_t>((left << 4) | (static_cast<unsigned>(v) >> 2)));
        left = static_cast<unsigned>(v) & 0x03;
        quad_pos = 3;
        break;
      default:
        out.push_back(static_cast<uint8_t>((left << 6) | static_cast<unsigned>(v)));
        quad_pos = 0;
        break;
    }
  }
  if (quad_pos == 1)
    throw DataError("base64: invalid length (" + std::to_string(out.size() / 3 * 4 + 1) +
                    " data characters is 1 more than a multiple of 4): the data is cut short");
  if (quad_pos != 0) throw DataError("base64: incorrect padding (the data must end with '=' padding to 4 characters)");
  return out;
}

std::string base64_encode(const uint8_t* data, size_t n) {
  static const char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v = (uint32_t(data[i]) << 16) | (uint32_t(data[i + 1]) << 8) | data[i + 2];
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += kAlpha[(v >> 6) & 63];
    out += kAlpha[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = uint32_t(data[i]) << 16;
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += "==";
  } else if (n - i == 2) {
    const uint32_t v = (uint32_t(data[i]) << 16) | (uint32_t(data[i + 1]) << 8);
    out += kAlpha[v >> 18];
    out += kAlpha[(v >> 12) & 63];
    out += kAlpha[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Image blank_image(int width, int height, PixelMode mode, const std::vector<uint8_t>& palette) {
  Image out;
  out.width = width;
  out.height = height;
  out.mode = mode;
  out.palette = palette;
  out.pixels.assign(static_cast<size_t>(width) * height * mode_channels(mode), 0);
  return out;
}

Image crop(const Image& im, int x, int y, int width, int height) {
  if (width < 0 || height < 0) throw UsageError("crop: negative size " + std::to_string(width) + "x" + std::to_string(height));
  // Pillow's crop: the parts outside the source are zero.
  Image out = blank_image(width, height, im.mode, im.palette);
  const int c = im.channels();
  for (int yy = 0; yy < height; ++yy) {
    const int sy = y + yy;
    if (sy < 0 || sy >= im.height) continue;
    const int x0 = std::max(0, -x), x1 = std::min(width, im.width - x);
    if (x1 <= x0) continue;
    std::memcpy(&out.pixels[(static_cast<size_t>(yy) * width + x0) * c],
                &im.pixels[(static_cast<size_t>(sy) * im.width + x + x0) * c], static_cast<size_t>(x1 - x0) * c);
  }
  return out;
}

Image convert_rgb(const Image& im) {
  if (im.mode == PixelMode::RGB) return im;
  const size_t n = static_cast<size_t>(im.width) * im.height;
  if (im.pixels.size() != n * im.channels())
    throw DataError(std::string("convert_rgb: pixel buffer size does not match a ") + std::to_string(im.width) + "x" +
                    std::to_string(im.height) + " " + mode_name(im.mode) + " image");
  Image out = blank_image(im.width, im.height, PixelMode::RGB);
  const uint8_t* in = im.pixels.data();
  uint8_t* o = out.pixels.data();
  switch (im.mode) {
    case PixelMode::L:
      for (size_t i = 0; i < n; ++i, o += 3) o[0] = o[1] = o[2] = in[i];
      break;
    case PixelMode::One:  // any non-zero byte is white (Pillow's bit2rgb)
      for (size_t i = 0; i < n; ++i, o += 3) o[0] = o[1] = o[2] = in[i] ? 255 : 0;
      break;
    case PixelMode::LA:  // alpha dropped, not composited
      for (size_t i = 0; i < n; ++i, o += 3) o[0] = o[1] = o[2] = in[2 * i];
      break;
    case PixelMode::RGBA:
      for (size_t i = 0; i < n; ++i, o += 3, in += 4) {
        o[0] = in[0];
        o[1] = in[1];
        o[2] = in[2];
      }
      break;
    case PixelMode::P: {
      // Pillow's palette starts as a grey ramp (entry i = (i,i,i)) and the file's colours overwrite
      // the first entries, so an index past the stored palette maps to grey.
      uint8_t lut[256 * 3];
      for (int i = 0; i < 256; ++i) lut[3 * i] = lut[3 * i + 1] = lut[3 * i + 2] = static_cast<uint8_t>(i);
      std::memcpy(lut, im.palette.data(), std::min<size_t>(im.palette.size() / 3 * 3, sizeof lut));
      for (size_t i = 0; i < n; ++i, o += 3) std::memcpy(o, &lut[3 * in[i]], 3);
      break;
    }
    case PixelMode::CMYK:  // Pillow's cmyk2rgb: v = nk - round(c*nk/255), nk = 255-k
      for (size_t i = 0; i < n; ++i, o += 3, in += 4) {
        const int nk = 255 - in[3];
        for (int c = 0; c < 3; ++c) {
          int t = in[c] * nk + 128;
          t = ((t >> 8) + t) >> 8;
          const int v = nk - t;
          o[c] = static_cast<uint8_t>(v <= 0 ? 0 : v < 256 ? v : 255);
        }
      }
      break;
    case PixelMode::RGB:
      break;
  }
  return out;
}

// ToTensor (u8 / 255 in float32) + Normalize ((x - mean) / std in float32), as torchvision does it
// element by element; a 256-entry table per channel gives the identical float for every byte value.
NormalizeTable normalize_table(const std::array<float, 3>& mean, const std::array<float, 3>& std) {
  NormalizeTable lut;
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      lut[c][v] = (x - mean[c]) / std[c];
    }
  return lut;
}

void to_chw_normalized(const Image& rgb, float* out, const std::array<float, 3>& mean, const std::array<float, 3>& std) {
  if (rgb.mode != PixelMode::RGB) {
    to_chw_normalized(convert_rgb(rgb), out, mean, std);
    return;
  }
  const size_t n = static_cast<size_t>(rgb.width) * rgb.height;
  if (rgb.pixels.size() != n * 3) throw DataError("to_chw_normalized: pixel buffer size does not match the image size");
  const NormalizeTable lut = normalize_table(mean, std);
  const uint8_t* p = rgb.pixels.data();
  float* r = out;
  float* g = out + n;
  float* b = out + 2 * n;
  for (size_t i = 0; i < n; ++i, p += 3) {
    r[i] = lut[0][p[0]];
    g[i] = lut[1][p[1]];
    b[i] = lut[2][p[2]];
  }
}

namespace {

// The resize and RGB conversion of the eval transform, in cn_clip's order.
Image eval_rgb(const Image& im, int resolution) {
  if (resolution < 1) throw UsageError("preprocess_eval: resolution must be positive, got " + std::to_string(resolution));
  if (im.width < 1 || im.height < 1) throw DataError("preprocess_eval: empty image");
  // Resize in the image's own mode first (P/1 nearest, RGBA/LA premultiplied, CMYK as 4 channels),
  // then convert to RGB: the order cn_clip's transform applies.
  Image resized = resize_bicubic(im, resolution, resolution);
  return resized.mode == PixelMode::RGB ? resized : convert_rgb(resized);
}

}  // namespace

void preprocess_eval(const Image& im, int resolution, float* out, const std::array<float, 3>& mean,
                     const std::array<float, 3>& std) {
  to_chw_normalized(eval_rgb(im, resolution), out, mean, std);
}

void preprocess_eval_u8(const Image& im, int resolution, uint8_t* out) { to_chw_u8(eval_rgb(im, resolution), out); }

void to_chw_u8(const Image& im, uint8_t* out) {
  if (im.mode != PixelMode::RGB) {
    to_chw_u8(convert_rgb(im), out);
    return;
  }
  const Image& rgb = im;
  const size_t n = static_cast<size_t>(rgb.width) * rgb.height;
  if (rgb.pixels.size() != n * 3) throw DataError("to_chw_u8: pixel buffer size does not match the image size");
  const uint8_t* p = rgb.pixels.data();
  uint8_t* r = out;
  uint8_t* g = out + n;
  uint8_t* b = out + 2 * n;
  for (size_t i = 0; i < n; ++i, p += 3) {
    r[i] = p[0];
    g[i] = p[1];
    b[i] = p[2];
  }
}

void preprocess_eval_bytes(const uint8_t* data, size_t n, int resolution, const ImageOptions& io, float* out) {
  preprocess_eval(decode_image(data, n, io, resolution), resolution, out);
}

void preprocess_eval_bytes_u8(const uint8_t* data, size_t n, int resolution, const ImageOptions& io, uint8_t* out) {
  preprocess_eval_u8(decode_image(data, n, io, resolution), resolution, out);
}

Image device_resize_input(Image im, int resolution) {
  if (im.width < 1 || im.height < 1) throw DataError("preprocess_eval: empty image");
  if (im.mode == PixelMode::RGB) return im;
  if (im.mode == PixelMode::L) return convert_rgb(im);
  return eval_rgb(im, resolution);
}

const char* decode_mode_name(DecodeMode m) {
  switch (m) {
    case DecodeMode::fast: return "fast";
    case DecodeMode::device: return "device";
    default: return "exact";
  }
}

bool parse_decode_mode(const std::string& name, DecodeMode& out) {
  for (DecodeMode m : {DecodeMode::exact, DecodeMode::fast, DecodeMode::device})
    if (name == decode_mode_name(m)) {
      out = m;
      return true;
    }
  return false;
}

}  // namespace clip
