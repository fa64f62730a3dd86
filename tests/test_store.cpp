#include <c10/util/Half.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <unistd.h>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/retrieval/store.h"
#include "util.h"

using namespace clip;
using Catch::Matchers::Contains;

namespace {

std::vector<float> random_rows(int64_t n, int64_t dim, unsigned seed, bool normalize = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n * dim);
  for (auto& x : v) x = nd(rng);
  if (normalize)
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t j = 0; j < dim; ++j) s += double(v[i * dim + j]) * v[i * dim + j];
      for (int64_t j = 0; j < dim; ++j) v[i * dim + j] = float(v[i * dim + j] / std::sqrt(s));
    }
  return v;
}

StoreMeta test_meta(const std::string& kind = "image") {
  StoreMeta m;
  m.kind = kind;
  m.model_name = "ViT-B-16@RoBERTa-wwm-ext-base-chinese";
  m.weights_hash = "sha256:0123abcd";
  m.preprocess = {{"resolution", 224}, {"mean", {0.48145466, 0.4578275, 0.40821073}}, {"interpolation", "bicubic"},
                  {"context_length", 52}};
  m.sources.push_back({"/data/test_imgs.tsv", 12345, 1700000000});
  m.extra = {{"tool", "test"}};
  return m;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), bytes.size());
}

std::string expect_data_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const DataError& e) {
    return e.what();
  }
  FAIL("expected a DataError");
  return {};
}

float half_round(float x) { return static_cast<float>(c10::Half(x)); }

}  // namespace

TEST_CASE("store round trip keeps ids, values and metadata (f32 and f16)", "[store]") {
  testutil::TempDir dir{"store"};
  const int64_t n = 257, dim = 48;
  auto data = random_rows(n, dim, 1);
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = (i * 7919) % 1000003 - 500;  // unsorted, some negative
  const StoreMeta meta = test_meta();

  write_store(dir / "a.clipfeat", ids, data.data(), dim, StoreDtype::f32, meta);
  FeatureSet fs = open_store(dir / "a.clipfeat");
  REQUIRE(fs.format == "store");
  REQUIRE(fs.ids == ids);
  REQUIRE(fs.dim == dim);
  REQUIRE(fs.dtype == StoreDtype::f32);
  REQUIRE(fs.meta.kind == "image");
  REQUIRE(fs.meta.model_name == meta.model_name);
  REQUIRE(fs.meta.weights_hash == meta.weights_hash);
  REQUIRE(fs.meta.preprocess == meta.preprocess);
  REQUIRE(fs.meta.sources.size() == 1);
  REQUIRE(fs.meta.sources[0].path == "/data/test_imgs.tsv");
  REQUIRE(fs.meta.sources[0].size == 12345);
  REQUIRE(fs.meta.sources[0].mtime == 1700000000);
  REQUIRE(fs.meta.extra["tool"] == "test");
  REQUIRE(fs.meta.normalized);
  REQUIRE(reinterpret_cast<uintptr_t>(fs.data) % 64 == 0);  // the matrix is 64-byte aligned
  REQUIRE(std::equal(data.begin(), data.end(), fs.f32()));
  REQUIRE(fs.at(3, 5) == data[3 * dim + 5]);
  REQUIRE(fs.row(n - 1) == std::vector<float>(data.end() - dim, data.end()));
  REQUIRE(fs.find(ids[100]) == 100);
  REQUIRE(fs.find(123456789) == -1);
  REQUIRE(is_store_file(dir / "a.clipfeat"));

  StoreMeta unnorm = meta;
  unnorm.normalized = false;
  write_store(dir / "h.clipfeat", ids, data.data(), dim, StoreDtype::f16, unnorm);
  FeatureSet h = open_store(dir / "h.clipfeat");
  REQUIRE(h.dtype == StoreDtype::f16);
  REQUIRE(!h.meta.normalized);
  REQUIRE(h.ids == ids);
  std::vector<float> back(n * dim);
  h.copy_rows(0, n, back.data());
  for (int64_t i = 0; i < n * dim; ++i) REQUIRE(back[i] == half_round(data[i]));
  // f16 file: header + metadata + ids + 2 bytes per value, no more.
  MappedFile mf(dir / "h.clipfeat");
  uint64_t data_offset;
  std::memcpy(&data_offset, mf.data() + 48, 8);
  REQUIRE(data_offset % 64 == 0);
  REQUIRE(data_offset >= 64 + 8 * n);
  REQUIRE(mf.size() == data_offset + n * dim * 2);

  // read_features sniffs the magic; a FeatureSet writes back unchanged (dtype and metadata kept).
  FeatureSet again = read_features(dir / "h.clipfeat");
  REQUIRE(again.format == "store");
  write_store(dir / "h2.clipfeat", again);
  REQUIRE(read_file(dir / "h2.clipfeat") == read_file(dir / "h.clipfeat"));

  // An empty store is valid.
  write_store(dir / "empty.clipfeat", {}, nullptr, dim, StoreDtype::f32, meta);
  REQUIRE(open_store(dir / "empty.clipfeat").size() == 0);
}

TEST_CASE("store writer refuses duplicate ids, bad values and bad dims", "[store]") {
  testutil::TempDir dir{"store"};
  auto data = random_rows(4, 8, 2);
  auto msg = expect_data_error([&] { write_store(dir / "d.clipfeat", {1, 2, 1, 3}, data.data(), 8, StoreDtype::f32, test_meta()); });
  REQUIRE_THAT(msg, Contains("id 1 occurs twice") && Contains("rows 0 and 2"));
  REQUIRE(!file_exists(dir / "d.clipfeat"));  // nothing left behind

  data[9] = std::nanf("");
  msg = expect_data_error([&] { write_store(dir / "d.clipfeat", {1, 2, 3, 4}, data.data(), 8, StoreDtype::f32, test_meta()); });
  REQUIRE_THAT(msg, Contains("id 2") && Contains("NaN"));
  data[9] = 1e6f;  // fine in f32, overflows f16
  write_store(dir / "d.clipfeat", {1, 2, 3, 4}, data.data(), 8, StoreDtype::f32, test_meta());
  msg = expect_data_error([&] { write_store(dir / "e.clipfeat", {1, 2, 3, 4}, data.data(), 8, StoreDtype::f16, test_meta()); });
  REQUIRE_THAT(msg, Contains("float16"));
  REQUIRE_THROWS_AS(write_store(dir / "e.clipfeat", {1}, data.data(), 0, StoreDtype::f32, test_meta()), DataError);
  REQUIRE_THROWS_AS(parse_store_dtype("bf16"), UsageError);
  REQUIRE(parse_store_dtype("fp16") == StoreDtype::f16);
}

TEST_CASE("truncated, foreign and corrupted stores are refused with a clear message", "[store]") {
  testutil::TempDir dir{"store"};
  const int64_t n = 50, dim = 16;
  auto data = random_rows(n, dim, 3);
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i + 1;
  const std::string good = dir / "good.clipfeat";
  write_store(good, ids, data.data(), dim, StoreDtype::f32, test_meta());
  const std::string bytes = read_file(good);

  const std::string trunc = dir / "trunc.clipfeat";
  write_bytes(trunc, bytes.substr(0, bytes.size() - 100));
  auto msg = expect_data_error([&] { open_store(trunc); });
  REQUIRE_THAT(msg, Contains(trunc) && Contains("truncated") && Contains("clip-index"));
  write_bytes(trunc, bytes.substr(0, 40));
  REQUIRE_THAT(expect_data_error([&] { open_store(trunc); }), Contains("truncated") && Contains(trunc));

  const std::string longer = dir / "long.clipfeat";
  write_bytes(longer, bytes + "xx");
  REQUIRE_THAT(expect_data_error([&] { open_store(longer); }), Contains("2 unexpected bytes") && Contains("clip-index"));

  const std::string foreign = dir / "foreign.bin";
  write_bytes(foreign, "PK\x03\x04 this is a zip file, not features");
  msg = expect_data_error([&] { open_store(foreign); });
  REQUIRE_THAT(msg, Contains(foreign) && Contains("not a feature store"));
  write_bytes(foreign, "");
  REQUIRE_THAT(expect_data_error([&] { open_store(foreign); }), Contains("not a feature store"));

  auto patched = [&](size_t offset, uint32_t value) {
    std::string b = bytes;
    std::memcpy(&b[offset], &value, 4);
    const std::string p = dir / "patched.clipfeat";
    write_bytes(p, b);
    return expect_data_error([&] { open_store(p); });
  };
  REQUIRE_THAT(patched(8, 2), Contains("format version 2") && Contains("clip-index"));
  REQUIRE_THAT(patched(24, dim + 1), Contains("inconsistent header"));  // dim no longer matches the offsets
  REQUIRE_THAT(patched(24, 0), Contains("dim 0"));
  REQUIRE_THAT(patched(28, 7), Contains("unknown dtype"));
  REQUIRE_THAT(patched(32, 0x10), Contains("unknown flag"));
  {
    std::string b = bytes;
    b[64] = '[';  // the metadata block starts at byte 64 with '{'
    write_bytes(dir / "meta.clipfeat", b);
    REQUIRE_THAT(expect_data_error([&] { open_store(dir / "meta.clipfeat"); }), Contains("metadata"));
  }
  REQUIRE_THROWS_AS(open_store(dir / "missing.clipfeat"), IoError);
  REQUIRE(!is_store_file(foreign));
}

TEST_CASE("append adds rows, refuses duplicate ids unless replacing", "[store]") {
  testutil::TempDir dir{"store"};
  const int64_t dim = 12;
  auto a = random_rows(5, dim, 4), b = random_rows(3, dim, 5);
  const std::string p = dir / "s.clipfeat";
  write_store(p, {10, 11, 12, 13, 14}, a.data(), dim, StoreDtype::f32, test_meta());

  append_store(p, {20, 21, 22}, b.data(), dim, {false, source_file_info(p)});
  FeatureSet fs = open_store(p);
  REQUIRE(fs.ids == std::vector<int64_t>{10, 11, 12, 13, 14, 20, 21, 22});
  REQUIRE(fs.row(6) == std::vector<float>(b.begin() + dim, b.begin() + 2 * dim));
  REQUIRE(fs.row(2) == std::vector<float>(a.begin() + 2 * dim, a.begin() + 3 * dim));
  REQUIRE(fs.meta.sources.size() == 2);  // the new source is listed after the original one
  REQUIRE(fs.meta.model_name == test_meta().model_name);

  auto msg = expect_data_error([&] { append_store(p, {30, 12}, b.data(), dim); });
  REQUIRE_THAT(msg, Contains("id 12 is already in the store") && Contains("--replace"));
  REQUIRE(open_store(p).size() == 8);  // unchanged
  REQUIRE_THAT(expect_data_error([&] { append_store(p, {40, 40}, b.data(), dim); }), Contains("occurs twice"));
  REQUIRE_THAT(expect_data_error([&] { append_store(p, {41}, b.data(), dim - 1); }), Contains("dim 11"));

  AppendOptions rep;
  rep.replace = true;
  append_store(p, {30, 12}, b.data(), dim, rep);
  fs = open_store(p);
  REQUIRE(fs.ids == std::vector<int64_t>{10, 11, 12, 13, 14, 20, 21, 22, 30});
  REQUIRE(fs.row(2) == std::vector<float>(b.begin() + dim, b.begin() + 2 * dim));  // replaced in place
  REQUIRE(fs.row(8) == std::vector<float>(b.begin(), b.begin() + dim));

  // Appending to an f16 store converts the new rows.
  const std::string h = dir / "h.clipfeat";
  write_store(h, {1}, a.data(), dim, StoreDtype::f16, test_meta());
  append_store(h, {2}, b.data(), dim);
  FeatureSet hs = open_store(h);
  REQUIRE(hs.dtype == StoreDtype::f16);
  REQUIRE(hs.at(1, 3) == half_round(b[3]));
}

TEST_CASE("merge joins two stores of one model", "[store]") {
  testutil::TempDir dir{"store"};
  const int64_t dim = 8;
  auto a = random_rows(3, dim, 6), b = random_rows(3, dim, 7);
  const std::string pa = dir / "a.clipfeat", pb = dir / "b.clipfeat", out = dir / "m.clipfeat";
  StoreMeta mb = test_meta();
  mb.sources = {{"/data/other.tsv", 1, 2}};
  write_store(pa, {1, 2, 3}, a.data(), dim, StoreDtype::f32, test_meta());
  write_store(pb, {4, 5, 6}, b.data(), dim, StoreDtype::f32, mb);

  merge_stores(pa, pb, out);
  FeatureSet m = open_store(out);
  REQUIRE(m.ids == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
  REQUIRE(m.row(4) == std::vector<float>(b.begin() + dim, b.begin() + 2 * dim));
  REQUIRE(m.meta.sources.size() == 2);
  REQUIRE(m.meta.sources[1].path == "/data/other.tsv");

  StoreDtype f16 = StoreDtype::f16;
  MergeOptions to16;
  to16.dtype = &f16;
  merge_stores(pa, pb, dir / "m16.clipfeat", to16);
  REQUIRE(open_store(dir / "m16.clipfeat").at(5, 2) == half_round(b[2 * dim + 2]));

  // Duplicate ids: refused, or the second store's row wins with replace.
  write_store(pb, {3, 5, 6}, b.data(), dim, StoreDtype::f32, mb);
  REQUIRE_THAT(expect_data_error([&] { merge_stores(pa, pb, out); }), Contains("id 3 is in both") && Contains("--replace"));
  MergeOptions rep;
  rep.replace = true;
  merge_stores(pa, pb, pa, rep);  // output over one of the inputs
  m = open_store(pa);
  REQUIRE(m.ids == std::vector<int64_t>{1, 2, 3, 5, 6});
  REQUIRE(m.row(2) == std::vector<float>(b.begin(), b.begin() + dim));

  // Different models or dims.
  StoreMeta other = test_meta();
  other.weights_hash = "sha256:ffff";
  write_store(pb, {7}, b.data(), dim, StoreDtype::f32, other);
  REQUIRE_THAT(expect_data_error([&] { merge_stores(pa, pb, out); }), Contains("different models") && Contains("--force"));
  MergeOptions force;
  force.force = true;
  merge_stores(pa, pb, out, force);
  REQUIRE(open_store(out).size() == 6);
  write_store(pb, {7}, b.data(), dim - 1, StoreDtype::f32, test_meta());
  REQUIRE_THAT(expect_data_error([&] { merge_stores(pa, pb, out, force); }), Contains("feature sizes differ"));
  write_store(pb, {7}, b.data(), dim, StoreDtype::f32, test_meta("text"));
  REQUIRE_THAT(expect_data_error([&] { merge_stores(pa, pb, out, force); }), Contains("text features"));
}

TEST_CASE("python_float_repr prints floats as Python's repr", "[store]") {
  // Left: a double; right: Python 3.11's repr() of it.
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {-2.0, "-2.0"},
      {0.5, "0.5"},
      {0.10000000149011612, "0.10000000149011612"},
      {0.30000001192092896, "0.30000001192092896"},
      {9.999999747378752e-05, "9.999999747378752e-05"},
      {1.4999999621068127e-05, "1.4999999621068127e-05"},
      {-3.0517578125e-05, "-3.0517578125e-05"},
      {0.0001, "0.0001"},
      {0.001, "0.001"},
      {123456.0, "123456.0"},
      {1234567.875, "1234567.875"},
      {16777216.0, "16777216.0"},
      {65504.0, "65504.0"},
      {1e15, "1000000000000000.0"},
      {1e16, "1e+16"},
      {1.0000000272564224e+16, "1.0000000272564224e+16"},
      {1.2344999588082483e+17, "1.2344999588082483e+17"},
      {1.401298464324817e-45, "1.401298464324817e-45"},
      {3.4028234663852886e+38, "3.4028234663852886e+38"},
      {1e22, "1e+22"},
  };
  for (const auto& [v, s] : cases) {
    INFO(s);
    REQUIRE(python_float_repr(v) == s);
  }
}

TEST_CASE("cn_clip JSONL features: read, write byte-identical, line-numbered errors", "[store]") {
  testutil::TempDir dir{"store"};
  for (const char* c : {"quant", "float"}) {
    for (const char* f : {"imgs.img_feat.jsonl", "texts.txt_feat.jsonl"}) {
      const std::string src = testutil::source_dir() + "/tests/data/eval/" + c + "/" + f;
      INFO(src);
      FeatureSet fs = read_features(src);
      REQUIRE(fs.format == "jsonl");
      REQUIRE(fs.meta.kind == (std::string(f).rfind("imgs", 0) == 0 ? "image" : "text"));
      REQUIRE(fs.meta.normalized == (std::string(c) == "float"));
      // Written back, the file is byte for byte what cn_clip's extract_features.py wrote.
      write_features_jsonl(dir / "out.jsonl", fs);
      REQUIRE(read_file(dir / "out.jsonl") == read_file(src));
      // JSONL -> store -> JSONL is lossless for f32.
      write_store(dir / "s.clipfeat", fs);
      write_features_jsonl(dir / "out2.jsonl", open_store(dir / "s.clipfeat"));
      REQUIRE(read_file(dir / "out2.jsonl") == read_file(src));
    }
  }
  FeatureSet q = read_features(testutil::source_dir() + "/tests/data/eval/quant/imgs.img_feat.jsonl");
  REQUIRE(q.size() == 40);
  REQUIRE(q.dim == 16);
  REQUIRE(q.ids[0] == 1001977);
  REQUIRE(q.at(0, 0) == -0.375f);
  float row[3] = {1.0f, -0.0f, 1.5e-5f};
  REQUIRE(feature_jsonl_line("text_id", 7, row, 3) == "{\"text_id\": 7, \"feature\": [1.0, -0.0, 1.4999999621068127e-05]}\n");

  auto bad = [&](const std::string& content) {
    write_bytes(dir / "bad.jsonl", content);
    return expect_data_error([&] { read_features(dir / "bad.jsonl"); });
  };
  const std::string l1 = "{\"image_id\": 1, \"feature\": [0.6, 0.8]}\n";
  REQUIRE_THAT(bad(l1 + "\n{\"image_id\": 2, \"feature\": [0.6, 0.8\n"), Contains("bad.jsonl:3:") && Contains("not valid JSON"));
  REQUIRE_THAT(bad(l1 + "{\"image_id\": 2, \"feature\": [0.6]}\n"), Contains(":2:") && Contains("1 values, earlier lines have 2"));
  REQUIRE_THAT(bad(l1 + "{\"image_id\": 1, \"feature\": [0.6, 0.8]}\n"), Contains(":2:") && Contains("already appeared on line 1"));
  REQUIRE_THAT(bad(l1 + "{\"image_id\": \"2\", \"feature\": [0.6, 0.8]}\n"), Contains(":2:") && Contains("expected an integer"));
  REQUIRE_THAT(bad(l1 + "{\"text_id\": 2, \"feature\": [0.6, 0.8]}\n"), Contains(":2:") && Contains("\"image_id\""));
  REQUIRE_THAT(bad(l1 + "{\"image_id\": 2, \"feature\": [0.6, \"x\"]}\n"), Contains(":2:") && Contains("not a number"));
  REQUIRE_THAT(bad(l1 + "{\"image_id\": 2, \"feature\": [1e39, 0]}\n"), Contains(":2:") && Contains("float32 range"));
  REQUIRE_THAT(bad(""), Contains("holds no features"));
  REQUIRE_THROWS_AS(read_features(dir / "missing.jsonl"), IoError);
}

TEST_CASE("source file info records size and mtime", "[store]") {
  testutil::TempDir dir{"store"};
  write_bytes(dir / "src.tsv", "1\tAAAA\n");
  SourceFile s = source_file_info(dir / "src.tsv");
  REQUIRE(s.path[0] == '/');
  REQUIRE(s.size == 7);
  REQUIRE(source_unchanged(s));
  write_bytes(dir / "src.tsv", "1\tAAAA\n2\tBBBB\n");
  REQUIRE(!source_unchanged(s));
  REQUIRE_THROWS_AS(source_file_info(dir / "nope.tsv"), IoError);
}

TEST_CASE("a 100k x 512 store maps and reads back", "[store][large]") {
  testutil::TempDir dir{"store"};
  const int64_t n = 100000, dim = 512;
  std::vector<float> data(n * dim);
  for (int64_t i = 0; i < n * dim; ++i) data[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = 1000000 + i;
  write_store(dir / "big.clipfeat", ids, data.data(), dim, StoreDtype::f32, test_meta());
  FeatureSet fs = open_store(dir / "big.clipfeat");
  REQUIRE(fs.size() == n);
  REQUIRE(fs.at(n - 1, dim - 1) == data[n * dim - 1]);
  REQUIRE(fs.at(54321, 17) == data[54321 * dim + 17]);
  REQUIRE(fs.find(1000000 + 99999) == 99999);
}

TEST_CASE("float16 conversions agree with c10::Half bit for bit", "[store]") {
  // Every non-NaN half, widened through FeatureSet::copy_rows (the search path).
  std::vector<uint16_t> all;
  for (uint32_t b = 0; b < 65536; ++b)
    if ((b & 0x7c00u) != 0x7c00u || (b & 0x3ffu) == 0) all.push_back(static_cast<uint16_t>(b));
  FeatureSet h;
  h.dim = static_cast<int64_t>(all.size());
  h.dtype = StoreDtype::f16;
  h.data = all.data();
  h.ids = {0};
  std::vector<float> wide(all.size());
  h.copy_rows(0, 1, wide.data());
  for (size_t i = 0; i < all.size(); ++i) {
    c10::Half ref;
    ref.x = all[i];
    const float r = static_cast<float>(ref);
    REQUIRE(std::memcmp(&wide[i], &r, 4) == 0);
  }
  // Narrowing: ties to even, subnormals, overflow, signed zero (the tail of 3 takes the scalar path).
  std::vector<float> v = {0.f, -0.f, 1.f, 1.0009765625f, 1.00048828125f, 1.00146484375f, 65504.f, 65519.f, 65520.f,
                          6.0e-8f, 2.98e-8f, -3.0e-5f, 1e-10f, 0.1f, -0.3333333f, 1234.5678f, 7.0e-5f, -65536.f, 3.14159f};
  FeatureSet n = make_feature_set({0}, v.data(), static_cast<int64_t>(v.size()), StoreDtype::f16);
  for (size_t i = 0; i < v.size(); ++i) {
    INFO(v[i]);
    REQUIRE(n.f16()[i] == c10::Half(v[i]).x);
  }
}

TEST_CASE("string ids (photo paths) survive store writes, appends, merges and JSONL", "[store]") {
  testutil::TempDir dir{"store"};
  const int64_t dim = 6;
  auto a = random_rows(3, dim, 7), b = random_rows(2, dim, 8);
  REQUIRE(name_to_id("2023/cat.jpg") == name_to_id("2023/cat.jpg"));
  REQUIRE(name_to_id("2023/cat.jpg") < 0);
  REQUIRE(name_to_id("2023/cat.jpg") != name_to_id("2023/dog.jpg"));
  REQUIRE(!id_from_json(nlohmann::json("100")));  // a quoted number is not a path
  StoreMeta m = test_meta();
  const int64_t cat = name_to_id("2023/cat.jpg"), dog = name_to_id("狗/dog.png");
  m.names = {{cat, "2023/cat.jpg"}, {dog, "狗/dog.png"}};
  const std::string p = dir / "s.clipfeat";
  write_store(p, {cat, 7, dog}, a.data(), dim, StoreDtype::f32, m);  // a mixed store: one integer id
  FeatureSet fs = open_store(p);
  REQUIRE(fs.meta.names.size() == 2);
  REQUIRE(fs.meta.names.at(dog) == "狗/dog.png");
  REQUIRE(id_to_json(7, fs.meta.names_or_null()) == 7);
  REQUIRE(id_to_json(cat, fs.meta.names_or_null()) == "2023/cat.jpg");

  AppendOptions opt;
  const int64_t bird = name_to_id("bird.webp");
  opt.names = {{bird, "bird.webp"}};
  append_store(p, {bird, 8}, b.data(), dim, opt);
  REQUIRE(open_store(p).meta.names.at(bird) == "bird.webp");

  StoreMeta m2 = test_meta();
  const int64_t fish = name_to_id("fish.gif");
  m2.names = {{fish, "fish.gif"}};
  write_store(dir / "t.clipfeat", {fish}, b.data(), dim, StoreDtype::f16, m2);
  merge_stores(p, dir / "t.clipfeat", dir / "u.clipfeat");
  FeatureSet u = open_store(dir / "u.clipfeat");
  REQUIRE(u.size() == 6);
  REQUIRE(u.meta.names.size() == 4);
  REQUIRE(u.meta.names.at(fish) == "fish.gif");

  // JSONL: names are written as strings and read back to the same ids
  write_features_jsonl(dir / "u.jsonl", u);
  REQUIRE_THAT(read_file(dir / "u.jsonl"), Contains("{\"image_id\": \"2023/cat.jpg\", \"feature\": [") &&
                                              Contains("{\"image_id\": 7, \"feature\": ["));
  FeatureSet j = read_features_jsonl(dir / "u.jsonl");
  REQUIRE(j.ids == u.ids);
  REQUIRE(j.meta.names == u.meta.names);

  // A name that does not belong to its row's id is refused.
  std::string bytes = read_file(p);
  const size_t at = bytes.find("\"2023/cat.jpg\"");
  REQUIRE(at != std::string::npos);
  bytes[at + 6] = 'X';  // "2023/Xat.jpg": same length, another hash
  const std::string q = dir / "tampered.clipfeat";
  write_file_atomic(q, bytes);
  REQUIRE_THAT(expect_data_error([&] { open_store(q); }), Contains("names") && Contains("does not belong"));
}
