// A small built-in bitmap font and contact sheets (query results, eval failure cases), so that no
// font file or rendering library is needed.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#ifdef CLIP_HAVE_FREETYPE
#include <ft2build.h>
#include FT_FREETYPE_H
#endif

#include "clip/base/error.h"
#include "clip/image/image.h"

namespace clip {
namespace {

constexpr int kGlyphW = 5, kGlyphH = 8, kCellW = 6, kCellH = 10;

// Printable ASCII 0x20..0x7E; each glyph is 8 rows of 5 bits (bit 4 = leftmost column): capitals and
// digits use the top 7 rows, descenders (g j p q y , ;) reach into the 8th.
constexpr uint8_t kFont[95][kGlyphH] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00},  // !
    {0x0A, 0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00},  // "
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A, 0x00},  // #
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04, 0x00},  // $
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00},  // %
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D, 0x00},  // &
    {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00},  // '
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00},  // (
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00},  // )
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00, 0x00},  // *
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x00},  // +
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // ,
    {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00},  // -
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0x00},  // .
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0x00},  // /
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00},  // 0
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00},  // 2
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0x00},  // 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00},  // 4
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00},  // 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00},  // 6
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00},  // 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00},  // 8
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00},  // 9
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00, 0x00},  // :
    {0x00, 0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // ;
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00},  // <
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00},  // =
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00},  // >
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00},  // ?
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E, 0x00},  // @
    {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x00},  // A
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0x00},  // B
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0x00},  // C
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C, 0x00},  // D
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0x00},  // E
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0x00},  // F
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0x00},  // G
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00},  // H
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // I
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0x00},  // J
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00},  // K
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0x00},  // L
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00},  // M
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00},  // N
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // O
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0x00},  // P
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0x00},  // Q
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0x00},  // R
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E, 0x00},  // S
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // T
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // U
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // V
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0x00},  // W
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0x00},  // X
    {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x00},  // Y
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0x00},  // Z
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E, 0x00},  // [
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00, 0x00},  // backslash
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E, 0x00},  // ]
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00},  // ^
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00},  // _
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00},  // `
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00},  // a
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E, 0x00},  // b
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0x00},  // c
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F, 0x00},  // d
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00},  // e
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08, 0x00},  // f
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // g
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // h
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00},  // i
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C},  // j
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00},  // k
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // l
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11, 0x00},  // m
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // n
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00},  // o
    {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10},  // p
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01},  // q
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00},  // r
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E, 0x00},  // s
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00},  // t
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0x00},  // u
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // v
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0x00},  // w
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00},  // x
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // y
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0x00},  // z
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00},  // {
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // |
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00},  // }
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00},  // ~
};

// Splits UTF-8 text into drawable lines of glyph codes: printable ASCII as is, '\n' breaks a line,
// '\t' becomes a space, every other character (one UTF-8 sequence = one character) becomes '?'.
std::vector<std::string> layout_lines(const std::string& text) {
  std::vector<std::string> lines(1);
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      lines.emplace_back();
    } else if (c == '\t') {
      lines.back() += ' ';
    } else if (c >= 0x20 && c < 0x7F) {
      lines.back() += static_cast<char>(c);
    } else if (c >= 0x80 && c < 0xC0) {
      // continuation byte of a sequence already shown as '?'
    } else if (c != '\r') {
      lines.back() += '?';
    }
  }
  return lines;
}

void fill_rect(Image& im, int x0, int y0, int w, int h, std::array<uint8_t, 3> color) {
  const int xa = std::max(0, x0), ya = std::max(0, y0);
  const int xb = std::min(im.width, x0 + w), yb = std::min(im.height, y0 + h);
  for (int y = ya; y < yb; ++y)
    for (int x = xa; x < xb; ++x) {
      uint8_t* p = &im.pixels[(static_cast<size_t>(y) * im.width + x) * 3];
      p[0] = color[0];
      p[1] = color[1];
      p[2] = color[2];
    }
}

void paste(Image& dst, const Image& src_rgb, int x0, int y0) {
  for (int y = 0; y < src_rgb.height; ++y) {
    const int dy = y0 + y;
    if (dy < 0 || dy >= dst.height) continue;
    for (int x = 0; x < src_rgb.width; ++x) {
      const int dx = x0 + x;
      if (dx < 0 || dx >= dst.width) continue;
      const uint8_t* s = &src_rgb.pixels[(static_cast<size_t>(y) * src_rgb.width + x) * 3];
      uint8_t* d = &dst.pixels[(static_cast<size_t>(dy) * dst.width + dx) * 3];
      d[0] = s[0];
      d[1] = s[1];
      d[2] = s[2];
    }
  }
}

// Shortens a line to at most `max_chars` glyphs, marking the cut with "..".
std::string fit_line(const std::string& line, int max_chars) {
  if (max_chars <= 0) return {};
  if (static_cast<int>(line.size()) <= max_chars) return line;
  if (max_chars <= 2) return line.substr(0, max_chars);
  return line.substr(0, max_chars - 2) + "..";
}

// Greedy word wrap of one glyph line into lines of at most `max_chars`.
std::vector<std::string> wrap(const std::string& line, int max_chars) {
  std::vector<std::string> out;
  if (max_chars <= 0) return out;
  std::string rest = line;
  while (static_cast<int>(rest.size()) > max_chars) {
    size_t cut = rest.rfind(' ', max_chars);
    if (cut == std::string::npos || cut == 0) cut = max_chars;
    out.push_back(rest.substr(0, cut));
    rest = rest.substr(cut);
    while (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
  }
  if (!rest.empty() || out.empty()) out.push_back(rest);
  return out;
}

// UTF-8 -> code points (invalid bytes become U+FFFD).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      ok &= (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out.push_back(ok ? cp : 0xFFFD);
    i += ok ? len : 1;
  }
  return out;
}

#ifdef CLIP_HAVE_FREETYPE
// One face for the process; FreeType faces are not thread-safe, so every use holds the mutex.
struct Font {
  FT_Library lib = nullptr;
  FT_Face face = nullptr;
  std::string path;
  std::mutex mu;
  Font() {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("CLIP_FONT")) candidates.push_back(env);
    candidates.push_back("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc");
    candidates.push_back("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc");
    candidates.push_back("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc");
    if (FT_Init_FreeType(&lib) != 0) return;
    for (const auto& c : candidates)
      if (FT_New_Face(lib, c.c_str(), 0, &face) == 0) {
        path = c;
        return;
      }
    face = nullptr;
  }
  ~Font() {
    if (face) FT_Done_Face(face);
    if (lib) FT_Done_FreeType(lib);
  }
};
Font& font() {
  static Font f;
  return f;
}

// Advance of a code point in pixels (font.mu held).
int advance(FT_Face face, uint32_t cp) {
  if (FT_Load_Char(face, cp, FT_LOAD_DEFAULT) != 0) return 0;
  return static_cast<int>(face->glyph->advance.x >> 6);
}

void draw_glyph(Image& im, FT_Face face, uint32_t cp, int pen_x, int baseline, std::array<uint8_t, 3> color) {
  if (FT_Load_Char(face, cp, FT_LOAD_RENDER) != 0) return;
  const FT_Bitmap& b = face->glyph->bitmap;
  if (b.pixel_mode != FT_PIXEL_MODE_GRAY) return;
  const int x0 = pen_x + face->glyph->bitmap_left, y0 = baseline - face->glyph->bitmap_top;
  for (unsigned r = 0; r < b.rows; ++r) {
    const int y = y0 + static_cast<int>(r);
    if (y < 0 || y >= im.height) continue;
    for (unsigned c = 0; c < b.width; ++c) {
      const int x = x0 + static_cast<int>(c);
      if (x < 0 || x >= im.width) continue;
      const int a = b.buffer[r * b.pitch + c];
      if (!a) continue;
      uint8_t* p = &im.pixels[(static_cast<size_t>(y) * im.width + x) * 3];
      for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>((p[k] * (255 - a) + color[k] * a + 127) / 255);
    }
  }
}
#endif

}  // namespace

std::string unicode_font() {
#ifdef CLIP_HAVE_FREETYPE
  Font& f = font();
  return f.face ? f.path : std::string();
#else
  return {};
#endif
}

int draw_text_unicode(Image& rgb, int x, int y, const std::string& text, std::array<uint8_t, 3> color, int px,
                      int max_width, int max_lines) {
#ifdef CLIP_HAVE_FREETYPE
  if (rgb.mode != PixelMode::RGB) throw UsageError("draw_text_unicode: needs an RGB image");
  Font& f = font();
  if (!f.face || max_lines < 1) return 0;
  std::lock_guard<std::mutex> lk(f.mu);
  FT_Set_Pixel_Sizes(f.face, 0, static_cast<FT_UInt>(std::max(6, px)));
  const int ascent = static_cast<int>(f.face->size->metrics.ascender >> 6);
  const int line_h = static_cast<int>(f.face->size->metrics.height >> 6);
  // Greedy wrap at character boundaries; '\n' breaks a line.
  std::vector<std::vector<uint32_t>> lines(1);
  int w = 0;
  for (uint32_t cp : code_points(text)) {
    if (cp == '\n') {
      lines.emplace_back();
      w = 0;
      continue;
    }
    if (cp == '\r') continue;
    if (cp == '\t') cp = ' ';
    const int a = advance(f.face, cp);
    if (w + a > max_width && !lines.back().empty()) {
      lines.emplace_back();
      w = 0;
      if (cp == ' ') continue;
    }
    lines.back().push_back(cp);
    w += a;
  }
  if (static_cast<int>(lines.size()) > max_lines) {
    lines.resize(max_lines);
    auto& last = lines.back();
    const int ell = advance(f.face, 0x2026);
    int lw = 0;
    for (uint32_t cp : last) lw += advance(f.face, cp);
    while (!last.empty() && lw + ell > max_width) {
      lw -= advance(f.face, last.back());
      last.pop_back();
    }
    last.push_back(0x2026);
  }
  for (size_t li = 0; li < lines.size(); ++li) {
    int pen = x;
    const int baseline = y + ascent + static_cast<int>(li) * line_h;
    for (uint32_t cp : lines[li]) {
      draw_glyph(rgb, f.face, cp, pen, baseline, color);
      pen += advance(f.face, cp);
    }
  }
  return static_cast<int>(lines.size()) * line_h;
#else
  (void)rgb, (void)x, (void)y, (void)text, (void)color, (void)px, (void)max_width, (void)max_lines;
  return 0;
#endif
}

int text_width(const std::string& text, int scale) {
  size_t longest = 0;
  for (const auto& l : layout_lines(text)) longest = std::max(longest, l.size());
  return static_cast<int>(longest) * kCellW * std::max(1, scale);
}

void draw_text(Image& rgb, int x, int y, const std::string& ascii, std::array<uint8_t, 3> color, int scale) {
  if (rgb.mode != PixelMode::RGB) throw UsageError(std::string("draw_text: needs an RGB image, got mode ") + mode_name(rgb.mode));
  if (scale < 1) scale = 1;
  const auto lines = layout_lines(ascii);
  for (size_t li = 0; li < lines.size(); ++li) {
    const int ly = y + static_cast<int>(li) * kCellH * scale;
    for (size_t ci = 0; ci < lines[li].size(); ++ci) {
      const int gx = x + static_cast<int>(ci) * kCellW * scale;
      const uint8_t* g = kFont[static_cast<unsigned char>(lines[li][ci]) - 0x20];
      for (int r = 0; r < kGlyphH; ++r)
        for (int col = 0; col < kGlyphW; ++col)
          if (g[r] & (0x10 >> col)) fill_rect(rgb, gx + col * scale, ly + r * scale, scale, scale, color);
    }
  }
}

Image make_montage(const std::vector<std::vector<MontageTile>>& rows, const std::vector<std::string>& row_labels,
                   int tile) {
  if (tile < 16) throw UsageError("make_montage: tile size must be at least 16 pixels, got " + std::to_string(tile));
  constexpr int kPad = 6;
  const int caption_h = kCellH + 4;
  const int cell_h = tile + caption_h;
  size_t ncols = 0;
  for (const auto& r : rows) ncols = std::max(ncols, r.size());
  const size_t nrows = std::max(rows.size(), row_labels.size());

  // Label column: wide enough for the longest label, up to 2 tiles; longer labels are wrapped.
  bool any_label = false;
  int label_chars = 0;
  for (const auto& l : row_labels) {
    if (l.empty()) continue;
    any_label = true;
    for (const auto& line : layout_lines(l)) label_chars = std::max(label_chars, static_cast<int>(line.size()));
  }
  label_chars = std::min(label_chars, std::max(4, tile * 2 / kCellW));
  const bool unicode = any_label && !unicode_font().empty();
  const int label_px = std::max(12, tile / 8);
  const int label_w = !any_label ? 0 : unicode ? 2 * tile + kPad : label_chars * kCellW + kPad;

  Image out;
  out.mode = PixelMode::RGB;
  out.width = kPad + label_w + static_cast<int>(ncols) * (tile + kPad);
  out.height = kPad + static_cast<int>(nrows) * (cell_h + kPad);
  out.width = std::max(out.width, 2 * kPad);
  out.height = std::max(out.height, 2 * kPad);
  out.pixels.assign(static_cast<size_t>(out.width) * out.height * 3, 255);
  const std::array<uint8_t, 3> kText{0, 0, 0}, kBack{232, 232, 232};
  const int max_caption_chars = tile / kCellW;

  for (size_t r = 0; r < nrows; ++r) {
    const int y0 = kPad + static_cast<int>(r) * (cell_h + kPad);
    if (unicode && r < row_labels.size() && !row_labels[r].empty()) {
      draw_text_unicode(out, kPad, y0 + 2, row_labels[r], kText, label_px, 2 * tile - kPad, cell_h / (label_px + 4));
    } else if (r < row_labels.size() && !row_labels[r].empty()) {
      std::vector<std::string> lines;
      for (const auto& l : layout_lines(row_labels[r]))
        for (auto& w : wrap(l, label_chars)) lines.push_back(w);
      const int max_lines = cell_h / kCellH;
      if (static_cast<int>(lines.size()) > max_lines) {
        lines.resize(max_lines);
        lines.back() = fit_line(lines.back() + "...", label_chars);
      }
      const int text_h = static_cast<int>(lines.size()) * kCellH;
      int ly = y0 + (tile - text_h) / 2;
      if (ly < y0) ly = y0;
      for (const auto& l : lines) {
        draw_text(out, kPad, ly, l, kText);
        ly += kCellH;
      }
    }
    if (r >= rows.size()) continue;
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const MontageTile& t = rows[r][c];
      const int x0 = kPad + label_w + static_cast<int>(c) * (tile + kPad);
      fill_rect(out, x0, y0, tile, tile, kBack);
      if (t.image && t.image->width > 0 && t.image->height > 0) {
        const double s = std::min(static_cast<double>(tile) / t.image->width, static_cast<double>(tile) / t.image->height);
        const int w = std::clamp(static_cast<int>(std::lround(t.image->width * s)), 1, tile);
        const int h = std::clamp(static_cast<int>(std::lround(t.image->height * s)), 1, tile);
        const Image thumb = convert_rgb(resize_bicubic(*t.image, w, h));
        paste(out, thumb, x0 + (tile - w) / 2, y0 + (tile - h) / 2);
      }
      if (t.mark) {  // a right answer: a green frame around the tile
        const std::array<uint8_t, 3> kGreen{0, 170, 60};
        fill_rect(out, x0 - 3, y0 - 3, tile + 6, 3, kGreen);
        fill_rect(out, x0 - 3, y0 + tile, tile + 6, 3, kGreen);
        fill_rect(out, x0 - 3, y0, 3, tile, kGreen);
        fill_rect(out, x0 + tile, y0, 3, tile, kGreen);
      }
      if (!t.caption.empty()) {
        const auto lines = layout_lines(t.caption);
        const std::string cap = fit_line(lines.front(), max_caption_chars);
        draw_text(out, x0 + (tile - text_width(cap)) / 2, y0 + tile + 3, cap, kText);
      }
    }
  }
  return out;
}

}  // namespace clip
