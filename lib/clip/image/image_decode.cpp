// Image decoding into Pillow's modes, with Pillow's decoder settings, so that decode + resize give
// the same bytes as PIL.Image.open(...) in cn_clip:
//  * JPEG through libjpeg(-turbo) with its defaults (ISLOW DCT, fancy upsampling) - the library and
//    settings Pillow uses. 1 component -> L, 3 -> RGB (libjpeg's YCbCr->RGB), 4 -> CMYK asked from
//    libjpeg as CMYK (it converts YCCK) and then inverted, since Pillow reads every 4-component
//    JPEG with rawmode "CMYK;I" (Adobe's inverted convention). EXIF orientation is not applied here (as in
//    Pillow's Image.open; exif.cpp applies it on request).
//    libjpeg warnings are ignored like Pillow does; data that runs out before libjpeg has produced
//    the last scanline is an error, as Pillow's "image file is truncated" (in practice a missing EOI
//    marker already is, because libjpeg needs it to finish the last MCU row); bytes after the EOI
//    are ignored.
//    DecodeMode::fast (not Pillow's settings, opt-in): libjpeg-turbo's scaled decoding at the smallest
//    M/8 that keeps both sides >= the model resolution, JDCT_IFAST, no fancy upsampling.
//  * PNG through libpng, no colour transforms (gamma, sRGB, iCCP are ignored as in Pillow):
//    1-bit grey -> "1"; 2/4-bit grey -> L scaled by 0x55/0x11; 8-bit grey -> L (tRNS ignored);
//    grey+alpha -> LA; RGB -> RGB; RGBA -> RGBA; palette (1/2/4/8 bit) -> P with the PLTE colours
//    (tRNS ignored: still P); 16-bit RGB/RGBA -> RGB/RGBA and 16-bit grey+alpha -> RGBA, all from the
//    high bytes, exactly like Pillow's ";16B" unpackers. 16-bit grey becomes Pillow mode "I"
//    (32-bit integers) in Pillow; we return L holding min(value, 255), which is what Pillow's later
//    convert('RGB') makes of it (bicubic resizing before that clip can differ at edges).
//    Chunk CRCs are checked as Pillow checks them: before the first IDAT only. Like Pillow, reading
//    stops once the last row is whole: what follows it (the rest of the zlib stream, the last
//    IDAT's CRC, later chunks) may be cut or broken.
//  * WebP through libwebp's animation decoder (when built with it), as Pillow opens it: the first
//    frame on its canvas, RGB, or RGBA when the file has alpha. GIF through giflib (when built with it): the first frame on the
//    logical screen (widened to hold the frame, as Pillow does) as mode P with its colour table;
//    pixels outside the first frame take the background colour index; nothing after the first frame
//    is read, and a first frame cut short is an error. Mutated and cut WebP files decode or fail as
//    in Pillow (tests/cli/pillow_diff.sh); giflib reads past some invalid LZW codes that Pillow
//    refuses ("broken data stream").
//  * Uncompressed BMP and binary PNM (P5/P6) through stb_image as L/LA/RGB/RGBA, after their
//    headers were checked here (dimensions, pixel data inside the file). Not bit-exact with Pillow
//    (which keeps 8-bit BMP as mode P, for instance). Every other format (HDR, TGA, PSD, PIC, TIFF,
//    and GIF/WebP in a build without giflib/libwebp, ...) is refused by its magic bytes before any decoder runs: see decode_stb.
// Errors never abort the process: libjpeg / libpng errors longjmp back here and become DataError
// carrying the library's message.
#include <algorithm>
#include <array>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <jerror.h>
#include <jpeglib.h>
#ifdef CLIP_HAVE_WEBP
#include <webp/decode.h>
#include <webp/demux.h>
#endif
#ifdef CLIP_HAVE_GIF
#include <gif_lib.h>
#endif
#include <png.h>
#ifdef CLIP_HAVE_STB
#include <stb_image.h>
#endif

#include "clip/base/byteorder.h"
#include "clip/base/crc32.h"
#include "clip/base/error.h"
#include "clip/image/image.h"

namespace clip {
namespace {

// Pillow refuses images above 2 * MAX_IMAGE_PIXELS (DecompressionBombError).
constexpr uint64_t kMaxPixels = kMaxImagePixels;

void check_dimensions(uint64_t w, uint64_t h, const char* fmt) {
  if (w == 0 || h == 0) throw DataError(std::string(fmt) + ": image has zero width or height");
  if (w * h > kMaxPixels)
    throw DataError(std::string(fmt) + ": image of " + std::to_string(w) + "x" + std::to_string(h) +
                    " pixels exceeds the limit of " + std::to_string(kMaxPixels) +
                    " pixels (Pillow's decompression-bomb limit)");
}

// ------------------------------------------------------------------------------------ JPEG

struct JpegCtx {
  jpeg_decompress_struct cinfo;
  jpeg_error_mgr err;
  jpeg_source_mgr src;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {0};
  bool scanlines_done = false;
  bool truncated = false;
  bool fast = false;  // DecodeMode::fast
  int min_side = 0;   // fast: the smallest output side wanted (0: no scaling)
};

JpegCtx* ctx_of(j_common_ptr cinfo) { return static_cast<JpegCtx*>(cinfo->client_data); }

void jpeg_on_error(j_common_ptr cinfo) {
  JpegCtx* ctx = ctx_of(cinfo);
  (*cinfo->err->format_message)(cinfo, ctx->message);
  std::longjmp(ctx->jump, 1);
}
void jpeg_on_message(j_common_ptr, int) {}  // warnings (corrupt-data notices) ignored, as Pillow does
void jpeg_src_init(j_decompress_ptr) {}
void jpeg_src_term(j_decompress_ptr) {}

boolean jpeg_src_fill(j_decompress_ptr cinfo) {
  // Called only once the whole buffer has been consumed.
  JpegCtx* ctx = ctx_of(reinterpret_cast<j_common_ptr>(cinfo));
  if (!ctx->scanlines_done) {
    ctx->truncated = true;
    std::snprintf(ctx->message, sizeof ctx->message, "image data is truncated (ends before the last scanline)");
    std::longjmp(ctx->jump, 1);
  }
  static const JOCTET kEoi[2] = {0xFF, JPEG_EOI};
  cinfo->src->next_input_byte = kEoi;
  cinfo->src->bytes_in_buffer = 2;
  return TRUE;
}

void jpeg_src_skip(j_decompress_ptr cinfo, long n) {
  if (n <= 0) return;
  jpeg_source_mgr* src = cinfo->src;
  while (static_cast<size_t>(n) > src->bytes_in_buffer) {
    n -= static_cast<long>(src->bytes_in_buffer);
    (void)jpeg_src_fill(cinfo);
  }
  src->next_input_byte += n;
  src->bytes_in_buffer -= static_cast<size_t>(n);
}

// Runs the libjpeg calls; returns false after a longjmp. Kept free of C++ objects with destructors
// between setjmp and longjmp.
bool jpeg_decode_into(JpegCtx* ctx, const uint8_t* data, size_t n, Image* out) {
  jpeg_decompress_struct* cinfo = &ctx->cinfo;
  cinfo->err = jpeg_std_error(&ctx->err);
  ctx->err.error_exit = jpeg_on_error;
  ctx->err.emit_message = jpeg_on_message;
  if (setjmp(ctx->jump)) {
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  jpeg_create_decompress(cinfo);
  cinfo->client_data = ctx;
  ctx->src.init_source = jpeg_src_init;
  ctx->src.fill_input_buffer = jpeg_src_fill;
  ctx->src.skip_input_data = jpeg_src_skip;
  ctx->src.resync_to_restart = jpeg_resync_to_restart;
  ctx->src.term_source = jpeg_src_term;
  ctx->src.next_input_byte = data;
  ctx->src.bytes_in_buffer = n;
  cinfo->src = &ctx->src;

  jpeg_read_header(cinfo, TRUE);
  if (cinfo->data_precision != 8) {
    std::snprintf(ctx->message, sizeof ctx->message, "cannot handle %d-bit samples", cinfo->data_precision);
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  switch (cinfo->num_components) {
    case 1: out->mode = PixelMode::L; cinfo->out_color_space = JCS_GRAYSCALE; break;
    case 3: out->mode = PixelMode::RGB; cinfo->out_color_space = JCS_RGB; break;
    case 4: out->mode = PixelMode::CMYK; cinfo->out_color_space = JCS_CMYK; break;
    default:
      std::snprintf(ctx->message, sizeof ctx->message, "cannot handle %d-component images", cinfo->num_components);
      jpeg_destroy_decompress(cinfo);
      return false;
  }
  const uint64_t w = cinfo->image_width, h = cinfo->image_height;
  if (w == 0 || h == 0 || w * h > kMaxPixels) {
    std::snprintf(ctx->message, sizeof ctx->message, "image size %llux%llu is empty or above the %llu-pixel limit",
                  static_cast<unsigned long long>(w), static_cast<unsigned long long>(h),
                  static_cast<unsigned long long>(kMaxPixels));
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  if (ctx->fast) {
    cinfo->dct_method = JDCT_IFAST;
    cinfo->do_fancy_upsampling = FALSE;
    // The smallest scale M/8 whose output keeps both sides >= min_side (8/8 when none does).
    for (unsigned m = 1; m <= 8; ++m) {
      cinfo->scale_num = m;
      cinfo->scale_denom = 8;
      jpeg_calc_output_dimensions(cinfo);
      if (ctx->min_side <= 0 || (cinfo->output_width >= static_cast<JDIMENSION>(ctx->min_side) &&
                                 cinfo->output_height >= static_cast<JDIMENSION>(ctx->min_side)))
        break;
    }
  }
  jpeg_start_decompress(cinfo);
  out->width = static_cast<int>(cinfo->output_width);
  out->height = static_cast<int>(cinfo->output_height);
  const size_t stride = static_cast<size_t>(out->width) * cinfo->output_components;
  try {
    out->pixels.resize(stride * out->height);
  } catch (...) {  // out of memory: release libjpeg's state before unwinding
    jpeg_destroy_decompress(cinfo);
    throw;
  }
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->pixels.data() + stride * cinfo->output_scanline;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  ctx->scanlines_done = true;
  jpeg_finish_decompress(cinfo);
  jpeg_destroy_decompress(cinfo);
  return true;
}

Image decode_jpeg(const uint8_t* data, size_t n, bool fast = false, int min_side = 0) {
  Image out;
  auto ctx = std::make_unique<JpegCtx>();
  std::memset(&ctx->cinfo, 0, sizeof ctx->cinfo);
  ctx->fast = fast;
  ctx->min_side = min_side;
  if (!jpeg_decode_into(ctx.get(), data, n, &out)) throw DataError(std::string("JPEG: ") + ctx->message);
  if (out.mode == PixelMode::CMYK)
    for (auto& v : out.pixels) v = static_cast<uint8_t>(255 - v);
  return out;
}

// ------------------------------------------------------------------------------------ PNG

struct PngCtx {
  const uint8_t* data = nullptr;
  size_t n = 0, pos = 0;
  std::vector<uint8_t> mended;  // a copy of a file cut inside its last chunk, that chunk closed (png_prescan)
  char message[256] = {0};
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  std::vector<uint8_t> raw;  // packed rows as stored (after de-interlacing)
  size_t rowbytes = 0;
  std::vector<png_bytep> rows;
  std::vector<uint8_t> palette;
  bool reading_rows = false, interlaced = false;
};

void png_on_error(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngCtx*>(png_get_error_ptr(png));
  std::snprintf(ctx->message, sizeof ctx->message, "%s", msg);
  png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}

void png_read_mem(png_structp png, png_bytep dst, png_size_t len) {
  auto* ctx = static_cast<PngCtx*>(png_get_io_ptr(png));
  if (len > ctx->n - ctx->pos) png_error(png, "image data is truncated");
  std::memcpy(dst, ctx->data + ctx->pos, len);
  ctx->pos += len;
}



// Pillow checks the CRC of every chunk before the first IDAT (and fails on a mismatch) but never
// the CRCs of IDAT or later chunks. We check the same chunks here and switch libpng's own CRC
// checks off, so that both accept and reject the same files.
// Pillow also stops reading once the image is whole, so a file cut inside its last IDAT (in the data
// that follows the end of the zlib stream, or in the CRC) still decodes there. libpng reads a chunk
// whole, so such a file is decoded from a copy whose last chunk is closed: its length cut to the bytes
// the file holds and a zero CRC after them. The image data that is missing stays missing.
void png_prescan(PngCtx* ctx) {
  size_t pos = 8;
  bool before_idat = true;
  while (pos + 8 <= ctx->n) {
    const uint32_t len = be32(ctx->data + pos);
    const uint8_t* type = ctx->data + pos + 4;
    const size_t data_end = pos + 8 + static_cast<size_t>(len);
    if (std::memcmp(type, "IDAT", 4) == 0) before_idat = false;
    if (before_idat) {
      if (data_end + 4 > ctx->n)
        throw DataError("PNG: image data is truncated (the file ends inside the " + std::string(reinterpret_cast<const char*>(type), 4) +
                        " chunk)");
      if (crc32(type, len + 4) != be32(ctx->data + data_end))
        throw DataError("PNG: broken file (bad checksum in the " + std::string(reinterpret_cast<const char*>(type), 4) +
                        " chunk)");
    }
    if (std::memcmp(type, "IEND", 4) == 0) break;
    if (data_end + 4 > ctx->n) {
      const size_t held = std::min(data_end, ctx->n) - (pos + 8);
      ctx->mended.reserve(pos + 8 + held + 4);
      ctx->mended.assign(ctx->data, ctx->data + pos);
      for (int k = 3; k >= 0; --k) ctx->mended.push_back(static_cast<uint8_t>(held >> (8 * k)));
      ctx->mended.insert(ctx->mended.end(), type, type + 4 + held);
      ctx->mended.insert(ctx->mended.end(), 4, 0);
      ctx->data = ctx->mended.data();
      ctx->n = ctx->mended.size();
      break;
    }
    pos = data_end + 4;
  }
}

bool png_decode_raw(PngCtx* ctx) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, ctx, png_on_error, png_on_warning);
  if (!png) {
    std::snprintf(ctx->message, sizeof ctx->message, "cannot create the libpng reader");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    std::snprintf(ctx->message, sizeof ctx->message, "cannot create the libpng info struct");
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    // Pillow stops reading once the last row is whole. libpng reads on to the end of the zlib stream
    // (png_read_finish_IDAT), into the file's end or the next chunk; what goes wrong there, after every
    // row has been delivered, leaves Pillow's image.
    const bool whole = ctx->reading_rows && (ctx->interlaced ? png_get_current_pass_number(png) >= 7
                                                             : png_get_current_row_number(png) >= ctx->height);
    png_destroy_read_struct(&png, &info, nullptr);
    return whole;
  }
  png_set_read_fn(png, ctx, png_read_mem);
  png_set_benign_errors(png, 1);
  png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
  png_read_info(png, info);
  int interlace = 0;
  png_get_IHDR(png, info, &ctx->width, &ctx->height, &ctx->bit_depth, &ctx->color_type, &interlace, nullptr, nullptr);
  const uint64_t w = ctx->width, h = ctx->height;
  if (w == 0 || h == 0 || w * h > kMaxPixels) png_error(png, "image size is empty or above Pillow's pixel limit");
  if (ctx->color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp plte = nullptr;
    int count = 0;
    if (png_get_PLTE(png, info, &plte, &count) & PNG_INFO_PLTE)
      for (int i = 0; i < count; ++i) ctx->palette.insert(ctx->palette.end(), {plte[i].red, plte[i].green, plte[i].blue});
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  ctx->rowbytes = png_get_rowbytes(png, info);
  try {
    ctx->raw.resize(ctx->rowbytes * ctx->height);
    ctx->rows.resize(ctx->height);
  } catch (...) {  // out of memory: release libpng's state before unwinding
    png_destroy_read_struct(&png, &info, nullptr);
    throw;
  }
  for (png_uint_32 y = 0; y < ctx->height; ++y) ctx->rows[y] = ctx->raw.data() + ctx->rowbytes * y;
  ctx->interlaced = interlace != PNG_INTERLACE_NONE;
  ctx->reading_rows = true;
  png_read_image(png, ctx->rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

Image decode_png(const uint8_t* data, size_t n) {
  PngCtx ctx;
  ctx.data = data;
  ctx.n = n;
  png_prescan(&ctx);
  if (!png_decode_raw(&ctx)) throw DataError(std::string("PNG: ") + ctx.message);
  Image out;
  out.width = static_cast<int>(ctx.width);
  out.height = static_cast<int>(ctx.height);
  const size_t w = ctx.width, h = ctx.height;
  const int bd = ctx.bit_depth;
  auto packed = [&](const uint8_t* row, size_t x) -> unsigned {  // sample x of a 1/2/4-bit row
    const int per_byte = 8 / bd;
    const int shift = 8 - bd * (1 + static_cast<int>(x % per_byte));
    return (row[x / per_byte] >> shift) & ((1u << bd) - 1);
  };
  switch (ctx.color_type) {
    case PNG_COLOR_TYPE_GRAY: {
      out.mode = bd == 1 ? PixelMode::One : PixelMode::L;
      out.pixels.resize(w * h);
      for (size_t y = 0; y < h; ++y) {
        const uint8_t* r = ctx.rows[y];
        uint8_t* o = &out.pixels[y * w];
        for (size_t x = 0; x < w; ++x) {
          switch (bd) {
            case 1: o[x] = packed(r, x) ? 255 : 0; break;
            case 2: o[x] = static_cast<uint8_t>(packed(r, x) * 0x55); break;
            case 4: o[x] = static_cast<uint8_t>(packed(r, x) * 0x11); break;
            case 8: o[x] = r[x]; break;
            default: {  // 16: Pillow's mode "I", seen through its clip to 0..255
              const unsigned v = (unsigned(r[2 * x]) << 8) | r[2 * x + 1];
              o[x] = static_cast<uint8_t>(v > 255 ? 255 : v);
            }
          }
        }
      }
      break;
    }
    case PNG_COLOR_TYPE_PALETTE: {
      out.mode = PixelMode::P;
      out.palette = std::move(ctx.palette);
      out.pixels.resize(w * h);
      for (size_t y = 0; y < h; ++y) {
        const uint8_t* r = ctx.rows[y];
        uint8_t* o = &out.pixels[y * w];
        for (size_t x = 0; x < w; ++x) o[x] = static_cast<uint8_t>(bd == 8 ? r[x] : packed(r, x));
      }
      break;
    }
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
      if (bd == 8) {
        out.mode = PixelMode::LA;
        out.pixels = std::move(ctx.raw);
      } else {  // 16-bit: Pillow's "LA;16B" -> RGBA from the high bytes
        out.mode = PixelMode::RGBA;
        out.pixels.resize(w * h * 4);
        for (size_t i = 0; i < w * h; ++i) {
          const uint8_t* s = &ctx.raw[i * 4];
          uint8_t* o = &out.pixels[i * 4];
          o[0] = o[1] = o[2] = s[0];
          o[3] = s[2];
        }
      }
      break;
    }
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_RGB_ALPHA: {
      const int c = ctx.color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
      out.mode = c == 3 ? PixelMode::RGB : PixelMode::RGBA;
      if (bd == 8) {
        out.pixels = std::move(ctx.raw);
      } else {  // 16-bit: high bytes
        out.pixels.resize(w * h * c);
        for (size_t i = 0; i < w * h * c; ++i) out.pixels[i] = ctx.raw[2 * i];
      }
      break;
    }
    default:
      throw DataError("PNG: unsupported colour type " + std::to_string(ctx.color_type));
  }
  return out;
}

// ------------------------------------------------------------------------------------ BMP and PNM (stb_image)

// stb_image is only handed formats whose header we have read and bounded ourselves: uncompressed
// BMP and binary PNM (P5/P6). Its other decoders are never reached: HDR loops forever on a
// truncated run-length scanline (CVE-2021-42715, present in Debian's 2.27), and GIF, TGA, PSD and
// PIC have published memory-safety bugs in that version. decode_image() refuses them by magic bytes.


// Checks a BMP header: dimensions, an uncompressed layout stb_image supports, and pixel data that
// fits inside the file (so a 60-byte file cannot ask for a gigabyte buffer). Returns where the
// header's colour-plane count is.
size_t check_bmp(const uint8_t* d, size_t n) {
  if (n < 26) throw DataError("BMP: image data is truncated (header of " + std::to_string(n) + " bytes)");
  const uint32_t data_off = le32(d + 10), dib = le32(d + 14);
  uint64_t w = 0, h = 0;
  unsigned bpp = 0;
  uint32_t compression = 0;
  if (dib == 12) {  // OS/2 BITMAPCOREHEADER
    w = le16(d + 18);
    h = le16(d + 20);
    bpp = le16(d + 24);
  } else if (dib >= 40) {
    if (n < 34) throw DataError("BMP: image data is truncated (header of " + std::to_string(n) + " bytes)");
    const int32_t sw = static_cast<int32_t>(le32(d + 18)), sh = static_cast<int32_t>(le32(d + 22));
    if (sw <= 0 || sh == INT32_MIN) throw DataError("BMP: invalid width or height in the header");
    w = static_cast<uint64_t>(sw);
    h = static_cast<uint64_t>(sh < 0 ? -static_cast<int64_t>(sh) : sh);
    bpp = le16(d + 28);
    compression = le32(d + 30);
  } else {
    throw DataError("BMP: unsupported header size " + std::to_string(dib));
  }
  check_dimensions(w, h, "BMP");
  if (compression != 0 && compression != 3 && compression != 6)
    throw DataError("BMP: compression method " + std::to_string(compression) +
                    " is not supported (only uncompressed and bit-field BMPs are); convert the image to PNG");
  if (bpp != 1 && bpp != 4 && bpp != 8 && bpp != 16 && bpp != 24 && bpp != 32)
    throw DataError("BMP: unsupported bit depth " + std::to_string(bpp));
  // Rows are padded to 4 bytes; the last row's padding may be missing (Pillow stops at the last pixel).
  const uint64_t row = (w * bpp + 31) / 32 * 4;
  const uint64_t need = row * (h - 1) + (w * bpp + 7) / 8;
  if (data_off > n || need > n - data_off)
    throw DataError("BMP: image data is truncated (" + std::to_string(w) + "x" + std::to_string(h) + " pixels need " +
                    std::to_string(need) + " bytes of pixel data, the file holds " +
                    std::to_string(data_off > n ? 0 : n - data_off) + ")");
  return dib == 12 ? 22 : 26;
}

// Checks a binary PNM (P5 grey, P6 RGB) header and that the file holds every pixel it announces.
void check_pnm(const uint8_t* d, size_t n) {
  size_t i = 2;
  uint64_t v[3] = {0, 0, 0};
  for (int k = 0; k < 3; ++k) {
    for (;;) {  // whitespace and comments
      while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n' || d[i] == '\v' || d[i] == '\f')) ++i;
      if (i < n && d[i] == '#') {
        while (i < n && d[i] != '\n' && d[i] != '\r') ++i;
        continue;
      }
      break;
    }
    if (i >= n || d[i] < '0' || d[i] > '9') throw DataError("PNM: malformed header (expected a number)");
    while (i < n && d[i] >= '0' && d[i] <= '9') {
      v[k] = v[k] * 10 + static_cast<uint64_t>(d[i] - '0');
      if (v[k] > (1u << 24)) throw DataError("PNM: header value too large");
      ++i;
    }
  }
  if (i >= n) throw DataError("PNM: image data is truncated (no pixel data)");
  ++i;  // the single whitespace byte after maxval
  check_dimensions(v[0], v[1], "PNM");
  if (v[2] == 0 || v[2] > 65535) throw DataError("PNM: maxval must be from 1 to 65535, got " + std::to_string(v[2]));
  const uint64_t need = v[0] * v[1] * (d[1] == '6' ? 3 : 1) * (v[2] > 255 ? 2 : 1);
  if (need > n - i)
    throw DataError("PNM: image data is truncated (" + std::to_string(v[0]) + "x" + std::to_string(v[1]) + " pixels need " +
                    std::to_string(need) + " bytes, the file holds " + std::to_string(n - i) + ")");
}

// ------------------------------------------------------------------------------------ WebP, GIF

#ifdef CLIP_HAVE_WEBP
// As Pillow 9.4 reads every WebP: through libwebp's animation decoder (demux), the first frame on
// its canvas, RGBA, kept as RGBA when the file says it has alpha and as RGB otherwise. A still image
// gives the pixels of WebPDecode; an animated one its first frame; a container the demuxer refuses,
// or a first frame it cannot decode, is an error as in Pillow.
Image decode_webp(const uint8_t* data, size_t n) {
  WebPBitstreamFeatures f;
  if (WebPGetFeatures(data, n, &f) != VP8_STATUS_OK) throw DataError("WebP: not a valid WebP file");
  // The decoder allocates the whole canvas at once: bound it first.
  check_dimensions(static_cast<uint64_t>(std::max(0, f.width)), static_cast<uint64_t>(std::max(0, f.height)), "WebP");
  WebPAnimDecoderOptions opt;
  if (!WebPAnimDecoderOptionsInit(&opt)) throw DataError("WebP: libwebp's decoder could not be set up");
  opt.color_mode = MODE_RGBA;
  opt.use_threads = 0;
  const WebPData wd{data, n};
  std::unique_ptr<WebPAnimDecoder, void (*)(WebPAnimDecoder*)> dec(WebPAnimDecoderNew(&wd, &opt), WebPAnimDecoderDelete);
  if (!dec) throw DataError("WebP: broken file (its chunks cannot be read)");
  WebPAnimInfo info;
  if (!WebPAnimDecoderGetInfo(dec.get(), &info)) throw DataError("WebP: broken file (no image information)");
  check_dimensions(info.canvas_width, info.canvas_height, "WebP");
  uint8_t* rgba = nullptr;
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(dec.get(), &rgba, &timestamp) || !rgba)
    throw DataError("WebP: the data could not be decoded (truncated or corrupt)");
  Image out;
  out.width = static_cast<int>(info.canvas_width);
  out.height = static_cast<int>(info.canvas_height);
  out.mode = f.has_alpha ? PixelMode::RGBA : PixelMode::RGB;
  const size_t px = static_cast<size_t>(out.width) * out.height;
  if (f.has_alpha) {
    out.pixels.assign(rgba, rgba + px * 4);
  } else {
    out.pixels.resize(px * 3);
    for (size_t i = 0; i < px; ++i) std::memcpy(out.pixels.data() + 3 * i, rgba + 4 * i, 3);
  }
  return out;
}
#endif

#ifdef CLIP_HAVE_GIF
struct GifSrc {
  const uint8_t* data;
  size_t n, pos;
  bool terminated;  // the one zero byte past the end has been read
};
// Past the end of the file, one zero byte: the empty sub-block that ends the image data, which giflib
// reads after the last pixel (and Pillow never does), so a file cut right after its last pixels
// still decodes. A zero where more pixels were due is an error in giflib ("image is defective").
int gif_read(GifFileType* g, GifByteType* buf, int len) {
  auto* s = static_cast<GifSrc*>(g->UserData);
  size_t k = std::min(static_cast<size_t>(len < 0 ? 0 : len), s->n - s->pos);
  std::memcpy(buf, s->data + s->pos, k);
  s->pos += k;
  if (k < static_cast<size_t>(len) && !s->terminated) {
    buf[k++] = 0;
    s->terminated = true;
  }
  return static_cast<int>(k);
}

Image decode_gif(const uint8_t* data, size_t n) {
  GifSrc src{data, n, 0, false};
  int err = 0;
  GifFileType* g = DGifOpen(&src, gif_read, &err);
  if (!g) throw DataError(std::string("GIF: ") + GifErrorString(err));
  std::unique_ptr<GifFileType, void (*)(GifFileType*)> guard(g, [](GifFileType* p) {
    int e = 0;
    DGifCloseFile(p, &e);
  });
  check_dimensions(static_cast<uint64_t>(std::max(0, g->SWidth)), static_cast<uint64_t>(std::max(0, g->SHeight)), "GIF");
  auto fail = [&](const char* where) {
    throw DataError(std::string("GIF: ") + where + ": " + GifErrorString(g->Error));
  };
  // The records up to the first image (extensions skipped), then that image alone, as Pillow opens
  // the file: a later frame, broken or cut, is never read, and a first frame cut short is an error.
  for (;;) {
    GifRecordType rt = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(g, &rt) == GIF_ERROR) fail("reading the records before the first image");
    if (rt == IMAGE_DESC_RECORD_TYPE) break;
    if (rt == TERMINATE_RECORD_TYPE) throw DataError("GIF: no image in the file");
    if (rt != EXTENSION_RECORD_TYPE) throw DataError("GIF: broken file (unknown record before the first image)");
    int code = 0;
    GifByteType* ext = nullptr;
    if (DGifGetExtension(g, &code, &ext) == GIF_ERROR) fail("reading an extension");
    while (ext)
      if (DGifGetExtensionNext(g, &ext) == GIF_ERROR) fail("reading an extension");
  }
  if (DGifGetImageDesc(g) == GIF_ERROR) fail("reading the first image's descriptor");
  const GifImageDesc& desc = g->Image;
  const ColorMapObject* cmap = desc.ColorMap ? desc.ColorMap : g->SColorMap;
  if (!cmap || cmap->ColorCount <= 0 || cmap->ColorCount > 256) throw DataError("GIF: no usable colour table");
  const int fx = desc.Left, fy = desc.Top, fw = desc.Width, fh = desc.Height;
  if (fw <= 0 || fh <= 0) throw DataError("GIF: the first frame is empty");
  // A first frame that reaches past the logical screen widens it, as in Pillow.
  const int width = std::max(g->SWidth, fx + fw), height = std::max(g->SHeight, fy + fh);
  check_dimensions(static_cast<uint64_t>(width), static_cast<uint64_t>(height), "GIF");
  std::vector<GifPixelType> raster(static_cast<size_t>(fw) * static_cast<size_t>(fh));
  if (desc.Interlace) {  // the four passes, in the order they are stored
    static const int kStart[4] = {0, 4, 2, 1}, kStep[4] = {8, 8, 4, 2};
    for (int pass = 0; pass < 4; ++pass)
      for (int y = kStart[pass]; y < fh; y += kStep[pass])
        if (DGifGetLine(g, raster.data() + static_cast<size_t>(y) * fw, fw) == GIF_ERROR) fail("the first image is cut short or corrupt");
  } else if (DGifGetLine(g, raster.data(), static_cast<int>(raster.size())) == GIF_ERROR) {
    fail("the first image is cut short or corrupt");
  }
  Image out;
  out.width = width;
  out.height = height;
  out.mode = PixelMode::P;
  out.palette.assign(256 * 3, 0);
  for (int i = 0; i < cmap->ColorCount; ++i) {
    out.palette[i * 3] = cmap->Colors[i].Red;
    out.palette[i * 3 + 1] = cmap->Colors[i].Green;
    out.palette[i * 3 + 2] = cmap->Colors[i].Blue;
  }
  const uint8_t bg = static_cast<uint8_t>(g->SBackGroundColor < cmap->ColorCount ? g->SBackGroundColor : 0);
  out.pixels.assign(static_cast<size_t>(out.width) * out.height, bg);
  for (int y = 0; y < fh; ++y) {
    const int dy = fy + y;
    if (dy < 0 || dy >= out.height) continue;
    for (int x = 0; x < fw; ++x) {
      const int dx = fx + x;
      if (dx < 0 || dx >= out.width) continue;
      out.pixels[static_cast<size_t>(dy) * out.width + dx] = raster[static_cast<size_t>(y) * fw + x];
    }
  }
  return out;
}
#endif

// ------------------------------------------------------------------------------------ other formats

Image decode_stb(const uint8_t* data, size_t n) {
#ifdef CLIP_HAVE_STB
  if (n > static_cast<size_t>(INT32_MAX)) throw DataError("image: encoded data larger than 2 GiB");
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, static_cast<int>(n), &w, &h, &comp)) {
    const char* why = stbi_failure_reason();
    throw DataError(std::string("image: stb_image cannot read the header (") + (why ? why : "unknown") + ")");
  }
  check_dimensions(static_cast<uint64_t>(w), static_cast<uint64_t>(h), "image");
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(n), &w, &h, &comp, 0);
  if (!px) {
    const char* why = stbi_failure_reason();
    throw DataError(std::string("image: stb_image could not decode the data: ") + (why ? why : "unknown error"));
  }
  Image out;
  out.width = w;
  out.height = h;
  switch (comp) {
    case 1: out.mode = PixelMode::L; break;
    case 2: out.mode = PixelMode::LA; break;
    case 3: out.mode = PixelMode::RGB; break;
    default: out.mode = PixelMode::RGBA; break;
  }
  out.pixels.assign(px, px + static_cast<size_t>(w) * h * comp);
  stbi_image_free(px);
  // stb reports some BMPs as 4 channels even when nothing is transparent.
  if (out.mode == PixelMode::RGBA) {
    bool opaque = true;
    for (size_t i = 3; i < out.pixels.size() && opaque; i += 4) opaque = out.pixels[i] == 255;
    if (opaque) out = convert_rgb(out);
  }
  return out;
#else
  (void)data;
  (void)n;
  throw DataError("image: BMP and PNM need stb_image, absent from this build; convert the image to PNG or JPEG");
#endif
}

bool starts_with(const uint8_t* d, size_t n, const char* magic) {
  const size_t m = std::strlen(magic);
  return n >= m && std::memcmp(d, magic, m) == 0;
}

// Names a recognised but refused format, or returns nullptr.
const char* refused_format(const uint8_t* d, size_t n) {
  if (starts_with(d, n, "#?RADIANCE") || starts_with(d, n, "#?RGBE")) return "Radiance HDR";
  if (starts_with(d, n, "GIF87a") || starts_with(d, n, "GIF89a")) return "GIF";
  if (starts_with(d, n, "8BPS")) return "Photoshop PSD";
  if (n >= 4 && d[0] == 0x53 && d[1] == 0x80 && d[2] == 0xF6 && d[3] == 0x34) return "Softimage PIC";
  if (starts_with(d, n, "RIFF") && n >= 12 && std::memcmp(d + 8, "WEBP", 4) == 0) return "WebP";
  if (n >= 4 && ((d[0] == 'I' && d[1] == 'I' && d[2] == '*' && d[3] == 0) || (d[0] == 'M' && d[1] == 'M' && d[2] == 0 && d[3] == '*')))
    return "TIFF";
  if (n >= 2 && d[0] == 'P' && (d[1] == '1' || d[1] == '2' || d[1] == '3' || d[1] == '4' || d[1] == '7'))
    return "text or bitmap PNM";
  return nullptr;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t n) {
  if (data == nullptr || n == 0) throw DataError("image: empty data");
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, n);
  if (n >= 8 && std::memcmp(data, kPng, 8) == 0) return decode_png(data, n);
#ifdef CLIP_HAVE_WEBP
  if (n >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) return decode_webp(data, n);
#endif
#ifdef CLIP_HAVE_GIF
  if (n >= 6 && (std::memcmp(data, "GIF87a", 6) == 0 || std::memcmp(data, "GIF89a", 6) == 0)) return decode_gif(data, n);
#endif
  if (starts_with(data, n, "BM")) {
    const size_t planes_at = check_bmp(data, n);
    if (le16(data + planes_at) != 1) {  // stb_image insists on one colour plane; Pillow never reads the field
      std::vector<uint8_t> copy(data, data + n);
      copy[planes_at] = 1;
      copy[planes_at + 1] = 0;
      return decode_stb(copy.data(), n);
    }
    return decode_stb(data, n);
  }
  if (n >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6')) {
    check_pnm(data, n);
    return decode_stb(data, n);
  }
  if (const char* f = refused_format(data, n))
    throw DataError(std::string("image: ") + f +
                    " images are not accepted (accepted: JPEG, PNG, WebP, GIF, uncompressed BMP, binary PNM); convert it to PNG or JPEG");
  throw DataError("image: unrecognised format (not JPEG, PNG, BMP or binary PNM: the file starts with bytes " + [&] {
    std::string hex;
    char buf[4];
    for (size_t i = 0; i < std::min<size_t>(n, 8); ++i) {
      std::snprintf(buf, sizeof buf, "%02x", data[i]);
      hex += buf;
    }
    return hex;
  }() + ")");
}

Image decode_image(const uint8_t* data, size_t n, DecodeMode mode, int min_side) {
  if (mode == DecodeMode::fast && data != nullptr && n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
    return decode_jpeg(data, n, /*fast=*/true, min_side);
  return decode_image(data, n);
}

bool image_format_supported(const std::string& name) {
  if (name == "jpeg" || name == "png") return true;
#ifdef CLIP_HAVE_WEBP
  if (name == "webp") return true;
#endif
#ifdef CLIP_HAVE_GIF
  if (name == "gif") return true;
#endif
  return false;
}

}  // namespace clip
