// PNG and JPEG encoders into memory (thumbnails, contact sheets, generated demo data).
// PNG keeps L, LA, RGB, RGBA, P (with its palette) and 1 (as a 1-bit greyscale PNG), so every mode
// survives an encode_png -> decode_image round trip. JPEG takes L and RGB; other modes are
// converted to RGB first (as Pillow's save would refuse RGBA, we drop alpha instead).
#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "clip/base/error.h"
#include "clip/image/image.h"

namespace clip {
namespace {

void check_image(const Image& im, const char* what) {
  if (im.width < 1 || im.height < 1) throw UsageError(std::string(what) + ": cannot encode an empty image");
  if (im.pixels.size() != static_cast<size_t>(im.width) * im.height * im.channels())
    throw UsageError(std::string(what) + ": pixel buffer size does not match a " + std::to_string(im.width) + "x" +
                     std::to_string(im.height) + " " + mode_name(im.mode) + " image");
}

// ------------------------------------------------------------------------------------ PNG

struct PngWriteCtx {
  std::vector<uint8_t>* out = nullptr;
  char message[256] = {0};
};

void png_w_error(png_structp png, png_const_charp msg) {
  auto* ctx = static_cast<PngWriteCtx*>(png_get_error_ptr(png));
  std::snprintf(ctx->message, sizeof ctx->message, "%s", msg);
  png_longjmp(png, 1);
}
void png_w_warning(png_structp, png_const_charp) {}
void png_w_write(png_structp png, png_bytep data, png_size_t len) {
  auto* ctx = static_cast<PngWriteCtx*>(png_get_io_ptr(png));
  ctx->out->insert(ctx->out->end(), data, data + len);
}
void png_w_flush(png_structp) {}

bool png_encode(PngWriteCtx* ctx, const Image& im, int color_type, int bit_depth, png_bytep* rows,
                const png_color* plte, int plte_count) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, ctx, png_w_error, png_w_warning);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, ctx, png_w_write, png_w_flush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(im.width), static_cast<png_uint_32>(im.height), bit_depth,
               color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (plte_count > 0) png_set_PLTE(png, info, plte, plte_count);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

// ------------------------------------------------------------------------------------ JPEG

struct JpegWriteCtx {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  jpeg_destination_mgr dest;
  std::jmp_buf jump;
  std::vector<uint8_t>* out = nullptr;
  std::vector<uint8_t> buf;
  char message[JMSG_LENGTH_MAX] = {0};
};

JpegWriteCtx* wctx(j_compress_ptr c) { return static_cast<JpegWriteCtx*>(c->client_data); }

void jpeg_w_error(j_common_ptr cinfo) {
  auto* ctx = static_cast<JpegWriteCtx*>(cinfo->client_data);
  (*cinfo->err->format_message)(cinfo, ctx->message);
  std::longjmp(ctx->jump, 1);
}
void jpeg_w_message(j_common_ptr, int) {}
void jpeg_w_init(j_compress_ptr c) {
  JpegWriteCtx* ctx = wctx(c);
  ctx->buf.resize(64 * 1024);
  c->dest->next_output_byte = ctx->buf.data();
  c->dest->free_in_buffer = ctx->buf.size();
}
boolean jpeg_w_empty(j_compress_ptr c) {  // the whole buffer is full
  JpegWriteCtx* ctx = wctx(c);
  ctx->out->insert(ctx->out->end(), ctx->buf.begin(), ctx->buf.end());
  c->dest->next_output_byte = ctx->buf.data();
  c->dest->free_in_buffer = ctx->buf.size();
  return TRUE;
}
void jpeg_w_term(j_compress_ptr c) {
  JpegWriteCtx* ctx = wctx(c);
  const size_t used = ctx->buf.size() - c->dest->free_in_buffer;
  ctx->out->insert(ctx->out->end(), ctx->buf.begin(), ctx->buf.begin() + static_cast<long>(used));
}

bool jpeg_encode(JpegWriteCtx* ctx, const Image& im, int quality) {
  jpeg_compress_struct* c = &ctx->cinfo;
  c->err = jpeg_std_error(&ctx->err);
  ctx->err.error_exit = jpeg_w_error;
  ctx->err.emit_message = jpeg_w_message;
  if (setjmp(ctx->jump)) {
    jpeg_destroy_compress(c);
    return false;
  }
  jpeg_create_compress(c);
  c->client_data = ctx;
  ctx->dest.init_destination = jpeg_w_init;
  ctx->dest.empty_output_buffer = jpeg_w_empty;
  ctx->dest.term_destination = jpeg_w_term;
  c->dest = &ctx->dest;
  c->image_width = static_cast<JDIMENSION>(im.width);
  c->image_height = static_cast<JDIMENSION>(im.height);
  c->input_components = im.mode == PixelMode::L ? 1 : 3;
  c->in_color_space = im.mode == PixelMode::L ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(c);
  jpeg_set_quality(c, quality, TRUE);
  jpeg_start_compress(c, TRUE);
  const size_t stride = static_cast<size_t>(im.width) * c->input_components;
  while (c->next_scanline < c->image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(im.pixels.data() + stride * c->next_scanline);
    jpeg_write_scanlines(c, &row, 1);
  }
  jpeg_finish_compress(c);
  jpeg_destroy_compress(c);
  return true;
}

}  // namespace

std::vector<uint8_t> encode_png(const Image& im) {
  check_image(im, "encode_png");
  int color_type = PNG_COLOR_TYPE_RGB, bit_depth = 8;
  std::vector<uint8_t> packed;  // mode 1 only: 1 bit per pixel
  std::vector<png_color> plte;
  size_t stride = static_cast<size_t>(im.width) * im.channels();
  const uint8_t* base = im.pixels.data();
  switch (im.mode) {
    case PixelMode::L: color_type = PNG_COLOR_TYPE_GRAY; break;
    case PixelMode::LA: color_type = PNG_COLOR_TYPE_GRAY_ALPHA; break;
    case PixelMode::RGB: color_type = PNG_COLOR_TYPE_RGB; break;
    case PixelMode::RGBA: color_type = PNG_COLOR_TYPE_RGB_ALPHA; break;
    case PixelMode::CMYK: return encode_png(convert_rgb(im));
    case PixelMode::P: {
      color_type = PNG_COLOR_TYPE_PALETTE;
      // A PNG palette must hold every index used; entries past the stored palette are Pillow's grey ramp.
      int max_index = 0;
      for (uint8_t v : im.pixels) max_index = std::max<int>(max_index, v);
      const int stored = static_cast<int>(im.palette.size() / 3);
      const int count = std::max(std::min(stored, 256), max_index + 1);
      plte.resize(count);
      for (int i = 0; i < count; ++i) {
        if (i < stored)
          plte[i] = {im.palette[3 * i], im.palette[3 * i + 1], im.palette[3 * i + 2]};
        else
          plte[i] = {static_cast<png_byte>(i), static_cast<png_byte>(i), static_cast<png_byte>(i)};
      }
      break;
    }
    case PixelMode::One: {
      color_type = PNG_COLOR_TYPE_GRAY;
      bit_depth = 1;
      stride = (static_cast<size_t>(im.width) + 7) / 8;
      packed.assign(stride * im.height, 0);
      for (int y = 0; y < im.height; ++y)
        for (int x = 0; x < im.width; ++x)
          if (im.pixels[static_cast<size_t>(y) * im.width + x])
            packed[y * stride + x / 8] |= static_cast<uint8_t>(0x80 >> (x % 8));
      base = packed.data();
      break;
    }
  }
  std::vector<png_bytep> rows(im.height);
  for (int y = 0; y < im.height; ++y) rows[y] = const_cast<png_bytep>(base + stride * y);
  std::vector<uint8_t> out;
  PngWriteCtx ctx;
  ctx.out = &out;
  if (!png_encode(&ctx, im, color_type, bit_depth, rows.data(), plte.data(), static_cast<int>(plte.size())))
    throw DataError(std::string("encode_png: libpng failed: ") + (ctx.message[0] ? ctx.message : "out of memory"));
  return out;
}

std::vector<uint8_t> encode_jpeg(const Image& im, int quality) {
  check_image(im, "encode_jpeg");
  if (quality < 1 || quality > 100) throw UsageError("encode_jpeg: quality must be 1..100, got " + std::to_string(quality));
  if (im.mode != PixelMode::L && im.mode != PixelMode::RGB) return encode_jpeg(convert_rgb(im), quality);
  std::vector<uint8_t> out;
  auto ctx = std::make_unique<JpegWriteCtx>();
  std::memset(&ctx->cinfo, 0, sizeof ctx->cinfo);
  ctx->out = &out;
  if (!jpeg_encode(ctx.get(), im, quality)) throw DataError(std::string("encode_jpeg: libjpeg failed: ") + ctx->message);
  return out;
}

}  // namespace clip
