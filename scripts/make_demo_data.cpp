// make-demo-data: generates the small embedded dataset data/shapes-zh deterministically.
//
//   make-demo-data --out data/shapes-zh [--seed 20240601] [--train 2000 --valid 200 --test 200]
//                  [--scenes scenes.jsonl]
//
// Each image is a simple scene (1-3 coloured shapes on a textured background) and comes with five
// Chinese captions that describe it truthfully in varied words, including the details retrieval
// models tend to confuse: which colour goes with which shape, how many, and where (left / right /
// top / bottom / middle); every caption names the background colour. Output, in the Flickr30k-CN
// layout that cn_clip reads:
//   {train,valid,test}_imgs.tsv      image_id<TAB>base64(JPEG)
//   {train,valid,test}_texts.jsonl   {"text_id": N, "text": "...", "image_ids": [M]}
//   vocab.txt                        BERT-Chinese layout covering every caption character
//   ViT-Demo.json, RBT-Demo.json     a tiny model in cn_clip's config schema
// and, with --scenes, every image's scene attributes as JSONL (for analysing a model's mistakes).
// It logs how well each split's captions single out their images.
// Every byte depends only on the options: the random generator is our own (std::distributions
// differ between standard libraries) and each image is seeded from its global index.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "clip/cli/cli.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/log.h"

namespace {

using clip::Image;
using RGB = std::array<int, 3>;

// ------------------------------------------------------------------------------------------------
// Random numbers: splitmix64, with helpers that avoid implementation-defined distributions.

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  int below(int n) { return int(next() % uint64_t(n)); }
  bool chance(double p) { return uniform() < p; }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[size_t(below(int(v.size())))];
  }
};

// ------------------------------------------------------------------------------------------------
// Vocabulary of the scenes.

enum Shape { kCircle, kSquare, kTriangle, kStar, kCross, kNumShapes };
enum Pos { kLeft, kRight, kTop, kBottom, kMiddle, kNumPos };

struct ColorDef {
  std::string full, single;  // "红色", "红"
  RGB rgb;
};
const std::vector<ColorDef> kColors = {
    {"红色", "红", {220, 40, 40}},   {"绿色", "绿", {40, 165, 60}},   {"蓝色", "蓝", {40, 80, 225}},
    {"黄色", "黄", {240, 210, 30}},  {"紫色", "紫", {145, 60, 195}},  {"橙色", "橙", {245, 135, 20}},
    {"黑色", "黑", {22, 22, 22}},    {"白色", "白", {250, 250, 250}},
};

struct BackgroundDef {
  std::string name;  // as in "<name>背景"
  RGB rgb;
};
const std::vector<BackgroundDef> kBackgrounds = {
    {"白色", {244, 244, 240}},   {"灰色", {170, 170, 170}},   {"黑色", {30, 30, 34}},
    {"浅蓝色", {175, 205, 240}}, {"浅绿色", {185, 228, 185}}, {"浅黄色", {246, 236, 175}},
    {"粉色", {246, 196, 212}},   {"深蓝色", {28, 38, 92}},
};

// Nouns for each shape; the first is the plainest.
const std::vector<std::vector<std::string>> kShapeNouns = {
    {"圆形", "圆", "圆圈"}, {"正方形", "方块", "方形"}, {"三角形", "三角"}, {"五角星", "星星", "星形"},
    {"十字", "十字形", "加号"},
};
const std::vector<std::vector<std::string>> kPosWords = {
    {"左边", "左侧", "左面"}, {"右边", "右侧", "右面"}, {"上方", "上面", "上部", "顶部"},
    {"下方", "下面", "下部", "底部"}, {"中间", "中央", "正中间"},
};
const std::vector<std::string> kCounts = {"一个", "两个", "三个"};

double color_distance(const RGB& a, const RGB& b) {
  double d = 0;
  for (int c = 0; c < 3; ++c) d += double(a[c] - b[c]) * double(a[c] - b[c]);
  return std::sqrt(d);
}

// ------------------------------------------------------------------------------------------------
// Scenes.

struct Group {
  int shape = 0, color = 0, count = 1, pos = 0;
  bool big = true;
};
struct Object {
  int shape;
  double cx, cy, r, rot;  // pixels, radians
  RGB rgb;
};
enum Texture { kPlain, kGradient, kClouds, kStripes, kVignette, kGrain, kNumTextures };
struct Scene {
  int bg = 0;
  int texture = kPlain;
  std::vector<Group> groups;
  std::vector<Object> objects;
};

// Radius (pixels) bounding the drawn shape, relative to the nominal r.
double bound_scale(int shape) { return shape == kTriangle || shape == kStar ? 1.12 : (shape == kSquare ? 1.2 : 1.0); }

// Rectangle (fractions of the image) that must contain every object of a group at `pos`.
struct Rect {
  double x0, y0, x1, y1;
};
Rect region(int pos) {
  switch (pos) {
    case kLeft: return {0.03, 0.06, 0.47, 0.94};
    case kRight: return {0.53, 0.06, 0.97, 0.94};
    case kTop: return {0.06, 0.03, 0.94, 0.47};
    case kBottom: return {0.06, 0.53, 0.94, 0.97};
    default: return {0.22, 0.22, 0.78, 0.78};
  }
}

// Places the objects of a group without overlaps; false when no layout was found.
bool place_group(const Group& g, int size, Rng& rng, std::vector<Object>& objects, const RGB& rgb) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::vector<Object> placed;
    double shrink = 1.0 - 0.02 * attempt;
    double r = size * shrink * (g.big ? (g.count == 1 ? rng.uniform(0.14, 0.16) : rng.uniform(0.115, 0.13))
                                      : rng.uniform(0.075, 0.088));
    Rect box = region(g.pos);
    double rb = r * bound_scale(g.shape);
    for (int k = 0; k < g.count; ++k) {
      bool ok = false;
      for (int tries = 0; tries < 200 && !ok; ++tries) {
        double cx = rng.uniform(box.x0 * size + rb, box.x1 * size - rb);
        double cy = rng.uniform(box.y0 * size + rb, box.y1 * size - rb);
        if (box.x0 * size + rb > box.x1 * size - rb || box.y0 * size + rb > box.y1 * size - rb) break;
        ok = true;
        for (const auto* list : {&objects, &placed})
          for (const auto& o : *list) {
            double gap = rb + o.r * bound_scale(o.shape) + size * 0.03;
            if ((cx - o.cx) * (cx - o.cx) + (cy - o.cy) * (cy - o.cy) < gap * gap) ok = false;
          }
        if (ok) {
          double rot = g.shape == kCircle ? 0.0 : rng.uniform(-0.17, 0.17);  // about +-10 degrees
          placed.push_back({g.shape, cx, cy, r, rot, rgb});
        }
      }
      if (!ok) break;
    }
    if (int(placed.size()) != g.count) continue;
    if (g.pos == kMiddle) {  // the group as a whole must sit around the centre
      double mx = 0, my = 0;
      for (const auto& o : placed) mx += o.cx / g.count, my += o.cy / g.count;
      if (std::fabs(mx / size - 0.5) > 0.09 || std::fabs(my / size - 0.5) > 0.09) continue;
    }
    objects.insert(objects.end(), placed.begin(), placed.end());
    return true;
  }
  return false;
}

Scene make_scene(Rng& rng, int size) {
  for (;;) {
    Scene s;
    s.bg = rng.below(int(kBackgrounds.size()));
    int t = rng.below(100);
    s.texture = t < 30 ? kPlain : t < 50 ? kGradient : t < 65 ? kClouds : t < 78 ? kStripes : t < 90 ? kVignette : kGrain;
    const RGB& bg = kBackgrounds[size_t(s.bg)].rgb;
    auto pick_color = [&] {
      for (;;) {
        int c = rng.below(int(kColors.size()));
        const ColorDef& col = kColors[size_t(c)];
        const std::string& bg_name = kBackgrounds[size_t(s.bg)].name;
        // Clearly visible, and never the same colour word as the background's.
        if (color_distance(col.rgb, bg) > 110 && bg_name.find(col.single) == std::string::npos) return c;
      }
    };
    if (rng.chance(0.55)) {
      Group g;
      g.shape = rng.below(kNumShapes);
      g.color = pick_color();
      g.count = 1 + rng.below(3);
      g.big = rng.chance(0.5);
      g.pos = rng.below(kNumPos);
      s.groups.push_back(g);
    } else {
      bool horizontal = rng.chance(0.5);
      int counts = rng.below(3);  // (1,1), (2,1), (1,2)
      for (int k = 0; k < 2; ++k) {
        Group g;
        g.shape = rng.below(kNumShapes);
        g.color = pick_color();
        g.count = counts == 0 ? 1 : (counts == 1) == (k == 0) ? 2 : 1;
        g.big = rng.chance(0.5);
        g.pos = horizontal ? (k == 0 ? kLeft : kRight) : (k == 0 ? kTop : kBottom);
        s.groups.push_back(g);
      }
      const Group &a = s.groups[0], &b = s.groups[1];
      if (a.shape == b.shape && a.color == b.color && a.big == b.big) continue;  // too alike to tell apart
    }
    bool ok = true;
    for (const auto& g : s.groups) {
      RGB rgb = kColors[size_t(g.color)].rgb;
      for (int c = 0; c < 3; ++c) rgb[size_t(c)] = std::clamp(rgb[size_t(c)] + rng.below(25) - 12, 0, 255);
      ok = ok && place_group(g, size, rng, s.objects, rgb);
    }
    if (ok) return s;
  }
}

// ------------------------------------------------------------------------------------------------
// Rendering: signed distances give anti-aliased edges (coverage = 0.5 - distance, clamped).

double sd_box(double x, double y, double hx, double hy) {
  double qx = std::fabs(x) - hx, qy = std::fabs(y) - hy;
  double ox = std::max(qx, 0.0), oy = std::max(qy, 0.0);
  return std::sqrt(ox * ox + oy * oy) + std::min(std::max(qx, qy), 0.0);
}

double sd_polygon(double x, double y, const std::vector<std::array<double, 2>>& v) {
  double d = 1e30;
  bool inside = false;
  for (size_t i = 0, j = v.size() - 1; i < v.size(); j = i++) {
    double ex = v[j][0] - v[i][0], ey = v[j][1] - v[i][1];
    double wx = x - v[i][0], wy = y - v[i][1];
    double t = std::clamp((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0);
    double dx = wx - ex * t, dy = wy - ey * t;
    d = std::min(d, dx * dx + dy * dy);
    if ((v[i][1] > y) != (v[j][1] > y) && x < (v[j][0] - v[i][0]) * (y - v[i][1]) / (v[j][1] - v[i][1]) + v[i][0])
      inside = !inside;
  }
  return inside ? -std::sqrt(d) : std::sqrt(d);
}

std::vector<std::array<double, 2>> star_points(double outer, double inner, int points) {
  std::vector<std::array<double, 2>> v;
  for (int k = 0; k < 2 * points; ++k) {
    double a = -M_PI / 2 + M_PI * k / points, rad = k % 2 ? inner : outer;
    v.push_back({rad * std::cos(a), rad * std::sin(a)});
  }
  return v;
}

// Signed distance (pixels) from (x, y) to object o.
double sd_object(const Object& o, double x, double y, const std::vector<std::array<double, 2>>& poly) {
  double dx = x - o.cx, dy = y - o.cy;
  double c = std::cos(o.rot), s = std::sin(o.rot);
  double u = c * dx + s * dy, v = -s * dx + c * dy;
  switch (o.shape) {
    case kCircle: return std::sqrt(u * u + v * v) - o.r;
    case kSquare: return sd_box(u, v, o.r * 0.85, o.r * 0.85);
    case kCross: return std::min(sd_box(u, v, o.r, o.r * 0.34), sd_box(u, v, o.r * 0.34, o.r));
    default: return sd_polygon(u, v, poly);
  }
}

// Smooth value noise on a coarse grid, in [-1, 1].
struct Clouds {
  int n;
  std::vector<double> g;
  Clouds(Rng& rng, int cells) : n(cells + 1), g(size_t(n * n)) {
    for (auto& x : g) x = rng.uniform(-1, 1);
  }
  double at(double fx, double fy) const {  // fx, fy in [0, 1]
    double x = fx * (n - 1), y = fy * (n - 1);
    int i = std::min(int(x), n - 2), j = std::min(int(y), n - 2);
    double tx = x - i, ty = y - j;
    tx = tx * tx * (3 - 2 * tx);
    ty = ty * ty * (3 - 2 * ty);
    auto G = [&](int a, int b) { return g[size_t(b * n + a)]; };
    return (G(i, j) * (1 - tx) + G(i + 1, j) * tx) * (1 - ty) + (G(i, j + 1) * (1 - tx) + G(i + 1, j + 1) * tx) * ty;
  }
};

Image render(const Scene& s, Rng& rng, int size) {
  Image im;
  im.width = im.height = size;
  im.mode = clip::PixelMode::RGB;
  im.pixels.resize(size_t(size) * size_t(size) * 3);
  const RGB& bg = kBackgrounds[size_t(s.bg)].rgb;
  // Dark backgrounds get lighter textures, light ones darker, so the name stays right.
  double sign = (bg[0] + bg[1] + bg[2]) < 300 ? 1.0 : -1.0;
  double angle = rng.uniform(0, 2 * M_PI), period = rng.uniform(7, 14), amp = rng.uniform(0.6, 1.0);
  Clouds clouds(rng, 3 + rng.below(3));
  double ca = std::cos(angle), sa = std::sin(angle);
  std::vector<double> buf(size_t(size) * size_t(size) * 3);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double fx = (x + 0.5) / size, fy = (y + 0.5) / size, t = 0;
      switch (s.texture) {
        case kGradient: t = 40 * amp * ((fx - 0.5) * ca + (fy - 0.5) * sa) * sign; break;
        case kClouds: t = 22 * amp * clouds.at(fx, fy); break;
        case kStripes: t = 10 * amp * std::sin(2 * M_PI * ((x + 0.5) * ca + (y + 0.5) * sa) / period) * sign; break;
        case kVignette: t = 45 * amp * ((fx - 0.5) * (fx - 0.5) + (fy - 0.5) * (fy - 0.5)) * sign; break;
        case kGrain: t = rng.uniform(-9, 9); break;
        default: break;
      }
      for (int c = 0; c < 3; ++c) buf[(size_t(y) * size + x) * 3 + c] = bg[size_t(c)] + t;
    }
  for (const auto& o : s.objects) {
    std::vector<std::array<double, 2>> poly;
    if (o.shape == kTriangle) poly = star_points(o.r * 1.12, o.r * 1.12 * 0.5, 3);  // equilateral: inner = outer / 2
    if (o.shape == kTriangle) poly = {poly[0], poly[2], poly[4]};
    if (o.shape == kStar) poly = star_points(o.r * 1.12, o.r * 1.12 * 0.45, 5);
    int x0 = std::max(0, int(o.cx - o.r * 1.3) - 1), x1 = std::min(size - 1, int(o.cx + o.r * 1.3) + 1);
    int y0 = std::max(0, int(o.cy - o.r * 1.3) - 1), y1 = std::min(size - 1, int(o.cy + o.r * 1.3) + 1);
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) {
        double d = sd_object(o, x + 0.5, y + 0.5, poly);
        double cover = std::clamp(0.5 - d, 0.0, 1.0);
        if (cover <= 0) continue;
        double shade = 1.0 + 0.08 * (o.cy - (y + 0.5)) / o.r;  // a little light from above
        for (int c = 0; c < 3; ++c) {
          double& p = buf[(size_t(y) * size + x) * 3 + c];
          p = p * (1 - cover) + std::clamp(o.rgb[size_t(c)] * shade, 0.0, 255.0) * cover;
        }
      }
  }
  for (size_t i = 0; i < buf.size(); ++i) im.pixels[i] = uint8_t(std::clamp(std::lround(buf[i]), 0L, 255L));
  return im;
}

// ------------------------------------------------------------------------------------------------
// Captions.

// "两个红色的圆形", "一个大的蓝色三角形", "两个小红方块", "黄色的星星" ...
std::string noun_phrase(const Group& g, Rng& rng, bool with_size) {
  const ColorDef& col = kColors[size_t(g.color)];
  const auto& nouns = kShapeNouns[size_t(g.shape)];
  const std::string& noun = nouns[size_t(rng.below(int(nouns.size())))];
  std::string count = kCounts[size_t(g.count - 1)];
  if (g.count == 1 && rng.chance(0.25)) count.clear();  // "红色的圆形"
  const char* size = g.big ? "大" : "小";
  if (with_size) {
    switch (rng.below(3)) {
      case 0: return count + size + "的" + col.full + noun;              // 两个大的红色圆形
      case 1: return count + col.full + "的" + size + noun;              // 两个红色的大圆形
      default: return count + (g.big ? "较大的" : "较小的") + col.full + noun;  // 两个较大的红色圆形
    }
  }
  switch (rng.below(3)) {
    case 0: return count + col.full + "的" + noun;           // 两个红色的圆形
    case 1: return count + col.full + noun;                  // 两个红色圆形
    default: return count + "颜色为" + col.full + "的" + noun;  // 两个颜色为红色的圆形
  }
}

std::string pos_word(int pos, Rng& rng) { return rng.pick(kPosWords[size_t(pos)]); }

std::string background_phrase(int bg, Rng& rng) {
  const std::string& n = kBackgrounds[size_t(bg)].name;
  switch (rng.below(3)) {
    case 0: return n + "背景上";
    case 1: return "在" + n + "的背景上";
    default: return n + "底色上";
  }
}

// A caption and what it states about the scene: always the groups' shapes, colours, counts and
// places; the sizes and the background only where named.
struct Caption {
  std::string text;
  bool sizes = false, background = false;
};

// Names the background where the sentence did not: "浅蓝色背景上，..." or "...，背景是浅蓝色".
std::string add_background(const std::string& sentence, int bg, Rng& rng) {
  const std::string& n = kBackgrounds[size_t(bg)].name;
  const std::string period = "。";
  bool ends = sentence.size() >= period.size() && sentence.compare(sentence.size() - period.size(), period.size(), period) == 0;
  std::string t = ends ? sentence.substr(0, sentence.size() - period.size()) : sentence;
  switch (rng.below(4)) {
    case 0: t = background_phrase(bg, rng) + "，" + t; break;
    case 1: t += "，背景是" + n; break;
    case 2: t += "，背景为" + n; break;
    default: t += "，底色是" + n; break;
  }
  return ends ? t + period : t;
}

// A single group: the caption also says that nothing else is there ("只有", "其他地方是空的"), or
// it would be just as true of a two-group scene holding the same group.
Caption one_group_caption(const Scene& s, Rng& rng) {
  const Group& g = s.groups[0];
  bool sizes = rng.chance(0.6);
  std::string np = noun_phrase(g, rng, sizes), p = pos_word(g.pos, rng);
  const std::string& bg = kBackgrounds[size_t(s.bg)].name;
  switch (rng.below(10)) {
    case 0: return {background_phrase(s.bg, rng) + "，只有" + p + "有" + np, sizes, true};
    case 1: return {add_background("画面" + p + "是" + np + "，其他地方是空的", s.bg, rng), sizes, true};
    case 2: return {add_background("画面中只有" + np + "，位于" + p, s.bg, rng), sizes, true};
    case 3: return {add_background("图中只在" + p + "画着" + np, s.bg, rng), sizes, true};
    case 4: return {"只有" + p + "有" + np + "，背景是" + bg, sizes, true};
    case 5: return {"一张" + bg + "背景的图片，只在" + p + "有" + np, sizes, true};
    case 6: return {add_background("只有" + np + "出现在" + p, s.bg, rng), sizes, true};
    case 7: return {add_background("这张图只有" + p + "有" + np + "。", s.bg, rng), sizes, true};
    case 8: return {"在" + bg + "的背景中，只有" + np + "位于" + p, sizes, true};
    default: return {add_background("图片" + p + "是" + np + "，其他地方是空的", s.bg, rng), sizes, true};
  }
}

Caption two_group_caption(const Scene& s, Rng& rng) {
  const Group &a = s.groups[0], &b = s.groups[1];
  // Same shape and colour: only the size (or the count) tells the groups apart, so name it.
  bool sizes = (a.shape == b.shape && a.color == b.color) || rng.chance(0.5);
  std::string na = noun_phrase(a, rng, sizes), nb = noun_phrase(b, rng, sizes);
  std::string pa = pos_word(a.pos, rng), pb = pos_word(b.pos, rng);
  const std::string& bg = kBackgrounds[size_t(s.bg)].name;
  switch (rng.below(8)) {
    case 0: return {add_background(pa + "是" + na + "，" + pb + "是" + nb, s.bg, rng), sizes, true};
    case 1: return {background_phrase(s.bg, rng) + "，" + pa + "有" + na + "，" + pb + "有" + nb, sizes, true};
    case 2: return {add_background(na + "在" + pa + "，" + nb + "在" + pb, s.bg, rng), sizes, true};
    case 3: return {add_background(pb + "有" + nb + "，" + pa + "有" + na, s.bg, rng), sizes, true};
    case 4: return {"画面" + pa + "画着" + na + "，" + pb + "画着" + nb + "，背景是" + bg, sizes, true};
    case 5: return {add_background(na + "和" + nb + "分别位于" + pa + "和" + pb, s.bg, rng), sizes, true};
    case 6: return {add_background("图中有" + na + "和" + nb + "，前者在" + pa + "，后者在" + pb, s.bg, rng), sizes, true};
    default: return {"一张" + bg + "背景的图：" + pa + "是" + na + "，" + pb + "是" + nb + "。", sizes, true};
  }
}

std::vector<Caption> captions(const Scene& s, Rng& rng, int n) {
  std::vector<Caption> out;
  for (int tries = 0; int(out.size()) < n; ++tries) {
    Caption c = s.groups.size() == 1 ? one_group_caption(s, rng) : two_group_caption(s, rng);
    if (tries > 1000 || std::none_of(out.begin(), out.end(), [&](const Caption& o) { return o.text == c.text; }))
      out.push_back(c);
  }
  return out;
}

// Whether caption c (of some scene) describes scene s truthfully: the same groups (shape, colour,
// count, place; the size where c names it) and the background where c names it.
bool fits(const Caption& c, const Scene& of, const Scene& s) {
  if (of.groups.size() != s.groups.size() || (c.background && of.bg != s.bg)) return false;
  for (size_t k = 0; k < s.groups.size(); ++k) {
    const Group &a = of.groups[k], &b = s.groups[k];
    if (a.shape != b.shape || a.color != b.color || a.count != b.count || a.pos != b.pos) return false;
    if (c.sizes && a.big != b.big) return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------------------
// Output.

std::vector<uint32_t> utf8_codepoints(const std::string& s) {
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) {
    auto c = uint8_t(s[i]);
    int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (uint8_t(s[i + size_t(k)]) & 0x3F);
    cps.push_back(cp);
    i += size_t(len);
  }
  return cps;
}

std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

void write_file(const std::string& path, const std::string& content) {
  clip::AtomicFile f(path);
  f.write(content);
  f.commit();
}

// How well the captions single out their images: a caption that truthfully describes m images of
// its split gives a perfect model Recall@1 1/m (ties broken at random), and an image described by F
// captions of its split, 5 of them its own, Recall@1 5/F.
void report_ambiguity(const std::string& split, const std::vector<Scene>& scenes,
                      const std::vector<std::vector<Caption>>& texts) {
  size_t n = scenes.size(), captions = 0, unique = 0, worst = 0;
  double t2i = 0, i2t = 0;
  std::vector<size_t> fitting(n, 0);  // captions of the split that describe image j
  for (size_t i = 0; i < n; ++i)
    for (const Caption& c : texts[i]) {
      size_t m = 0;
      for (size_t j = 0; j < n; ++j)
        if (fits(c, scenes[i], scenes[j])) ++m, ++fitting[j];
      ++captions;
      unique += m == 1;
      worst = std::max(worst, m);
      t2i += 1.0 / double(m);
    }
  for (size_t j = 0; j < n; ++j) i2t += double(texts[j].size()) / double(fitting[j]);
  if (n == 0) return;
  clip::log_info("{}: {:.1f} % of the captions describe their own image only (at most {} images); a perfect model's "
                 "Recall@1 {:.1f} % (text->image) / {:.1f} % (image->text)",
                 split, 100.0 * double(unique) / double(captions), worst, 100.0 * t2i / double(captions),
                 100.0 * i2t / double(n));
}

// One image's scene as a JSON object (for analysing a model's mistakes):
// {"split", "image_id", "background", "texture", "groups": [{"shape", "color", "count", "place", "size"}]}.
nlohmann::ordered_json scene_json(const std::string& split, int64_t image_id, const Scene& s) {
  static const char* shapes[] = {"circle", "square", "triangle", "star", "cross"};
  static const char* places[] = {"left", "right", "top", "bottom", "middle"};
  static const char* textures[] = {"plain", "gradient", "clouds", "stripes", "vignette", "grain"};
  nlohmann::ordered_json j = {{"split", split},
                              {"image_id", image_id},
                              {"background", kBackgrounds[size_t(s.bg)].name},
                              {"texture", textures[s.texture]},
                              {"groups", nlohmann::ordered_json::array()}};
  for (const Group& g : s.groups)
    j["groups"].push_back({{"shape", shapes[g.shape]},
                           {"color", kColors[size_t(g.color)].full},
                           {"count", g.count},
                           {"place", places[g.pos]},
                           {"size", g.big ? "big" : "small"}});
  return j;
}

struct Options {
  std::string out, scenes;  // scenes: optional JSONL of every image's scene attributes
  uint64_t seed = 20240601;
  int train = 2000, valid = 200, test = 200, size = 80, quality = 85;
};

int run(const Options& o) {
  if (!clip::is_directory(o.out) && ::mkdir(o.out.c_str(), 0755) != 0) clip::throw_io_error("create folder", o.out);
  const std::vector<std::pair<std::string, int>> splits = {{"train", o.train}, {"valid", o.valid}, {"test", o.test}};
  std::set<uint32_t> chars;
  int64_t global = 0;
  size_t total_bytes = 0;
  std::string scene_lines;
  for (const auto& [split, count] : splits) {
    std::string tsv, jsonl;
    std::vector<Scene> scenes;
    std::vector<std::vector<Caption>> texts;
    for (int i = 0; i < count; ++i, ++global) {
      // Each image has its own stream, so a split's content does not depend on the others' sizes
      // beyond its id range.
      Rng rng(o.seed * 0x100000001B3ull + uint64_t(global) * 0x9E3779B97F4A7C15ull);
      Scene scene = make_scene(rng, o.size);
      Image im = render(scene, rng, o.size);
      std::vector<uint8_t> jpeg = clip::encode_jpeg(im, o.quality);
      int64_t image_id = 100001 + global;
      tsv += fmt::format("{}\t{}\n", image_id, clip::base64_encode(jpeg.data(), jpeg.size()));
      auto caps = captions(scene, rng, 5);
      for (size_t k = 0; k < caps.size(); ++k) {
        int64_t text_id = 1 + global * 5 + int64_t(k);
        jsonl += fmt::format("{{\"text_id\": {}, \"text\": {}, \"image_ids\": [{}]}}\n", text_id,
                             nlohmann::json(caps[k].text).dump(), image_id);
        for (uint32_t cp : utf8_codepoints(caps[k].text)) chars.insert(cp);
      }
      if (!o.scenes.empty()) scene_lines += scene_json(split, image_id, scene).dump() + "\n";
      scenes.push_back(std::move(scene));
      texts.push_back(std::move(caps));
    }
    report_ambiguity(split, scenes, texts);
    write_file(clip::path_join(o.out, split + "_imgs.tsv"), tsv);
    write_file(clip::path_join(o.out, split + "_texts.jsonl"), jsonl);
    total_bytes += tsv.size() + jsonl.size();
    clip::log_info("{}: {} images, {} texts, {:.2f} MB", split, count, count * 5, (tsv.size() + jsonl.size()) / 1e6);
  }

  // BERT-Chinese vocabulary layout, then the characters of the captions plus digits, lower-case
  // letters and common punctuation so that ad-hoc queries rarely hit [UNK].
  for (uint32_t cp = '0'; cp <= '9'; ++cp) chars.insert(cp);
  for (uint32_t cp = 'a'; cp <= 'z'; ++cp) chars.insert(cp);
  for (const char* p : {"，", "。", "、", "！", "？", "：", "；", ",", ".", "!", "?", ":", ";", "\"", "(", ")", "-"})
    for (uint32_t cp : utf8_codepoints(p)) chars.insert(cp);
  std::string vocab = "[PAD]\n";
  for (int k = 1; k <= 99; ++k) vocab += fmt::format("[unused{}]\n", k);
  vocab += "[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
  size_t vocab_size = 104;
  for (uint32_t cp : chars) {
    vocab += utf8_encode(cp) + "\n";
    ++vocab_size;
  }
  write_file(clip::path_join(o.out, "vocab.txt"), vocab);
  if (!o.scenes.empty()) write_file(o.scenes, scene_lines);

  // A tiny model: 64x64 input, 8x8 patches (64 tokens), 2-layer ViT and BERT of width 128. The text
  // tower has no dropout: trained from scratch for a few minutes, the model underfits, and dropout
  // only slows it down.
  nlohmann::ordered_json vit = {{"embed_dim", 64},          {"image_resolution", 64}, {"vision_layers", 2},
                                {"vision_width", 128},      {"vision_patch_size", 8}, {"vision_head_width", 32}};
  nlohmann::ordered_json rbt = {{"vocab_size", vocab_size},
                                {"text_attention_probs_dropout_prob", 0.0},
                                {"text_hidden_act", "gelu"},
                                {"text_hidden_dropout_prob", 0.0},
                                {"text_hidden_size", 128},
                                {"text_initializer_range", 0.02},
                                {"text_intermediate_size", 256},
                                {"text_max_position_embeddings", 64},
                                {"text_num_attention_heads", 4},
                                {"text_num_hidden_layers", 2},
                                {"text_type_vocab_size", 2}};
  write_file(clip::path_join(o.out, "ViT-Demo.json"), vit.dump(2) + "\n");
  write_file(clip::path_join(o.out, "RBT-Demo.json"), rbt.dump(2) + "\n");
  clip::log_info("{}: {} images, vocab {} tokens, {:.2f} MB in total", o.out, global, vocab_size, total_bytes / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return clip::run_main("make-demo-data", argc, argv, [](int argc, char** argv) -> int {
    CLI::App app{"Generates the shapes-zh demo dataset (Flickr30k-CN layout) deterministically"};
    Options o;
    app.add_option("--out,-o", o.out, "Output folder (created if missing)")->required();
    app.add_option("--seed", o.seed, "Random seed")->capture_default_str();
    app.add_option("--train", o.train, "Training images")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--valid", o.valid, "Validation images")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--test", o.test, "Test images")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--size", o.size, "Image side in pixels")->capture_default_str()->check(CLI::Range(32, 512));
    app.add_option("--quality", o.quality, "JPEG quality")->capture_default_str()->check(CLI::Range(1, 100));
    app.add_option("--scenes", o.scenes, "Also write every image's scene attributes (JSONL) to this file");
    CLIP_PARSE(app, argc, argv);
    return run(o);
  });
}
