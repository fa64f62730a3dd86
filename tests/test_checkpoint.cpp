// Checkpoint I/O: torch.save zip reading/writing (checked against the reference fixtures and
// against Python's torch.load), safetensors, Hugging Face folders, hostile and damaged files.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <unistd.h>

#include "clip/checkpoint.h"
#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/pickle.h"
#include "clip/zip.h"
#include "util.h"

using namespace clip;

namespace {

double element(const TensorData& t, int64_t flat) {
  // flat index in row-major order -> strided offset
  int64_t off = 0;
  for (size_t d = t.shape.size(); d-- > 0;) {
    off += (flat % t.shape[d]) * t.strides[d];
    flat /= t.shape[d];
  }
  const uint8_t* p = t.data + off * int64_t(dtype_size(t.dtype));
  switch (t.dtype) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::i64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    case DType::i32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::f16: {
      uint16_t h; std::memcpy(&h, p, 2);
      int e = (h >> 10) & 0x1F, m = h & 0x3FF;
      double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
      return (h & 0x8000) ? -v : v;
    }
    case DType::u8: case DType::b1: return *p;
    case DType::i8: return int8_t(*p);
    default: FAIL("dtype not handled in test"); return 0;
  }
}

std::string tmpdir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/clip_ckpt_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    return std::string(tmpl);
  }();
  return dir;
}

}  // namespace

TEST_CASE("fixture checkpoints load with the expected layout and values", "[checkpoint]") {
  std::ifstream f(testutil::fixture("expected/checkpoint_layout.json"));
  REQUIRE(f.good());
  nlohmann::json layout = nlohmann::json::parse(f);
  REQUIRE(layout.size() == 2);
  for (const auto& entry : layout) {
    std::string file = entry["file"];
    INFO(file);
    Checkpoint ck = load_checkpoint(testutil::fixture("checkpoints/" + file));
    CHECK(ck.format == "torch-zip");
    CHECK(ck.had_module_prefix);
    REQUIRE(ck.epoch);
    REQUIRE(ck.step);
    CHECK(*ck.epoch == entry["epoch"].get<int64_t>());
    CHECK(*ck.step == entry["step"].get<int64_t>());
    CHECK(ck.name == entry["name"].get<std::string>());
    CHECK(ck.state_dict.keys.size() == entry["n_tensors"].get<size_t>());
    CHECK(ck.state_dict.keys.size() == (file == "vit_bert.pt" ? 71u : 162u));
    REQUIRE(ck.root);
    REQUIRE(ck.root->get("state_dict"));
    CHECK(ck.root->get("state_dict")->ordered);
    size_t i = 0;
    for (const auto& t : entry["tensors"]) {
      std::string key = t["key"];
      REQUIRE(key.rfind("module.", 0) == 0);
      key = key.substr(7);
      INFO(key);
      REQUIRE(i < ck.state_dict.keys.size());
      CHECK(ck.state_dict.keys[i++] == key);  // file order kept
      const TensorData& td = ck.state_dict.at(key);
      CHECK(td.shape == t["shape"].get<std::vector<int64_t>>());
      CHECK(std::string(dtype_name(td.dtype)) == t["dtype"].get<std::string>());
      // tensors point into the mapped file: no copies
      CHECK(td.owner);
      if (t.contains("values")) {
        auto vals = t["values"].get<std::vector<double>>();
        REQUIRE(int64_t(vals.size()) == td.numel());
        for (size_t j = 0; j < vals.size(); ++j) CHECK(element(td, int64_t(j)) == vals[j]);
        continue;
      }
      double sum = 0, l2 = 0;
      for (int64_t j = 0; j < td.numel(); ++j) {
        double v = element(td, j);
        sum += v;
        l2 += v * v;
      }
      l2 = std::sqrt(l2);
      double esum = t["sum"], el2 = t["l2"];
      CHECK(std::abs(sum - esum) <= 1e-9 * (1 + std::abs(esum)) + 1e-12 * td.numel());
      CHECK(std::abs(l2 - el2) <= 1e-9 * (1 + el2));
      auto first = t["first"].get<std::vector<double>>();
      for (size_t j = 0; j < first.size(); ++j) CHECK(element(td, int64_t(j)) == first[j]);
    }
    CHECK(i == ck.state_dict.keys.size());
  }
}
