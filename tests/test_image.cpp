// Image decoding and cn_clip's eval preprocessing against the Pillow 9.4 references: the fixture
// set (expected/pixels.jsonl + pixels/*.f32, made by cn_clip itself) and tests/data/image (small
// files covering the other PNG/JPEG variants, expected.tsv written by make_cases.py with Pillow).
#include <catch2/catch.hpp>

#include <dirent.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/sha256.h"
#include "util.h"


using namespace clip;

namespace {

std::string sha_of(const std::vector<uint8_t>& v) { return sha256_hex(v.data(), v.size()); }

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

struct FixtureImage {
  long long id;
  std::vector<uint8_t> encoded;
};

std::vector<FixtureImage> fixture_images() {
  std::vector<FixtureImage> out;
  std::istringstream in(read_file(testutil::fixture("images.tsv")));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    out.push_back({std::stoll(line.substr(0, tab)), base64_decode(std::string_view(line).substr(tab + 1))});
  }
  return out;
}

Image decode(const std::vector<uint8_t>& d) { return decode_image(d.data(), d.size()); }

// decode() into `out`, or false (with a warning naming `file`) when this build lacks the format's
// decoder (stb_image for BMP/PNM, libwebp, giflib); other errors are thrown.
bool decode_if_built(const std::vector<uint8_t>& d, Image& out, const std::string& file) {
  try {
    out = decode(d);
    return true;
  } catch (const DataError& e) {
    if (std::string(e.what()).find("absent from this build") == std::string::npos) throw;
    WARN("skipped " << file << ": " << e.what());
    return false;
  }
}

Image solid(PixelMode mode, int w, int h, std::vector<uint8_t> px) {
  Image im;
  im.mode = mode;
  im.width = w;
  im.height = h;
  const size_t c = mode_channels(mode);
  for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i) im.pixels.insert(im.pixels.end(), px.begin(), px.begin() + c);
  return im;
}

}  // namespace

TEST_CASE("fixture images: decode, resize and preprocess are bit-exact with cn_clip", "[image]") {
  std::map<long long, nlohmann::json> expected;
  {
    std::istringstream in(read_file(testutil::fixture("expected/pixels.jsonl")));
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) {
        auto j = nlohmann::json::parse(line);
        expected[j.at("image_id").get<long long>()] = j;
      }
  }
  const auto images = fixture_images();
  REQUIRE(images.size() == 7);
  const int R = 224;
  std::vector<float> px(3 * R * R);
  for (const auto& fi : images) {
    INFO("image " << fi.id);
    REQUIRE(expected.count(fi.id));
    const auto& e = expected[fi.id];
    const Image im = decode(fi.encoded);
    CHECK(mode_name(im.mode) == e.at("src_mode").get<std::string>());
    CHECK(im.width == e.at("src_size_wh")[0].get<int>());
    CHECK(im.height == e.at("src_size_wh")[1].get<int>());
    CHECK(sha_of(im.pixels) == e.at("decoded_native_sha256").get<std::string>());

    const Image rgb = convert_rgb(resize_bicubic(im, R, R));
    REQUIRE(rgb.mode == PixelMode::RGB);
    CHECK(sha_of(rgb.pixels) == e.at("resized_rgb_u8_sha256").get<std::string>());

    preprocess_eval(im, R, px.data());
    const std::string ref = read_file(testutil::fixture("expected/pixels/" + std::to_string(fi.id) + ".f32"));
    REQUIRE(ref.size() == px.size() * sizeof(float));
    std::vector<float> want(px.size());
    std::memcpy(want.data(), ref.data(), ref.size());
    double max_diff = 0;
    size_t exact = 0;
    for (size_t i = 0; i < px.size(); ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(px[i] - want[i])));
      exact += px[i] == want[i];
    }
    CHECK(max_diff <= 1e-6);
    CHECK(exact == px.size());  // the target: identical floats
  }
}

TEST_CASE("Pillow reference cases: PNG/JPEG variants decode and resize like Pillow 9.4", "[image]") {
  const std::string dir = testutil::source_dir() + "/tests/data/image/";
  std::istringstream in(read_file(dir + "expected.tsv"));
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto f = split(line, '\t');
    REQUIRE(f.size() >= 6);
    INFO("file " << f[0]);
    const auto data = bytes_of(read_file(dir + f[0]));
    Image im;
    if (!decode_if_built(data, im, f[0])) continue;
    CHECK(mode_name(im.mode) == f[1]);
    CHECK(im.width == std::stoi(f[2]));
    CHECK(im.height == std::stoi(f[3]));
    CHECK(sha_of(im.pixels) == f[4]);
    for (size_t k = 5; k < f.size(); ++k) {
      const auto eq = f[k].find('=');
      const auto x = f[k].find('x');
      const int w = std::stoi(f[k].substr(0, x)), h = std::stoi(f[k].substr(x + 1, eq - x - 1));
      INFO("resize to " << w << "x" << h);
      CHECK(sha_of(convert_rgb(resize_bicubic(im, w, h)).pixels) == f[k].substr(eq + 1));
    }
    ++checked;
  }
  CHECK(checked >= 14);
}

TEST_CASE("--decode: exact stays Pillow's bytes, fast is a close image at the smallest scale M/8", "[image][decode]") {
  const auto images = fixture_images();
  REQUIRE(images.size() == 7);
  const int R = 224;
  // Expected output sizes of fast: the smallest M/8 keeping both sides >= 224 (8/8 when none does).
  const std::map<long long, std::pair<int, int>> fast_size{
      {1000002, {313, 235}},  // 500x375 RGB: 5/8
      {1000015, {235, 313}},  // 375x500 L: 5/8
      {1000231, {224, 224}},  // 224x224: 8/8
      {1002399, {320, 240}},  // 320x240 CMYK: 8/8 (7/8 would give 210 rows)
      {1003020, {225, 339}},  // 300x451: 6/8
  };
  std::vector<float> px_exact(3 * R * R), px_fast(3 * R * R);
  for (const auto& fi : images) {
    INFO("image " << fi.id);
    const Image im = decode(fi.encoded);
    // exact through the mode-taking entry point: the same bytes as decode_image.
    const Image ex = decode_image(fi.encoded.data(), fi.encoded.size(), DecodeMode::exact, R);
    CHECK(ex.width == im.width);
    CHECK(ex.height == im.height);
    CHECK(ex.pixels == im.pixels);
    preprocess_eval_bytes(fi.encoded.data(), fi.encoded.size(), R, ImageOptions{DecodeMode::exact}, px_exact.data());
    const std::string ref = read_file(testutil::fixture("expected/pixels/" + std::to_string(fi.id) + ".f32"));
    REQUIRE(ref.size() == px_exact.size() * sizeof(float));
    CHECK(std::memcmp(ref.data(), px_exact.data(), ref.size()) == 0);  // cn_clip's floats, bit for bit

    const Image fa = decode_image(fi.encoded.data(), fi.encoded.size(), DecodeMode::fast, R);
    CHECK(fa.mode == im.mode);
    const auto want = fast_size.find(fi.id);
    if (want == fast_size.end()) {  // PNG: not JPEG, decoded exactly
      CHECK(fa.width == im.width);
      CHECK(fa.pixels == im.pixels);
      continue;
    }
    CHECK(fa.width == want->second.first);
    CHECK(fa.height == want->second.second);
    // The model input: close to exact's. The mean absolute difference of the resized RGB bytes
    // stays small, and it is not zero (fast really decoded differently).
    const Image a = convert_rgb(resize_bicubic(im, R, R)), b = convert_rgb(resize_bicubic(fa, R, R));
    REQUIRE(a.pixels.size() == b.pixels.size());
    double sum = 0;
    for (size_t i = 0; i < a.pixels.size(); ++i) sum += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
    const double mad = sum / a.pixels.size();
    INFO("mean abs difference " << mad);
    CHECK(mad > 0.0);
    CHECK(mad < 3.0);
    preprocess_eval_bytes(fi.encoded.data(), fi.encoded.size(), R, ImageOptions{DecodeMode::fast}, px_fast.data());
    std::vector<float> want_px(px_fast.size());
    to_chw_normalized(b, want_px.data());
    CHECK(std::memcmp(want_px.data(), px_fast.data(), want_px.size() * sizeof(float)) == 0);
  }
  // A JPEG smaller than the model resolution is decoded at 8/8 (no scaling).
  const auto& jpeg = images[0].encoded;
  const Image full = decode_image(jpeg.data(), jpeg.size(), DecodeMode::fast, 1000);
  CHECK(full.width == 500);
  CHECK(full.height == 375);
  CHECK(std::string(decode_mode_name(DecodeMode::fast)) == "fast");
  CHECK(std::string(decode_mode_name(DecodeMode::exact)) == "exact");
  CHECK_THROWS_AS(decode_image(jpeg.data(), jpeg.size() / 2, DecodeMode::fast, R), DataError);  // truncated
}

TEST_CASE("resampling rules: copies, NEAREST for P/1, premultiplied alpha, argument checks", "[image]") {
  Image p;
  p.mode = PixelMode::P;
  p.width = 4;
  p.height = 2;
  p.pixels = {0, 1, 2, 3, 3, 2, 1, 0};
  p.palette = {10, 0, 0, 0, 20, 0, 0, 0, 30, 40, 40, 40};
  const Image same = resize_bicubic(p, 4, 2);
  CHECK(same.pixels == p.pixels);
  const Image up = resize_bicubic(p, 8, 4);  // NEAREST: every output pixel is one of the input indices
  CHECK(up.mode == PixelMode::P);
  CHECK(up.palette == p.palette);
  CHECK(up.pixels == std::vector<uint8_t>{0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3,
                                          3, 3, 2, 2, 1, 1, 0, 0, 3, 3, 2, 2, 1, 1, 0, 0});
  // Index 200 is past the 4 stored colours: Pillow's palette there is the grey ramp.
  p.pixels[0] = 200;
  const Image rgb = convert_rgb(p);
  CHECK(std::vector<uint8_t>(rgb.pixels.begin(), rgb.pixels.begin() + 6) == std::vector<uint8_t>{200, 200, 200, 0, 20, 0});

  // A fully transparent colour does not bleed into its opaque neighbours (premultiplied resize).
  Image rgba = solid(PixelMode::RGBA, 8, 8, {0, 0, 255, 255});
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 4; ++x) {
      uint8_t* q = &rgba.pixels[(y * 8 + x) * 4];
      q[0] = 255, q[1] = 0, q[2] = 0, q[3] = 0;  // transparent red
    }
  const Image small = convert_rgb(resize_bicubic(rgba, 3, 3));
  for (int y = 0; y < 3; ++y) {
    const uint8_t* q = &small.pixels[(y * 3 + 2) * 3];
    CHECK(q[0] == 0);
    CHECK(q[2] == 255);
  }
  CHECK_THROWS_AS(resize_bicubic(rgba, 0, 5), UsageError);
  CHECK_THROWS_AS(resize_nearest(rgba, 5, -1), UsageError);

  // CMYK -> RGB with Pillow's integer formula.
  const Image cmyk = solid(PixelMode::CMYK, 1, 1, {0, 128, 255, 64});
  CHECK(convert_rgb(cmyk).pixels == std::vector<uint8_t>{191, 95, 0});
  const Image one = solid(PixelMode::One, 2, 1, {255});
  CHECK(convert_rgb(one).pixels == std::vector<uint8_t>{255, 255, 255, 255, 255, 255});

  const Image c = crop(solid(PixelMode::L, 4, 4, {7}), 2, 2, 4, 3);  // partly outside: zeros there
  CHECK(c.width == 4);
  CHECK(c.pixels == std::vector<uint8_t>{7, 7, 0, 0, 7, 7, 0, 0, 0, 0, 0, 0});
}

TEST_CASE("base64: both alphabets, Python's skipping of junk, padding required", "[image]") {
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  for (size_t n = 0; n < 40; ++n) {
    const std::vector<uint8_t> v(all.begin() + 200, all.begin() + 200 + std::min<size_t>(n, 56));
    const std::string std_enc = base64_encode(v.data(), v.size());
    CHECK(std_enc.size() == (v.size() + 2) / 3 * 4);
    CHECK(base64_decode(std_enc) == v);
  }
  const std::string std_enc = base64_encode(all.data(), all.size());
  REQUIRE(std_enc.find('+') != std::string::npos);
  REQUIRE(std_enc.find('/') != std::string::npos);
  std::string url = std_enc;
  for (auto& ch : url) ch = ch == '+' ? '-' : ch == '/' ? '_' : ch;
  CHECK(base64_decode(url) == all);
  std::string wrapped;  // line breaks and spaces are skipped, as binascii does
  for (size_t i = 0; i < std_enc.size(); ++i) wrapped += std_enc.substr(i, 1) + (i % 60 == 59 ? "\r\n" : i % 7 == 0 ? " " : "");
  CHECK(base64_decode(wrapped) == all);
  CHECK(base64_decode("QUJD") == bytes_of("ABC"));
  CHECK(base64_decode("QQ==") == bytes_of("A"));
  CHECK(base64_decode("QQ==QUJD") == bytes_of("A"));  // data after the padding is ignored (Python)
  CHECK(base64_decode("Q!U*J.D") == bytes_of("ABC"));
  CHECK(base64_decode("=QUJD") == bytes_of("ABC"));  // a leading '=' is skipped
  CHECK(base64_decode("").empty());
  CHECK_THROWS_AS(base64_decode("QUJ"), DataError);     // missing padding
  CHECK_THROWS_AS(base64_decode("QQ="), DataError);     // incomplete padding
  CHECK_THROWS_AS(base64_decode("QUJDQ"), DataError);   // 1 more than a multiple of 4
  CHECK_THROWS_AS(base64_decode("QUJD\xc3\xa9"), DataError);  // non-ASCII
}

TEST_CASE("corrupt or truncated files raise DataError with the decoder's reason", "[image]") {
  const auto images = fixture_images();
  const auto& jpeg = images[0].encoded;  // 500x375 RGB JPEG
  const auto& png = images[3].encoded;   // RGBA PNG
  const Image full = decode(jpeg);

  // Cut in the middle of the scan: Pillow says "image file is truncated".
  std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + static_cast<long>(jpeg.size() / 2));
  try {
    decode(cut);
    FAIL("truncated JPEG decoded");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).find("JPEG") != std::string::npos);
    CHECK(std::string(e.what()).find("truncated") != std::string::npos);
  }
  // Even a missing EOI marker is "truncated" for Pillow (libjpeg needs it to finish the last MCU row).
  std::vector<uint8_t> no_eoi(jpeg.begin(), jpeg.end() - 2);
  CHECK_THROWS_AS(decode(no_eoi), DataError);
  // Bytes after the EOI are ignored.
  std::vector<uint8_t> trailing = jpeg;
  for (char ch : std::string("trailing bytes")) trailing.push_back(static_cast<uint8_t>(ch));
  CHECK(decode(trailing).pixels == full.pixels);
  // Garbage after the SOI marker: libjpeg's own message.
  std::vector<uint8_t> junk = {0xFF, 0xD8, 0xFF, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC};
  try {
    decode(junk);
    FAIL("junk JPEG decoded");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).rfind("JPEG: ", 0) == 0);
    CHECK(std::string(e.what()).size() > 8);
  }
  // Every prefix length class of the JPEG and the PNG fails cleanly (no crash, no abort).
  for (size_t len : {size_t(1), size_t(3), size_t(20), size_t(200), jpeg.size() - 4000}) {
    std::vector<uint8_t> d(jpeg.begin(), jpeg.begin() + static_cast<long>(len));
    CHECK_THROWS_AS(decode(d), DataError);
  }
  for (size_t len : {size_t(8), size_t(20), size_t(40), size_t(1000), png.size() / 2}) {
    std::vector<uint8_t> d(png.begin(), png.begin() + static_cast<long>(len));
    CHECK_THROWS_AS(decode(d), DataError);
  }
  // A damaged IHDR checksum (Pillow: "broken PNG file").
  std::vector<uint8_t> bad_crc = png;
  bad_crc[8 + 8 + 13] ^= 0x01;
  try {
    decode(bad_crc);
    FAIL("PNG with a bad IHDR CRC decoded");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).find("IHDR") != std::string::npos);
  }
  // Broken compressed data inside IDAT: zlib's complaint, through libpng.
  std::vector<uint8_t> bad_zlib = png;
  for (size_t i = 200; i < 260; ++i) bad_zlib[i] = 0xFF;
  CHECK_THROWS_AS(decode(bad_zlib), DataError);
  CHECK_THROWS_AS(decode(bytes_of("this is not an image at all")), DataError);
  CHECK_THROWS_AS(decode_image(nullptr, 0), DataError);
}

// Runs decode_image on a detached thread so that a decoder that never returns fails the test
// instead of hanging it. Returns the DataError message ("" when it decoded, "TIMEOUT" when stuck).
std::string decode_with_deadline(const std::string& data, int seconds = 5) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::string result;
    std::string data;
  };
  auto st = std::make_shared<State>();
  st->data = data;
  std::thread([st] {
    std::string r;
    try {
      decode_image(reinterpret_cast<const uint8_t*>(st->data.data()), st->data.size());
    } catch (const DataError& e) {
      r = e.what();
      if (r.empty()) r = "DataError";
    }
    std::lock_guard<std::mutex> lk(st->mu);
    st->result = r;
    st->done = true;
    st->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lk(st->mu);
  if (!st->cv.wait_for(lk, std::chrono::seconds(seconds), [&] { return st->done; })) return "TIMEOUT";
  return st->result;
}

TEST_CASE("hostile images are refused from their header, quickly", "[image][hostile]") {
  // The CVE-2021-42715 Radiance HDR: refused by its magic bytes, never handed to stb_image.
  const auto t0 = std::chrono::steady_clock::now();
  std::string why = decode_with_deadline(testutil::hdr_bomb());
  CHECK(why != "TIMEOUT");
  CHECK(why.find("Radiance HDR") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK(testutil::hdr_bomb().size() == 50);

  // Other formats whose stb_image 2.27 decoders are unsafe are refused by name too.
  CHECK(decode_with_deadline("GIF89a\x10\x00\x10\x00\x00\x00\x00;").find("GIF") != std::string::npos);
  CHECK(decode_with_deadline(std::string("8BPS\x00\x01", 6) + std::string(40, '\0')).find("PSD") != std::string::npos);
  CHECK(decode_with_deadline("P3\n2 2\n255\n0 0 0 0 0 0 0 0 0 0 0 0\n").find("PNM") != std::string::npos);
  // A headerless TGA (no magic) is simply unrecognised.
  CHECK(decode_with_deadline(std::string("\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x00\x18\x00", 18) +
                             std::string(12, '\x7f'))
            .find("unrecognised") != std::string::npos);

  // Dimensions above the pixel limit, or pixel data the file does not hold: refused from the header.
  why = decode_with_deadline("P6\n100000 100000\n255\n" + std::string(16, 'x'));
  CHECK(why.find("exceeds the limit") != std::string::npos);
  why = decode_with_deadline("P5\n4000 4000\n255\n" + std::string(16, 'x'));
  CHECK(why.find("truncated") != std::string::npos);
  std::string bmp(54, '\0');
  bmp[0] = 'B';
  bmp[1] = 'M';
  bmp[10] = 54;
  bmp[14] = 40;
  auto put32 = [&](size_t o, uint32_t v) {
    for (int k = 0; k < 4; ++k) bmp[o + k] = static_cast<char>((v >> (8 * k)) & 0xFF);
  };
  put32(18, 30000);
  put32(22, 30000);
  bmp[26] = 1;
  bmp[28] = 24;
  why = decode_with_deadline(bmp);
  CHECK(why.find("exceeds the limit") != std::string::npos);
  put32(18, 3000);
  put32(22, 3000);
  why = decode_with_deadline(bmp);
  CHECK(why.find("truncated") != std::string::npos);
  put32(30, 1);  // RLE8: stb_image has no RLE BMP decoder
  CHECK(decode_with_deadline(bmp).find("compression") != std::string::npos);
}

TEST_CASE("EXIF orientation: read from JPEG, PNG and WebP and applied as Pillow's exif_transpose", "[image]") {
  const std::string dir = testutil::source_dir() + "/tests/data/image/";
  std::istringstream in(read_file(dir + "exif.tsv"));
  std::string line;
  int checked = 0, turned = 0;
  ImageOptions upright;
  upright.exif_transpose = true;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto f = split(line, '\t');
    REQUIRE(f.size() == 6);
    INFO("file " << f[0]);
    const auto data = bytes_of(read_file(dir + f[0]));
    Image plain;
    if (!decode_if_built(data, plain, f[0])) continue;
    const int pillow = std::stoi(f[1]);  // what Pillow reads; it acts on 2..8 only
    const int o = exif_orientation(data.data(), data.size());
    CHECK(o == (pillow >= 1 && pillow <= 8 ? pillow : 1));
    const Image up = decode_image_upright(data.data(), data.size());
    CHECK(up.width == std::stoi(f[2]));
    CHECK(up.height == std::stoi(f[3]));
    CHECK(sha_of(up.pixels) == f[4]);
    CHECK(sha_of(convert_rgb(resize_bicubic(up, 224, 224)).pixels) == f[5]);
    // The model's path: with exif_transpose the same pixels, without it the file's own.
    CHECK(decode_image(data.data(), data.size(), upright, 224).pixels == up.pixels);
    CHECK(decode_image(data.data(), data.size(), ImageOptions{}, 224).pixels == plain.pixels);
    turned += o != 1;
    ++checked;
  }
  CHECK(checked >= 12);
  CHECK(turned >= 9);
  // Corrupt or foreign input: orientation 1, never a read outside the data.
  const auto jpeg = bytes_of(read_file(dir + "exif_jpeg_o6.jpg"));
  for (size_t n = 0; n <= 80; ++n) CHECK(exif_orientation(jpeg.data(), n) <= 8);
  CHECK(exif_orientation(nullptr, 0) == 1);
  const uint8_t junk[] = {0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x10, 'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 0xFF, 0xFF, 0xFF, 0x7F};
  CHECK(exif_orientation(junk, sizeof junk) == 1);
}

TEST_CASE("PNG: an IDAT that runs past the end of the file, read on past it, stays inside the buffer", "[image]") {
  // Found by the fuzzer: the IDAT's length reaches the file's last byte, so its CRC is missing; the
  // zeros that stand in for it used to leave the read position past the end, and the next read (the
  // following chunk's header) copied from outside the buffer. Pillow 9.4 decodes this file.
  const auto data = bytes_of(read_file(testutil::source_dir() + "/tests/fuzz/corpus/image/png_cut_crc_reread.png"));
  REQUIRE(data.size() == 192);
  try {
    const Image im = decode(data);
    CHECK(mode_name(im.mode) == "L");
    CHECK(im.width == 27);
    CHECK(im.height == 19);
    CHECK(sha_of(im.pixels) == "d413f31a520da79204f7ca4d30179bca55c6f055d67b7354f295a42fa1c60cdf");
  } catch (const DataError& e) {
    FAIL("Pillow decodes this file; we said: " << e.what());
  }
  // Every cut of it, and of it with four more bytes claimed, either decodes or names the truncation.
  for (size_t n = 40; n <= data.size(); ++n) {
    std::vector<uint8_t> cut(data.begin(), data.begin() + static_cast<long>(n));
    try {
      decode(cut);
    } catch (const DataError& e) {
      INFO("cut at " << n);
      CHECK(std::string(e.what()).find("PNG") != std::string::npos);
    }
  }
}

TEST_CASE("GIF: a first frame cut short is an error; what follows the first frame is never read", "[image]") {
  const auto gif = bytes_of(read_file(testutil::source_dir() + "/tests/data/image/gif_p.gif"));
  Image whole;
  if (!decode_if_built(gif, whole, "gif_p.gif")) return;
  REQUIRE(gif.size() == 1403);
  // Cuts inside the frame's LZW data (Pillow: "image file is truncated"): giflib's partial raster,
  // the rest left at the background colour, used to come back as the image.
  // (the colour table of 256 entries and the frame's descriptor end at byte 791)
  for (size_t n : {size_t{900}, size_t{1100}, gif.size() - 40}) {
    INFO("cut at " << n << " of " << gif.size());
    std::vector<uint8_t> cut(gif.begin(), gif.begin() + static_cast<long>(n));
    try {
      decode(cut);
      FAIL("a GIF cut inside its first frame decoded");
    } catch (const DataError& e) {
      CHECK(std::string(e.what()).find("GIF: the first image is cut short or corrupt") != std::string::npos);
    }
  }
  // Cut right after the last pixels (no empty sub-block, no trailer): Pillow has all it reads.
  const Image cut_end = decode(std::vector<uint8_t>(gif.begin(), gif.end() - 2));
  CHECK(cut_end.pixels == whole.pixels);
  // Garbage after the first frame (a second frame that is cut, say) leaves the first frame's pixels.
  std::vector<uint8_t> more(gif.begin(), gif.end() - 1);  // without the trailer
  for (uint8_t b : {0x2C, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x10}) more.push_back(b);
  const Image again = decode(more);
  CHECK(again.width == whole.width);
  CHECK(again.height == whole.height);
  CHECK(again.pixels == whole.pixels);
}

TEST_CASE("encoders: PNG round trip in every mode, JPEG close to the source", "[image]") {
  Image rgba;
  rgba.mode = PixelMode::RGBA;
  rgba.width = 13;
  rgba.height = 7;
  for (int i = 0; i < 13 * 7 * 4; ++i) rgba.pixels.push_back(static_cast<uint8_t>(i * 37 + i / 5));
  Image la = rgba, rgb = convert_rgb(rgba), l = rgba, p = rgba, one = rgba;
  la.mode = PixelMode::LA;
  la.pixels.resize(13 * 7 * 2);
  l.mode = PixelMode::L;
  l.pixels.resize(13 * 7);
  p.mode = PixelMode::P;
  p.pixels.assign(l.pixels.begin(), l.pixels.end());
  p.palette = {1, 2, 3, 4, 5, 6};
  one.mode = PixelMode::One;
  one.pixels.resize(13 * 7);
  for (auto& v : one.pixels) v = v & 1 ? 255 : 0;
  for (const Image* im : {&rgba, &la, &rgb, &l, &p, &one}) {
    INFO("mode " << mode_name(im->mode));
    const auto png = encode_png(*im);
    const Image back = decode(png);
    CHECK(back.mode == im->mode);
    CHECK(back.width == im->width);
    CHECK(back.height == im->height);
    CHECK(back.pixels == im->pixels);
    CHECK(convert_rgb(back).pixels == convert_rgb(*im).pixels);  // P: palette entries past the stored ones stay grey
  }
  // JPEG: a smooth image comes back close (lossy), in the same mode.
  Image smooth;
  smooth.mode = PixelMode::RGB;
  smooth.width = 64;
  smooth.height = 48;
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x) smooth.pixels.insert(smooth.pixels.end(), {uint8_t(x * 4), uint8_t(y * 5), uint8_t(128)});
  const Image j = decode(encode_jpeg(smooth, 95));
  REQUIRE(j.mode == PixelMode::RGB);
  REQUIRE(j.pixels.size() == smooth.pixels.size());
  double err = 0;
  for (size_t i = 0; i < j.pixels.size(); ++i) err += std::abs(int(j.pixels[i]) - int(smooth.pixels[i]));
  CHECK(err / j.pixels.size() < 2.0);
  const Image jl = decode(encode_jpeg(l, 90));
  CHECK(jl.mode == PixelMode::L);
  CHECK_THROWS_AS(encode_jpeg(smooth, 0), UsageError);
}

TEST_CASE("bitmap text and contact sheets", "[image]") {
  Image canvas = solid(PixelMode::RGB, 20, 10, {255, 255, 255});
  draw_text(canvas, 1, 1, "A", {0, 0, 0});
  auto black = [&](const Image& im, int x, int y) {
    const uint8_t* q = &im.pixels[(static_cast<size_t>(y) * im.width + x) * 3];
    return q[0] == 0 && q[1] == 0 && q[2] == 0;
  };
  // 'A' top row is .###. and its middle row ##### (5x7 glyph at x=1, y=1).
  CHECK(!black(canvas, 1, 1));
  CHECK(black(canvas, 2, 1));
  CHECK(black(canvas, 4, 1));
  CHECK(!black(canvas, 5, 1));
  for (int x = 1; x <= 5; ++x) CHECK(black(canvas, x, 5));
  CHECK(!black(canvas, 0, 0));
  CHECK(text_width("abc") == 18);
  CHECK(text_width("ab\nwxyz", 2) == 48);
  CHECK(text_width("\xe4\xb8\xad\xe6\x96\x87") == 12);  // two CJK characters -> two '?'
  draw_text(canvas, 15, 5, "clipped at the border", {0, 0, 0}, 2);  // must not write out of bounds
  Image grey = solid(PixelMode::L, 4, 4, {0});
  CHECK_THROWS_AS(draw_text(grey, 0, 0, "x", {0, 0, 0}), UsageError);

  const Image red = solid(PixelMode::RGB, 60, 30, {255, 0, 0});
  const Image blue_p = [] {
    Image im = solid(PixelMode::P, 10, 20, {1});
    im.palette = {0, 0, 0, 0, 0, 255};
    return im;
  }();
  const int tile = 64;
  const Image sheet = make_montage({{{&red, "red 0.91"}, {&blue_p, ""}}, {{&red, "third"}}}, {"query one", ""}, tile);
  REQUIRE(sheet.mode == PixelMode::RGB);
  REQUIRE(sheet.pixels.size() == static_cast<size_t>(sheet.width) * sheet.height * 3);
  CHECK(sheet.width > 2 * tile + text_width("query one"));
  CHECK(sheet.height > 2 * tile + 16);
  CHECK(black(sheet, 0, 0) == false);  // white margin
  // Find the tiles by colour: red pixels exist in two rows, blue in the first only.
  int red_rows_top = 0, red_rows_bottom = 0, blue = 0, dark = 0;
  for (int y = 0; y < sheet.height; ++y)
    for (int x = 0; x < sheet.width; ++x) {
      const uint8_t* q = &sheet.pixels[(static_cast<size_t>(y) * sheet.width + x) * 3];
      if (q[0] == 255 && q[1] == 0 && q[2] == 0) (y < sheet.height / 2 ? red_rows_top : red_rows_bottom)++;
      if (q[0] == 0 && q[1] == 0 && q[2] == 255) ++blue;
      if (q[0] == 0 && q[1] == 0 && q[2] == 0) ++dark;
    }
  CHECK(red_rows_top == tile * tile / 2);  // 60x30 fitted into 64x64 -> 64x32
  CHECK(red_rows_bottom == tile * tile / 2);
  CHECK(blue == 32 * tile);  // 10x20 -> 32x64
  CHECK(dark > 50);          // label and captions were drawn
  CHECK_THROWS_AS(make_montage({}, {}, 4), UsageError);
}

TEST_CASE("decode + preprocess speed for the 500x375 JPEG", "[image][speed]") {
  const auto images = fixture_images();
  const auto& jpeg = images[0].encoded;
  std::vector<float> px(3 * 224 * 224);
  const int n = 40;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) preprocess_eval(decode(jpeg), 224, px.data());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double rate = n / s;
  WARN("decode + preprocess_eval (500x375 JPEG -> 3x224x224, 1 thread): " << rate << " images/s");
  CHECK(rate > 20);  // Pillow does ~170/s on the reference machine; this only catches pathological slowness
}

TEST_CASE("resize_bicubic (column-wise, AVX2) gives the bytes of Pillow's loops (resize_bicubic_by_rows)", "[image]") {
  // Noisy images of every resampled mode, down- and upscaled, narrow and wide, with columns too short
  // for the column-wise path (it then keeps the row loop) and long ones.
  uint32_t seed = 12345;
  auto rnd = [&] {
    seed ^= seed << 13;
    seed ^= seed >> 17;
    seed ^= seed << 5;
    return seed;
  };
  int compared = 0;
  for (PixelMode mode : {PixelMode::L, PixelMode::LA, PixelMode::RGB, PixelMode::RGBA, PixelMode::CMYK})
    for (auto [w, h, ow, oh] : std::vector<std::array<int, 4>>{{500, 375, 224, 224}, {375, 500, 224, 224},
                                                              {97, 13, 31, 40}, {13, 97, 40, 31},
                                                              {640, 480, 64, 64}, {50, 60, 224, 224},
                                                              {300, 200, 300, 100}, {300, 200, 120, 200},
                                                              {1, 300, 5, 7}, {300, 1, 7, 5}}) {
      Image im = blank_image(w, h, mode);
      for (auto& p : im.pixels) p = static_cast<uint8_t>(rnd() & 0xff);
      CAPTURE(mode_name(mode), w, h, ow, oh);
      const Image a = resize_bicubic(im, ow, oh), b = resize_bicubic_by_rows(im, ow, oh);
      CHECK(a.width == ow);
      CHECK(a.height == oh);
      CHECK(a.pixels == b.pixels);
      ++compared;
    }
  CHECK(compared == 50);
}

// A driver for tests/cli/pillow_diff.sh, which checks its output: decodes every file of
// $CLIP_DECODE_DIR and writes "name<TAB>ok<TAB>sha256 of the pixels" or "name<TAB>err<TAB>message"
// lines to $CLIP_DECODE_DIR.out, for comparison with Pillow's answers on the same files. A name that
// ends in "_to_<W>x<H>.<ext>" adds a field: the sha256 of convert_rgb(resize_bicubic(image, W, H)).
TEST_CASE("decode every file of $CLIP_DECODE_DIR (for tests/cli/pillow_diff.sh)", "[.decode-dir]") {
  const char* dir = std::getenv("CLIP_DECODE_DIR");
  if (!dir) FAIL("set CLIP_DECODE_DIR to a folder of image files");
  std::vector<std::string> names;
  if (DIR* d = opendir(dir)) {
    while (const dirent* e = readdir(d))
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  REQUIRE(!names.empty());
  std::ofstream out(std::string(dir) + ".out");
  for (const auto& name : names) {
    const auto data = bytes_of(read_file(std::string(dir) + "/" + name));
    try {
      const Image im = decode(data);
      std::string line = name + "\tok\t" + sha_of(im.pixels);
      const auto to = name.rfind("_to_");
      if (to != std::string::npos) {
        const auto x = name.find('x', to);
        const int w = std::stoi(name.substr(to + 4, x - to - 4)), h = std::stoi(name.substr(x + 1));
        line += "\t" + sha_of(convert_rgb(resize_bicubic(im, w, h)).pixels);
      }
      out << line << "\n";
    } catch (const DataError& e) {
      std::string why = e.what();
      std::replace(why.begin(), why.end(), '\n', ' ');
      out << name << "\terr\t" << why << "\n";
    }
  }
  REQUIRE(out.good());
}
