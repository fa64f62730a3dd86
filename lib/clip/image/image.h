// Images as Pillow holds them (mode + interleaved bytes), decoding, and cn_clip's eval preprocessing
// reproduced bit for bit: decode -> Resize((R,R), BICUBIC) in the image's own mode -> convert('RGB')
// -> ToTensor -> Normalize(CLIP mean/std).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace clip {

enum class PixelMode { L, LA, RGB, RGBA, P, CMYK, One };  // One: Pillow mode "1", stored as 0/255 bytes
int mode_channels(PixelMode m);
const char* mode_name(PixelMode m);  // "L", "LA", "RGB", "RGBA", "P", "CMYK", "1"

struct Image {
  int width = 0, height = 0;
  PixelMode mode = PixelMode::RGB;
  std::vector<uint8_t> pixels;   // row-major, mode_channels(mode) bytes per pixel
  std::vector<uint8_t> palette;  // mode P: up to 256 RGB triples
  int channels() const { return mode_channels(mode); }
};

// A width x height image of `mode` with every byte 0 (palette copied for mode P).
Image blank_image(int width, int height, PixelMode mode, const std::vector<uint8_t>& palette = {});

constexpr std::array<float, 3> kClipMean{0.48145466f, 0.4578275f, 0.40821073f};
constexpr std::array<float, 3> kClipStd{0.26862954f, 0.26130258f, 0.27577711f};

// Standard (+/) and URL-safe (-_) alphabets, as Python's urlsafe_b64decode accepts; padding required.
// Like Python (non-validating binascii), other ASCII characters (whitespace, line breaks, junk) are
// skipped and anything after the closing '=' padding is ignored. Throws DataError on a non-ASCII
// byte or a bad length/padding.
std::vector<uint8_t> base64_decode(std::string_view s);
std::string base64_encode(const uint8_t* data, size_t n);

// The most pixels (width x height) an image may have: Pillow's decompression-bomb limit,
// 2 * 89478485. Checked from the header, before any pixel buffer is allocated.
constexpr uint64_t kMaxImagePixels = 2ull * 89478485ull;

// Decodes JPEG (libjpeg-turbo defaults, like Pillow), PNG (libpng: L/LA/RGB/RGBA/P/1-bit kept as
// Pillow's modes), WebP (libwebp: RGB or RGBA; the first frame of an animation), GIF (giflib: the first frame, mode P) and, through
// stb_image after our own header checks, uncompressed BMP and binary PNM (P5/P6). Every other format
// (Radiance HDR, TGA, PSD, PIC, TIFF, ...) is refused by its magic bytes before any decoder runs.
// Throws DataError describing the problem. Bytes identical to Pillow 9.4's Image.open(...).tobytes()
// for JPEG and PNG, except 16-bit grey PNG (Pillow mode "I"; returned as L = min(value, 255)), and for
// the WebP and GIF cases of tests/data/image; BMP/PNM are not guaranteed identical. Details in
// image_decode.cpp.
Image decode_image(const uint8_t* data, size_t n);

// How images are decoded for a model input (--decode).
//  exact (default): decode_image above, Pillow's settings: pixels bit-identical to cn_clip's.
//  fast: JPEGs are decoded by libjpeg-turbo at the smallest scale M/8 (M = 1..8) that keeps both sides
//        at least `min_side` pixels (500x375 for a 224 model: 5/8, 313x235), with the fast integer
//        IDCT (JDCT_IFAST) and without fancy upsampling; the eval transform that follows is the same
//        bicubic squash. Other formats decode as in exact. Not bit-identical: docs/benchmarks.md
//        gives the pixel differences and the feature cosine to exact.
//  device: decoded as in exact on the CPU, but the bicubic squash of RGB and L images runs on the
//        model's device (the GPU with --device cuda) where a tool encodes a whole input (clip-index:
//        device_resize_input below, then the model layer's squash_bicubic_u8). On CUDA with the
//        build's own kernels in Pillow's fixed point: exact's bytes. Elsewhere (the CPU, a CUDA build
//        without nvcc) in float: the resized pixels differ from exact's by at most a few levels
//        (docs/benchmarks.md). Single uploads and queries decode as exact.
enum class DecodeMode { exact, fast, device };
const char* decode_mode_name(DecodeMode m);  // "exact", "fast", "device"
// A mode from its name (--decode); false when the name is unknown.
bool parse_decode_mode(const std::string& name, DecodeMode& out);
// The image layer's settings that the tools expose (cli: --decode, --exif-transpose).
struct ImageOptions {
  DecodeMode decode = DecodeMode::exact;
  // Turn each image upright by its EXIF orientation before the model's transform (Pillow's
  // ImageOps.exif_transpose). cn_clip does not: off, the pixels are cn_clip's.
  bool exif_transpose = false;
};
// decode_image for a model input of min_side x min_side pixels (used by `fast` to pick the scale).
Image decode_image(const uint8_t* data, size_t n, DecodeMode mode, int min_side);
// The same with `io.decode`, then apply_orientation when `io.exif_transpose` (exif.cpp).
Image decode_image(const uint8_t* data, size_t n, const ImageOptions& io, int min_side);

// EXIF orientation (tag 0x0112 of IFD0) of a JPEG (first APP1 "Exif" segment), PNG (eXIf chunk) or
// WebP (EXIF chunk): 1 to 8; 1 when the file has none, or none that can be read.
int exif_orientation(const uint8_t* data, size_t n);
// Pillow's ImageOps.exif_transpose for that orientation: 2 mirror, 3 rotate 180, 4 flip, 5
// transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise; 1 (or any other
// value) returns the image as it is (moved, not copied). Any mode, the palette kept.
Image apply_orientation(Image im, int orientation);
// decode_image turned upright: what photo viewers and browsers show (thumbnails, contact sheets).
Image decode_image_upright(const uint8_t* data, size_t n);
// Whether this build decodes "webp" (libwebp) or "gif" (giflib); JPEG and PNG always.
bool image_format_supported(const std::string& name);

// Pillow's Image.resize(size, resample) for the modes above: BICUBIC (antialiased, a=-0.5,
// fixed-point, horizontal then vertical pass) for L/RGB/CMYK, premultiplied for LA/RGBA,
// NEAREST for P and 1; same size returns a copy.
Image resize_bicubic(const Image& im, int width, int height);
// The same bytes, computed as Pillow's own loops do (the horizontal pass output pixel by output
// pixel, no AVX2 build of the vertical pass), as resize_bicubic did before it went column-wise and
// used AVX2: the reference of tests and the baseline of bench_decode.
Image resize_bicubic_by_rows(const Image& im, int width, int height);
// The fixed-point taps of one pass of that resize (Pillow's, precision 22 bits): output i is
// (2^21 + sum over j < count[i] of k[i * ksize + j] * in[first[i] + j]) >> 22, clamped to 0..255.
struct BicubicTaps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
  // first | count | k in one array: the layout the model layer's CUDA squash reads (cuda/squash.h).
  std::vector<int32_t> packed() const;
};
BicubicTaps bicubic_taps(int in_size, int out_size);
// The weights of one pass of that resize as a dense [out_size x in_size] row-major matrix: row i
// holds Pillow's fixed-point taps of output i divided by 2^22, so that an output sample is the dot
// product of its row with the input samples, then rounded half up and clamped to 0..255.
std::vector<float> bicubic_matrix(int in_size, int out_size);
Image resize_nearest(const Image& im, int width, int height);
Image crop(const Image& im, int x, int y, int width, int height);
Image convert_rgb(const Image& im);  // Pillow's convert('RGB') for every mode

// cn_clip's eval transform: squash to resolution x resolution, RGB, /255, (x-mean)/std, CHW float32
// written to out[3*R*R].
void preprocess_eval(const Image& im, int resolution, float* out, const std::array<float, 3>& mean = kClipMean,
                     const std::array<float, 3>& std = kClipStd);
// Encoded bytes -> decode_image(data, n, io, resolution) -> preprocess_eval.
void preprocess_eval_bytes(const uint8_t* data, size_t n, int resolution, const ImageOptions& io, float* out);
// RGB image (any size) -> CHW normalised floats (ToTensor + Normalize only).
void to_chw_normalized(const Image& rgb, float* out, const std::array<float, 3>& mean = kClipMean,
                       const std::array<float, 3>& std = kClipStd);

// The eval transform in two steps, for a model that normalises on its own device (clip-index):
// preprocess_eval_u8 stops at the 8-bit RGB result of the squash (the same resize and RGB
// conversion), written as planar CHW bytes out[3*R*R] (a quarter of the floats' bytes); a byte v of
// channel c then becomes table[c][v] of normalize_table, the float32 value
// (float(v) / 255 - mean[c]) / std[c] that to_chw_normalized writes, so the two steps give
// preprocess_eval's floats bit for bit.
using NormalizeTable = std::array<std::array<float, 256>, 3>;
NormalizeTable normalize_table(const std::array<float, 3>& mean = kClipMean, const std::array<float, 3>& std = kClipStd);
void preprocess_eval_u8(const Image& im, int resolution, uint8_t* out);
// An image of any size as planar CHW RGB bytes out[3*H*W] (converted to RGB first): the 8-bit
// counterpart of to_chw_normalized.
void to_chw_u8(const Image& im, uint8_t* out);
// Encoded bytes -> decode_image(data, n, io, resolution) -> preprocess_eval_u8.
void preprocess_eval_bytes_u8(const uint8_t* data, size_t n, int resolution, const ImageOptions& io, uint8_t* out);
// DecodeMode::device: what of the eval transform stays on the CPU. An RGB image is returned as it is
// (its squash to R x R runs on the model's device); an L image becomes RGB first (its three equal
// channels resize exactly as L would, then convert('RGB') copies them); any other mode (P, 1, LA,
// RGBA, CMYK: resized in their own mode by Pillow, nearest or premultiplied) takes the exact CPU path
// and comes back already R x R RGB.
Image device_resize_input(Image im, int resolution);

// Encoders (RGB or L input) for thumbnails, montages and the generated demo data.
std::vector<uint8_t> encode_png(const Image& im);
std::vector<uint8_t> encode_jpeg(const Image& im, int quality = 90);

// Contact sheets: tiles of equal size with a caption line under each (built-in bitmap font:
// ASCII letters, digits and punctuation).
// Glyphs are 5x8 (7 rows + descender) in a 6x10 cell, times `scale`; '\n' starts a new line;
// characters outside printable ASCII (each UTF-8 sequence counts once) are drawn as '?'. Pixels
// outside the image are clipped.
void draw_text(Image& rgb, int x, int y, const std::string& ascii, std::array<uint8_t, 3> color, int scale = 1);
// Width in pixels of the longest line of `text` as draw_text would draw it.
int text_width(const std::string& text, int scale = 1);
// Text in any script through FreeType and a TrueType font: $CLIP_FONT, else Debian's fonts-wqy-microhei
// (CJK + Latin), else Noto CJK. unicode_font() names the font file, or "" when this build has no
// FreeType or no such font is installed (callers then fall back to the bitmap font above).
std::string unicode_font();
// Draws UTF-8 `text` with the font at `px` pixels per em, top-left at (x, y), wrapped at character
// boundaries to `max_width` pixels and cut after `max_lines` lines (the last one ending in "…").
// Returns the height in pixels used (0 when no font).
int draw_text_unicode(Image& rgb, int x, int y, const std::string& text, std::array<uint8_t, 3> color, int px,
                      int max_width, int max_lines);
struct MontageTile {
  const Image* image = nullptr;  // any mode; resized to fit the tile
  std::string caption;           // ASCII
  bool mark = false;             // a right answer: framed in green
};
// rows[i] is one line of the sheet, led by an optional label (e.g. the query text, any script: drawn
// with unicode_font() when there is one, else with the ASCII bitmap font) drawn at its left.
Image make_montage(const std::vector<std::vector<MontageTile>>& rows, const std::vector<std::string>& row_labels,
                   int tile = 128);

}  // namespace clip
