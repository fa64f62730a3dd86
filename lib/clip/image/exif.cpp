// EXIF orientation: read from the file's EXIF block (JPEG APP1 "Exif", PNG eXIf, WebP EXIF) and
// applied as Pillow's ImageOps.exif_transpose applies it. cn_clip never does this (its images go
// to the model as stored); the tools do it for display always and for the model on request
// (ImageOptions::exif_transpose, --exif-transpose).
#include <cstring>
#include <utility>

#include "clip/base/byteorder.h"
#include "clip/image/image.h"

namespace clip {
namespace {

// TIFF's integers, in the byte order its header names.
uint32_t rd32(const uint8_t* p, bool le) { return le ? le32(p) : be32(p); }
uint16_t rd16(const uint8_t* p, bool le) { return le ? le16(p) : be16(p); }

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block (optionally behind
// "Exif\0\0"); 0 when absent or unreadable.
int tiff_orientation(const uint8_t* d, size_t n) {
  if (n >= 6 && std::memcmp(d, "Exif\0\0", 6) == 0) {
    d += 6;
    n -= 6;
  }
  if (n < 8) return 0;
  bool le;
  if (d[0] == 'I' && d[1] == 'I') {
    le = true;
  } else if (d[0] == 'M' && d[1] == 'M') {
    le = false;
  } else {
    return 0;
  }
  if (rd16(d + 2, le) != 42) return 0;
  const uint32_t ifd = rd32(d + 4, le);
  if (ifd < 8 || ifd > n - 2) return 0;
  const uint32_t count = rd16(d + ifd, le);
  for (uint32_t k = 0; k < count; ++k) {
    const size_t e = ifd + 2 + static_cast<size_t>(k) * 12;
    if (e + 12 > n) return 0;
    if (rd16(d + e, le) != 0x0112) continue;
    const uint16_t type = rd16(d + e + 2, le);
    if (rd32(d + e + 4, le) < 1) return 0;
    if (type == 3) return rd16(d + e + 8, le);  // SHORT
    if (type == 4) {                             // LONG
      const uint32_t v = rd32(d + e + 8, le);
      return v <= 8 ? static_cast<int>(v) : 0;
    }
    return 0;
  }
  return 0;
}

int jpeg_orientation(const uint8_t* d, size_t n) {
  size_t pos = 2;
  while (pos + 4 <= n) {
    if (d[pos] != 0xFF) return 0;
    const uint8_t marker = d[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return 0;  // image data or end: no EXIF before it
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
      continue;
    }
    const size_t len = be16(d + pos + 2);
    if (len < 2 || pos + 2 + len > n) return 0;
    // The first APP1 segment that holds EXIF (later ones are ignored, as in Pillow).
    if (marker == 0xE1 && len >= 8 && std::memcmp(d + pos + 4, "Exif\0\0", 6) == 0)
      return tiff_orientation(d + pos + 4, len - 2);
    pos += 2 + len;
  }
  return 0;
}

int png_orientation(const uint8_t* d, size_t n) {
  size_t pos = 8;
  while (pos + 12 <= n) {
    const size_t len = be32(d + pos);
    if (len > n - pos - 12) return 0;
    if (std::memcmp(d + pos + 4, "eXIf", 4) == 0) return tiff_orientation(d + pos + 8, len);
    if (std::memcmp(d + pos + 4, "IEND", 4) == 0) return 0;
    pos += 12 + len;
  }
  return 0;
}

int webp_orientation(const uint8_t* d, size_t n) {
  size_t pos = 12;
  while (pos + 8 <= n) {
    const size_t len = le32(d + pos + 4);
    if (len > n - pos - 8) return 0;
    if (std::memcmp(d + pos, "EXIF", 4) == 0) return tiff_orientation(d + pos + 8, len);
    pos += 8 + len + (len & 1);
  }
  return 0;
}

}  // namespace

int exif_orientation(const uint8_t* data, size_t n) {
  if (data == nullptr) return 1;
  int o = 0;
  if (n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    o = jpeg_orientation(data, n);
  } else if (n >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
    o = png_orientation(data, n);
  } else if (n >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) {
    o = webp_orientation(data, n);
  }
  return o >= 1 && o <= 8 ? o : 1;
}

Image apply_orientation(Image im, int orientation) {
  if (orientation < 2 || orientation > 8) return im;
  // Pillow's exif_transpose: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE,
  // 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90 (ROTATE_* counter-clockwise).
  const bool swap = orientation >= 5;
  const int w = im.width, h = im.height;
  Image out;
  out.mode = im.mode;
  out.palette = im.palette;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  const size_t bpp = static_cast<size_t>(mode_channels(im.mode));
  out.pixels.resize(im.pixels.size());
  for (int r = 0; r < out.height; ++r) {
    for (int c = 0; c < out.width; ++c) {
      int sr = r, sc = c;  // the source row and column of output pixel (r, c)
      switch (orientation) {
        case 2: sc = w - 1 - c; break;
        case 3: sr = h - 1 - r; sc = w - 1 - c; break;
        case 4: sr = h - 1 - r; break;
        case 5: sr = c; sc = r; break;
        case 6: sr = h - 1 - c; sc = r; break;
        case 7: sr = h - 1 - c; sc = w - 1 - r; break;
        case 8: sr = c; sc = w - 1 - r; break;
      }
      std::memcpy(out.pixels.data() + (static_cast<size_t>(r) * out.width + c) * bpp,
                  im.pixels.data() + (static_cast<size_t>(sr) * w + sc) * bpp, bpp);
    }
  }
  return out;
}

Image decode_image_upright(const uint8_t* data, size_t n) {
  return apply_orientation(decode_image(data, n), exif_orientation(data, n));
}

Image decode_image(const uint8_t* data, size_t n, const ImageOptions& io, int min_side) {
  Image im = decode_image(data, n, io.decode, min_side);
  if (!io.exif_transpose) return im;
  return apply_orientation(std::move(im), exif_orientation(data, n));
}

}  // namespace clip
