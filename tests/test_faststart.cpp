// Fast start: checkpoint tensors used in place from the mapped file, one-tower models, and what
// happens when the file under a map is truncated or rewritten. Features are compared bit for bit
// with the full model loaded by copy, as before.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/io/checkpoint.h"
#include "clip/model/loader.h"
#include "clip/model/model.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/runtime.h"
#include "fixture_model.h"
#include "util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace clip;
namespace fs = std::filesystem;

namespace {

at::Tensor fixture_token_ids() {
  std::vector<at::Tensor> rows;
  std::ifstream f(testutil::fixture("expected/tokens.jsonl"));
  std::string line;
  while (std::getline(f, line))
    if (!line.empty())
      rows.push_back(at::tensor(nlohmann::json::parse(line)["input_ids_preprocessed"].get<std::vector<int64_t>>(), at::kLong));
  REQUIRE(!rows.empty());
  return at::stack(rows);
}

at::Tensor fixture_pixel_batch() {
  std::vector<at::Tensor> px;
  std::ifstream f(testutil::fixture("expected/pixels.jsonl"));
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) px.push_back(testutil::fixture_pixels(nlohmann::json::parse(line)["image_id"].get<int64_t>()));
  REQUIRE(!px.empty());
  return at::stack(px);
}

std::string ckpt_path(const std::string& kind) {
  return testutil::fixture("checkpoints/" + std::string(kind == "vit" ? "vit_bert.pt" : "rn_bert.pt"));
}

ModelSource source_of(const std::string& path, const std::string& kind) {
  ModelSource src;
  src.config = testutil::fixture_config(kind);
  src.checkpoint = load_checkpoint(path);
  return src;
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

}  // namespace

TEST_CASE("one-tower models and mapped weights give the full model's features bit for bit", "[faststart]") {
  const at::Tensor ids = fixture_token_ids(), px = fixture_pixel_batch();
  for (const std::string kind : {"vit", "rn"}) {
    INFO(kind);
    ModelSource src = source_of(ckpt_path(kind), kind);
    // Today's path: every tower, parameters filled, then copied from the checkpoint.
    ClipModel full(src.config);
    load_weights(full, src.checkpoint->state_dict, true);
    full->eval();
    at::NoGradGuard ng;
    const at::Tensor want_t = full->encode_text(ids), want_i = full->encode_image(px);

    ClipModel text = build_model(src, Towers::text, WeightUse::share);
    ClipModel vision = build_model(src, Towers::vision, WeightUse::share);
    ClipModel both = build_model(src, Towers::both, WeightUse::share);
    for (ClipModel* m : {&text, &vision, &both}) (*m)->eval();
    CHECK(same_bits(text->encode_text(ids), want_t));
    CHECK(same_bits(vision->encode_image(px), want_i));
    CHECK(same_bits(both->encode_text(ids), want_t));
    CHECK(same_bits(both->encode_image(px), want_i));

    // Only the asked-for tower exists.
    auto names = [](ClipModel& m) {
      std::vector<std::string> v;
      for (auto& [n, t] : model_state(m)) v.push_back(n);
      return v;
    };
    for (const auto& n : names(text)) CHECK(n.rfind("visual.", 0) != 0);
    for (const auto& n : names(vision)) CHECK((n.rfind("bert.", 0) != 0 && n != "text_projection"));
    CHECK(names(both).size() == names(text).size() + names(vision).size() - 1);  // logit_scale in both
    CHECK_THROWS_AS(text->encode_image(px), UsageError);
    CHECK_THROWS_AS(vision->encode_text(ids), UsageError);

    // Shared weights are the checkpoint's bytes (no copy); the copy path makes its own.
    const TensorData& w = src.checkpoint->state_dict.at("bert.embeddings.word_embeddings.weight");
    auto param = [](ClipModel& m, const std::string& n) {
      for (auto& [k, t] : model_state(m))
        if (k == n) return t;
      FAIL("no parameter " << n);
      return at::Tensor();
    };
    CHECK(param(text, "bert.embeddings.word_embeddings.weight").data_ptr() == static_cast<const void*>(w.data));
    CHECK(param(full, "bert.embeddings.word_embeddings.weight").data_ptr() != static_cast<const void*>(w.data));

    // The store's weights_hash keeps its meaning: computed from the checkpoint, it equals the full
    // model's, so one-tower jobs write the same hash as before.
    CHECK(weights_hash(src.config, src.checkpoint->state_dict) == weights_hash(full));
  }
}

TEST_CASE("writes to shared weights stay private to the process", "[faststart]") {
  testutil::TempDir dir("faststart");
  const std::string p = dir / "m.pt";
  fs::copy_file(ckpt_path("vit"), p);
  const std::string before = read_file(p);
  ModelSource src = source_of(p, "vit");
  ClipModel m = build_model(src, Towers::text, WeightUse::share);
  {
    at::NoGradGuard ng;
    for (auto& [n, t] : model_state(m)) t.add_(1.0);  // as an optimizer step would
  }
  CHECK(read_file(p) == before);
  src.checkpoint->check_intact();  // a write to our own copy-on-write pages is not a change of the file
}

TEST_CASE("a checkpoint truncated or rewritten under its map gives IoError, not a crash", "[faststart]") {
  testutil::TempDir dir("faststart");
  const at::Tensor ids = fixture_token_ids();
  ModelOptions mo;
  mo.vocab = testutil::fixture("vocab.txt");
  mo.vision_model = testutil::fixture("configs/ViT-Tiny-P32.json");
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  mo.towers = Towers::text;
  RuntimeOptions ro;

  SECTION("truncated after the weights were mapped") {
    mo.checkpoint = dir / "t.pt";
    fs::copy_file(ckpt_path("vit"), mo.checkpoint);
    Encoder enc(mo, ro);
    at::Tensor ok = enc.encode_ids(ids);
    CHECK(ok.size(0) == ids.size(0));
    REQUIRE(::truncate(mo.checkpoint.c_str(), 4096) == 0);  // the weights' pages are gone
    try {
      enc.encode_ids(ids);  // reads the vanished pages: zeros, then the check throws
      FAIL("no error after truncation");
    } catch (const IoError& e) {
      CHECK(std::string(e.what()).find("truncated or rewritten while in use") != std::string::npos);
      CHECK(std::string(e.what()).find(mo.checkpoint) != std::string::npos);
    }
  }
  SECTION("rewritten in place with other bytes of the same size") {
    mo.checkpoint = dir / "r.pt";
    fs::copy_file(ckpt_path("vit"), mo.checkpoint);
    Encoder enc(mo, ro);
    enc.encode_ids(ids);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a later modification time
    {
      std::fstream f(mo.checkpoint, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(mo.checkpoint) / 2));
      f.write("XXXXXXXX", 8);
    }
    CHECK_THROWS_AS(enc.encode_ids(ids), IoError);
    CHECK_THROWS_AS(enc.weights_hash(), IoError);
  }
  SECTION("truncated between opening and loading") {
    const std::string p = dir / "l.pt";
    fs::copy_file(ckpt_path("vit"), p);
    ModelSource src;
    src.config = testutil::fixture_config("vit");
    src.checkpoint = load_checkpoint(p);
    REQUIRE(::truncate(p.c_str(), 100) == 0);
    CHECK_THROWS_AS(build_model(src, Towers::both, WeightUse::share), IoError);
    CHECK_THROWS_AS(build_model(src, Towers::text, WeightUse::copy), IoError);
  }
}

TEST_CASE("a one-tower encoder records the same weights hash as the full one", "[faststart]") {
  ModelOptions mo;
  mo.checkpoint = ckpt_path("vit");
  mo.vocab = testutil::fixture("vocab.txt");
  mo.vision_model = testutil::fixture("configs/ViT-Tiny-P32.json");
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  RuntimeOptions ro;
  Encoder full(mo, ro);
  mo.towers = Towers::text;
  Encoder text(mo, ro);
  mo.towers = Towers::vision;
  Encoder vision(mo, ro);
  CHECK(text.towers() == Towers::text);
  CHECK(text.weights_hash() == full.weights_hash());
  CHECK(vision.weights_hash() == full.weights_hash());
  const at::Tensor ids = fixture_token_ids();
  CHECK(same_bits(text.encode_ids(ids), full.encode_ids(ids)));
  const at::Tensor px = fixture_pixel_batch();
  CHECK(same_bits(vision.encode_pixels(px), full.encode_pixels(px)));
}

TEST_CASE("the weights hash comes from the digest cache for unchanged files, and only for them", "[faststart]") {
  testutil::TempDir dir("hashcache");
  const std::string cache = dir / "cache";
  ::setenv("CLIP_CACHE_DIR", cache.c_str(), 1);
  ModelOptions mo;
  mo.checkpoint = dir / "c.pt";
  mo.vocab = testutil::fixture("vocab.txt");
  mo.vision_model = testutil::fixture("configs/ViT-Tiny-P32.json");
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  mo.towers = Towers::text;
  RuntimeOptions ro;
  fs::copy_file(ckpt_path("vit"), mo.checkpoint);
  auto hash_of = [&](bool* cached = nullptr) {
    Encoder e(mo, ro);
    const std::string h = e.weights_hash();
    if (cached) *cached = e.weights_hash_cached();
    return h;
  };
  bool cached = true;
  const std::string want = hash_of(&cached);  // the tests run with the cache off (tests/CMakeLists.txt)
  CHECK_FALSE(cached);
  ::unsetenv("CLIP_NO_CACHE");
  // A file written less than 2 s ago is not stored (a coarse timestamp could miss a later write).
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  CHECK_FALSE(fs::exists(cache + "/digests"));
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  CHECK(hash_of(&cached) == want);  // computed, then stored
  CHECK_FALSE(cached);
  REQUIRE(fs::exists(cache + "/digests"));
  CHECK(std::distance(fs::directory_iterator(cache + "/digests"), fs::directory_iterator()) == 1);
  CHECK(hash_of(&cached) == want);  // found
  CHECK(cached);

  // Another config of the same file is another entry (the digest reads names, shapes and values only).
  nlohmann::json text = nlohmann::json::parse(read_file(testutil::fixture("configs/RBT-Tiny-H64-L2.json")));
  text["text_hidden_act"] = "gelu_new";
  mo.text_model = dir / "text.json";
  write_file_atomic(mo.text_model, text.dump());
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  // CLIP_NO_CACHE turns it off.
  ::setenv("CLIP_NO_CACHE", "1", 1);
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  ::unsetenv("CLIP_NO_CACHE");
  // A copy (another inode) misses.
  const std::string original = mo.checkpoint;
  mo.checkpoint = dir / "copy.pt";
  fs::copy_file(original, mo.checkpoint);
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  mo.checkpoint = original;
  // A damaged entry, or a cache folder that cannot be written, is only a miss.
  for (const auto& entry : fs::directory_iterator(cache + "/digests")) write_file_atomic(entry.path(), "\n\n");
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  ::setenv("CLIP_CACHE_DIR", "/proc/no-such-folder", 1);
  CHECK(hash_of(&cached) == want);
  CHECK_FALSE(cached);
  ::setenv("CLIP_CACHE_DIR", cache.c_str(), 1);
  CHECK(hash_of(&cached) == want);  // stored again by the run that found its entry damaged
  CHECK(cached);
  // A file changed in place (other weights, same size) misses and gets its own digest.
  {
    std::fstream f(mo.checkpoint, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(mo.checkpoint) / 2));
    f.write("\x01\x02\x03\x04", 4);
  }
  CHECK(hash_of(&cached) != want);
  CHECK_FALSE(cached);
  ::setenv("CLIP_NO_CACHE", "1", 1);
  ::unsetenv("CLIP_CACHE_DIR");
}
