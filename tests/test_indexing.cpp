// Encoding whole inputs (retrieval/indexing): the 8-bit pixel path of encode_images against the
// float32 pixels it replaced, bit for bit; texts with and without trimmed padding columns; the
// weights hash computed in the background; the timing each call reports.
#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "clip/base/error.h"
#include "clip/base/log.h"
#include "clip/data/dataset.h"
#include "clip/image/image.h"
#include "clip/model/tensor_torch.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/indexing.h"
#include "util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace clip;
namespace fs = std::filesystem;

namespace {

// Warnings only (no progress lines) within a test.
struct QuietLog {
  LogLevel prev = log_level();
  QuietLog() { set_log_level(LogLevel::warn); }
  ~QuietLog() { set_log_level(prev); }
};

// Equal sizes, dtypes and bytes (so -0.0 differs from 0.0, unlike at::equal).
bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<size_t>(x.numel()) * x.element_size()) == 0;
}

ModelOptions fixture_model(const std::string& kind) {
  ModelOptions mo;
  mo.checkpoint = testutil::fixture(kind == "vit" ? "checkpoints/vit_bert.pt" : "checkpoints/rn_bert.pt");
  mo.vocab = testutil::fixture("vocab.txt");
  mo.vision_model = testutil::fixture(kind == "vit" ? "configs/ViT-Tiny-P32.json" : "configs/RN-Tiny.json");
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  return mo;
}

std::unique_ptr<ImageSource> open_tsv(const std::string& path) {
  ReadReport rep;
  return open_images(path, rep, /*strict=*/true);
}

// The float32 path encode_images used before: preprocess_image per image, then encode_pixels per
// batch of enc.batch_size() rows, or of the given sizes (the batches encode_images formed): the BLAS
// kernels' blocking, and so the last bits, may depend on a batch's size.
at::Tensor float_path_features(Encoder& enc, const ImageSource& src, const std::vector<int64_t>& sizes = {}) {
  const int r = enc.resolution();
  std::vector<at::Tensor> parts;
  const int64_t n = static_cast<int64_t>(src.size());
  for (int64_t s = 0, k = 0; s < n; ++k) {
    const int64_t e = std::min<int64_t>(n, s + (sizes.empty() ? enc.batch_size() : sizes.at(static_cast<size_t>(k))));
    at::Tensor px = at::empty({e - s, 3, r, r}, at::kFloat);
    for (int64_t i = s; i < e; ++i) {
      const std::vector<uint8_t> bytes = src.bytes(static_cast<size_t>(i));
      enc.preprocess_image(bytes.data(), bytes.size(), px[i - s].data_ptr<float>());
    }
    parts.push_back(enc.encode_pixels(px));
    s = e;
  }
  return at::cat(parts, 0);
}

}  // namespace

TEST_CASE("the normalisation table is ToTensor + Normalize of every byte value", "[indexing]") {
  const NormalizeTable t = normalize_table();
  Image im = blank_image(256, 1, PixelMode::RGB);
  for (int v = 0; v < 256; ++v)
    for (int c = 0; c < 3; ++c) im.pixels[static_cast<size_t>(3 * v + c)] = static_cast<uint8_t>(c == 1 ? 255 - v : v);
  std::vector<float> out(3 * 256);
  to_chw_normalized(im, out.data());
  for (int v = 0; v < 256; ++v) {
    CHECK(std::memcmp(&out[static_cast<size_t>(v)], &t[0][static_cast<size_t>(v)], 4) == 0);
    CHECK(std::memcmp(&out[static_cast<size_t>(256 + v)], &t[1][static_cast<size_t>(255 - v)], 4) == 0);
    CHECK(std::memcmp(&out[static_cast<size_t>(512 + v)], &t[2][static_cast<size_t>(v)], 4) == 0);
  }
  // The lookup on tensors, for every byte value in every channel.
  at::Tensor u8 = at::empty({2, 3, 16, 16}, at::kByte);
  auto* p = u8.data_ptr<uint8_t>();
  for (int64_t i = 0; i < u8.numel(); ++i) p[i] = static_cast<uint8_t>((i * 7) & 0xff);
  at::Tensor table = at::empty({3, 256}, at::kFloat);
  std::memcpy(table.data_ptr<float>(), t.data(), sizeof t);
  const at::Tensor f = normalize_pixels_u8(u8, table);
  REQUIRE(f.sizes() == u8.sizes());
  REQUIRE(f.scalar_type() == at::kFloat);
  const auto* q = f.data_ptr<float>();
  for (int64_t i = 0; i < u8.numel(); ++i) {
    const int64_t c = (i / 256) % 3;
    REQUIRE(std::memcmp(&q[i], &t[static_cast<size_t>(c)][p[i]], 4) == 0);
  }
  CHECK_THROWS_AS(normalize_pixels_u8(u8.to(at::kFloat), table), ModelError);
}

TEST_CASE("encode_images: 8-bit pixels normalised by the model give the float path's features bit for bit",
          "[indexing]") {
  QuietLog quiet;
  // Real images: the fixture's JPEGs and PNGs (grey, palette, RGBA, ...) and the demo split's.
  const std::string tsv = GENERATE(testutil::fixture("images.tsv"), testutil::source_dir() + "/data/shapes-zh/test_imgs.tsv");
  const std::string kind = GENERATE(std::string("vit"), std::string("rn"));
  const DecodeMode mode = GENERATE(DecodeMode::exact, DecodeMode::fast);
  CAPTURE(tsv, kind, decode_mode_name(mode));
  ModelOptions mo = fixture_model(kind);
  mo.towers = Towers::vision;
  RuntimeOptions ro;
  ro.batch_size = 16;  // several batches of the demo split, the last one short
  ImageOptions io;
  io.decode = mode;
  Encoder enc(mo, ro, io);
  const auto src = open_tsv(tsv);
  const size_t n = src->size();
  REQUIRE(n > 0);

  // Pixels: each image's 8-bit planar RGB, normalised, is preprocess_image's floats.
  const int r = enc.resolution();
  const size_t item = static_cast<size_t>(3 * r * r);
  for (size_t i = 0; i < std::min<size_t>(n, 24); ++i) {
    const std::vector<uint8_t> bytes = src->bytes(i);
    at::Tensor want = at::empty({1, 3, r, r}, at::kFloat);
    enc.preprocess_image(bytes.data(), bytes.size(), want.data_ptr<float>());
    at::Tensor u8 = at::empty({1, 3, r, r}, at::kByte);
    enc.preprocess_image_u8(bytes.data(), bytes.size(), u8.data_ptr<uint8_t>());
    std::vector<uint8_t> direct(item);
    preprocess_eval_bytes_u8(bytes.data(), bytes.size(), r, ImageOptions{mode}, direct.data());
    CHECK(std::memcmp(direct.data(), u8.data_ptr<uint8_t>(), item) == 0);
    CHECK(same_bytes(enc.normalize_pixels(u8), want));
  }

  // Features: the whole pipeline (threads, batches) against the float path.
  const at::Tensor want = float_path_features(enc, *src);
  for (int threads : {1, 3}) {
    const EncodedSet set = encode_images(enc, *src, threads, /*skip_errors=*/false);
    REQUIRE(set.ids.size() == n);
    for (size_t i = 0; i < n; ++i) CHECK(set.ids[i] == src->id(i));
    CHECK(same_bytes(set.features, want));
    const EncodeTiming& t = set.timing;
    CHECK(t.batches == static_cast<int64_t>((n + 15) / 16));
    CHECK(t.threads == std::min<int>(threads, static_cast<int>(n)));
    CHECK(t.encode_s > 0);
    CHECK(t.forward_s > 0);
    CHECK(t.first_forward_s > 0);
    CHECK(t.first_forward_s <= t.forward_s);
    CHECK(t.decode_cpu_s > 0);
    CHECK(t.resize_cpu_s > 0);
    CHECK(t.slab_wait_cpu_s == 0);  // no upload ring outside --decode device
    // The main thread's parts fit in the call.
    CHECK(t.wait_input_s + t.stage_s + t.forward_s + t.wait_device_s <= t.encode_s + 1e-3);
  }
}

TEST_CASE("squash_bicubic_u8: Pillow's bicubic squash as float32 matrix products, within rounding of the fixed-point one", "[indexing]") {
  // Photo-like RGB images of several sizes (down- and upscaling, one already R x R), in one call:
  // grouped by size inside, returned in input order.
  const int r = 32;
  std::vector<Image> ims;
  for (auto [w, h] : std::vector<std::pair<int, int>>{{100, 75}, {r, r}, {57, 91}, {100, 75}, {20, 13}}) {
    Image im = blank_image(w, h, PixelMode::RGB);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)
          im.pixels[static_cast<size_t>((y * w + x) * 3 + c)] =
              static_cast<uint8_t>((x * (3 + c) + y * 5 + ((x * y + c * 17) % 23) * 4 + (ims.size() * 40)) & 0xff);
    ims.push_back(std::move(im));
  }
  std::vector<at::Tensor> hwc;
  for (const Image& im : ims) {
    at::Tensor t = at::empty({im.height, im.width, 3}, at::kByte);
    std::memcpy(t.data_ptr<uint8_t>(), im.pixels.data(), im.pixels.size());
    hwc.push_back(t);
  }
  const at::Tensor out = squash_bicubic_u8(hwc, r, at::Device(at::kCPU));
  REQUIRE(out.sizes() == at::IntArrayRef({5, 3, r, r}));
  const size_t item = static_cast<size_t>(3 * r * r);
  for (size_t i = 0; i < ims.size(); ++i) {
    CAPTURE(i, ims[i].width, ims[i].height);
    std::vector<uint8_t> want(item);
    preprocess_eval_u8(ims[i], r, want.data());
    const uint8_t* got = out[static_cast<int64_t>(i)].contiguous().data_ptr<uint8_t>();
    int max_diff = 0;
    size_t differ = 0;
    for (size_t k = 0; k < item; ++k) {
      max_diff = std::max(max_diff, std::abs(int(got[k]) - int(want[k])));
      differ += got[k] != want[k];
    }
    if (ims[i].width == r && ims[i].height == r) CHECK(max_diff == 0);  // copied as it is
    else CHECK(max_diff <= 1);                                           // float32 sums of Pillow's weights
    CHECK(differ <= item / 200);  // a tie tipped by float32 rounding is rare: at most 0.5 % of the bytes
  }
  // Rows 0 and 3 are images of the same size resized in one group: each its own.
  CHECK_FALSE(at::equal(out[0], out[3]));
  CHECK_THROWS_AS(squash_bicubic_u8({at::zeros({4, 4}, at::kByte)}, r, at::Device(at::kCPU)), ModelError);
}

TEST_CASE("UploadRing: items of a batch share a slab; a slab passes on only after its upload", "[indexing]") {
  UploadRing ring(2, 64, /*pinned=*/false);
  ring.wait_allocated();  // before that, a reservation in a slab still to come is refused (nullptr)
  size_t off = 99;
  uint8_t* a = ring.reserve(0, 10, off);
  REQUIRE(a);
  CHECK(off == 0);
  std::memset(a, 1, 10);
  uint8_t* b = ring.reserve(0, 10, off);
  REQUIRE(b);
  CHECK(off == 16);  // 16-byte aligned
  std::memset(b, 2, 10);
  CHECK(ring.reserve(0, 40, off) == nullptr);  // 32 + 40 > 64: the caller stages this one elsewhere
  uint8_t* c = ring.reserve(0, 32, off);
  REQUIRE(c);
  CHECK(off == 32);
  std::memset(c, 3, 32);
  uint8_t* d = ring.reserve(1, 8, off);  // batch 1: the other slab
  REQUIRE(d);
  CHECK(off == 0);
  std::memset(d, 4, 8);
  const at::Tensor up0 = ring.upload(0, at::Device(at::kCPU));
  REQUIRE(up0.numel() == 64);
  const uint8_t* p = up0.data_ptr<uint8_t>();
  CHECK((p[0] == 1 && p[9] == 1 && p[16] == 2 && p[25] == 2 && p[32] == 3 && p[63] == 3));
  // Batch 2 takes slab 0 (uploaded): at once. Batch 3 needs slab 1, whose batch 1 is not uploaded yet.
  REQUIRE(ring.reserve(2, 4, off));
  std::atomic<bool> got{false};
  size_t off3 = 99;
  std::thread t([&] {
    uint8_t* e = ring.reserve(3, 4, off3);
    got = e != nullptr;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(got.load());
  const at::Tensor up1 = ring.upload(1, at::Device(at::kCPU));
  t.join();
  CHECK(got.load());
  CHECK(off3 == 0);
  REQUIRE(up1.numel() == 8);
  CHECK(up1[7].item<int>() == 4);  // the upload is a copy: batch 3 writing into the slab does not change it
  CHECK_FALSE(ring.upload(2, at::Device(at::kCPU)).numel() == 0);
  // A batch without reservations uploads nothing; close() releases a waiting worker with nullptr.
  ring.upload(3, at::Device(at::kCPU));
  REQUIRE(ring.reserve(4, 4, off));  // slab 0
  std::atomic<int> released{0};
  std::thread w([&] { released = ring.reserve(6, 4, off3) == nullptr ? 1 : 2; });  // slab 0 holds batch 4
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(released.load() == 0);
  ring.close();
  w.join();
  CHECK(released.load() == 1);
  CHECK_FALSE(ring.upload(5, at::Device(at::kCPU)).defined());
}

TEST_CASE("encode_images --decode device: the squash on the model's device stays within rounding of exact",
          "[indexing]") {
  QuietLog quiet;
  // The fixture's JPEGs and PNGs (grey, palette, RGBA: the modes that keep the CPU path) and the demo split's.
  const std::string tsv = GENERATE(testutil::fixture("images.tsv"), testutil::source_dir() + "/data/shapes-zh/test_imgs.tsv");
  CAPTURE(tsv);
  ModelOptions mo = fixture_model("vit");
  mo.towers = Towers::vision;
  RuntimeOptions ro;
  ro.batch_size = 16;
  ImageOptions io;
  io.decode = DecodeMode::device;
  Encoder enc(mo, ro, io);
  Encoder exact(mo, ro);
  const auto src = open_tsv(tsv);
  const size_t n = src->size();
  const EncodedSet want = encode_images(exact, *src, 2, false);
  for (int threads : {1, 3}) {
    const EncodedSet set = encode_images(enc, *src, threads, false);
    REQUIRE(set.ids == want.ids);
    const at::Tensor cos = (set.features * want.features).sum(1);
    CHECK(cos.min().item<double>() > 0.9999);
    CHECK(set.timing.batches == static_cast<int64_t>((n + 15) / 16));
    // The waits for a free slab are told apart from the copy they interrupt: neither is negative.
    CHECK(set.timing.slab_wait_cpu_s >= 0);
    CHECK(set.timing.resize_cpu_s >= 0);
    CHECK(set.timing.slab_wait_cpu_s <= set.timing.encode_s * threads + 1e-3);
  }
  // Grey, palette and RGBA images: device_resize_input gives RGB (L as is, others already R x R).
  for (size_t i = 0; i < n; ++i) {
    const std::vector<uint8_t> bytes = src->bytes(i);
    const Image im = decode_image(bytes.data(), bytes.size());
    const Image in = device_resize_input(im, enc.resolution());
    CHECK(in.mode == PixelMode::RGB);
    if (im.mode == PixelMode::RGB || im.mode == PixelMode::L) {
      CHECK(in.width == im.width);
      CHECK(in.height == im.height);
    } else {
      CHECK(in.width == enc.resolution());
      CHECK(in.height == enc.resolution());
    }
  }
  CHECK(std::string(enc.preprocess_meta().value("decode", "")) == "device");
}

TEST_CASE("encode_images: the rows `only`, and skipped images, keep the float path's features", "[indexing]") {
  QuietLog quiet;
  ModelOptions mo = fixture_model("vit");
  mo.towers = Towers::vision;
  RuntimeOptions ro;
  ro.batch_size = 3;
  Encoder enc(mo, ro);
  testutil::TempDir dir("indexing");
  // The fixture's images with a broken one in the middle.
  std::ifstream in(testutil::fixture("images.tsv"));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  REQUIRE(lines.size() >= 4);
  lines.insert(lines.begin() + 2, "424242\tbm90IGFuIGltYWdl");  // base64 of "not an image"
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  const std::string path = dir.write("mixed.tsv", text);
  ReadReport rep;
  const auto src = open_images(path, rep, /*strict=*/false);
  const EncodedSet set = encode_images(enc, *src, 2, /*skip_errors=*/true);
  REQUIRE(set.skipped.size() == 1);
  CHECK(set.skipped[0].first == 424242);
  REQUIRE(set.ids.size() == src->size() - 1);
  const auto good = open_tsv(testutil::fixture("images.tsv"));
  // Batches of three rows of the input: the first lost its third row (the broken one).
  std::vector<int64_t> sizes{2};
  for (int64_t left = static_cast<int64_t>(good->size()) - 2; left > 0; left -= 3) sizes.push_back(std::min<int64_t>(3, left));
  CHECK(same_bytes(set.features, float_path_features(enc, *good, sizes)));

  const EncodedSet some = encode_images(enc, *good, 2, false, {4, 1});
  REQUIRE(some.ids == std::vector<int64_t>{good->id(4), good->id(1)});
  const at::Tensor all = float_path_features(enc, *good);
  // One batch of two rows against rows of a batch of three: the same values on this CPU build
  // only up to the BLAS kernels' blocking, so compare by cosine here.
  const at::Tensor cos = (some.features * at::stack({all[4], all[1]})).sum(1);
  CHECK(cos.min().item<double>() > 1 - 1e-6);
}

TEST_CASE("encode_texts: trimmed padding columns and length order give the same features, in input order",
          "[indexing]") {
  QuietLog quiet;
  ModelOptions mo = fixture_model("vit");
  mo.towers = Towers::text;
  RuntimeOptions ro;
  ro.batch_size = 32;
  Encoder enc(mo, ro);
  ReadReport rep;
  std::vector<TextRecord> base = read_texts(testutil::source_dir() + "/data/shapes-zh/test_texts.jsonl", rep, true);
  REQUIRE(base.size() > 100);
  // Over 8192 texts: two chunks of the tokeniser. Lengths vary (short and long captions, and a
  // text longer than the context, which keeps every column).
  std::vector<TextRecord> texts;
  for (int k = 0; texts.size() <= 8192 + 500; ++k)
    for (const auto& t : base) {
      TextRecord r = t;
      r.text_id = static_cast<int64_t>(texts.size()) + 1;
      if (k % 3 == 1) r.text = r.text.substr(0, std::min<size_t>(r.text.size(), 3 * (1 + texts.size() % 5)));
      if (texts.size() % 997 == 0) r.text = std::string(200, 'a') + " " + r.text;
      texts.push_back(std::move(r));
    }

  // The CPU default: untrimmed, bit-identical to encoding each batch at full context length.
  const EncodedSet plain = encode_texts(enc, texts);
  std::vector<std::string> strings;
  for (const auto& t : texts) strings.push_back(t.text);
  REQUIRE(same_bytes(plain.features, enc.encode_texts(strings, true)));
  CHECK(plain.timing.columns == 1.0);
  CHECK_FALSE(plain.timing.trim);
  REQUIRE(plain.ids.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) REQUIRE(plain.ids[i] == texts[i].text_id);

  TextEncodeOptions opt;
  opt.trim = true;
  const EncodedSet trimmed = encode_texts(enc, texts, opt);
  REQUIRE(trimmed.ids == plain.ids);
  REQUIRE(trimmed.features.sizes() == plain.features.sizes());
  CHECK(trimmed.timing.trim);
  CHECK(trimmed.timing.columns < 0.8);  // most captions are far shorter than 52 tokens
  // Short texts go in larger batches, each within the tokens of batch_size texts at full length.
  CHECK(trimmed.timing.batches < plain.timing.batches);
  // Every batch within the budget: the columns computed (columns x texts x context length tokens) fit
  // in `batches` budgets of 32 x context length.
  CHECK(static_cast<double>(trimmed.timing.batches) * 32 >= trimmed.timing.columns * static_cast<double>(texts.size()) - 1e-6);
  // Row by row (a wrong order would pair different texts: cosines far below 1).
  const at::Tensor cos = (trimmed.features * plain.features).sum(1);
  CHECK(cos.min().item<double>() > 1 - 1e-5);
  CHECK((trimmed.features - plain.features).abs().max().item<double>() < 1e-4);

  opt.trim = false;
  CHECK(same_bytes(encode_texts(enc, texts, opt).features, plain.features));
  CHECK(encode_texts(enc, {}, opt).features.size(0) == 0);
}

TEST_CASE("the weights hash computed in the background is the synchronous one; its errors propagate",
          "[indexing]") {
  QuietLog quiet;
  const ModelOptions mo = fixture_model("vit");
  RuntimeOptions ro;
  std::string want;
  {
    Encoder sync(mo, ro);
    want = sync.weights_hash();
    CHECK(sync.weights_hash_seconds() > 0);
  }
  {
    Encoder enc(mo, ro);
    enc.start_weights_hash();
    enc.start_weights_hash();  // once
    std::vector<std::string> got(4);
    std::vector<std::thread> ts;
    for (size_t i = 0; i < got.size(); ++i) ts.emplace_back([&, i] { got[i] = enc.weights_hash(); });
    for (auto& t : ts) t.join();
    for (const auto& g : got) CHECK(g == want);
    enc.start_weights_hash();  // known: nothing to do
    CHECK(enc.weights_hash() == want);
  }
  {
    // Started from the constructor, while the model is built from the same mapped checkpoint, and
    // for a one-tower load (the hash covers both towers whatever is loaded).
    for (Towers t : {Towers::both, Towers::text, Towers::vision}) {
      ModelOptions m = mo;
      m.towers = t;
      Encoder enc(m, ro, {}, /*hash_in_background=*/true);
      CHECK(enc.weights_hash() == want);
    }
  }
  {
    Encoder enc(mo, ro);
    enc.start_weights_hash();
  }  // destroyed while (or after) hashing: waits for the thread
  {
    testutil::TempDir dir("hash");
    ModelOptions m = mo;
    m.checkpoint = dir / "r.pt";
    fs::copy_file(mo.checkpoint, m.checkpoint);
    Encoder enc(m, ro);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a later modification time
    {
      std::fstream f(m.checkpoint, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(m.checkpoint) / 2));
      f.write("XXXXXXXX", 8);
    }
    enc.start_weights_hash();
    CHECK_THROWS_AS(enc.weights_hash(), IoError);  // the thread's error, rethrown here
    CHECK_THROWS_AS(enc.weights_hash(), IoError);
  }
}
