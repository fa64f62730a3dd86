// clip-export's library side: cn_clip / Hugging Face round trips through the Encoder, and ONNX graphs
// run in an independent runtime (onnxruntime-node) against LibTorch's features.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "clip/export/convert.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/io/checkpoint.h"
#include "clip/model/model.h"
#include "clip/export/onnx_export.h"
#include "clip/text/tokenizer.h"
#include "util.h"

#undef CHECK
#include <catch2/catch.hpp>

using namespace clip;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  const char* name;
  const char* checkpoint;
  const char* vision;
};
const Fixture kVit{"vit", "checkpoints/vit_bert.pt", "configs/ViT-Tiny-P32.json"};
const Fixture kRn{"rn", "checkpoints/rn_bert.pt", "configs/RN-Tiny.json"};

ModelOptions fixture_options(const Fixture& f) {
  ModelOptions mo;
  mo.checkpoint = testutil::fixture(f.checkpoint);
  mo.vision_model = testutil::fixture(f.vision);
  mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
  mo.vocab = testutil::fixture("vocab.txt");
  return mo;
}

// A fresh empty folder under the build's temp area.
std::string temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("clip_test_export_" + std::to_string(::getpid())) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

const std::vector<std::string> kTexts = {"蓝色背景上的红色圆形", "一只猫", "两个绿色的三角形和一个黄色的正方形在白色背景上",
                                         "Hello world 123", "夜晚的城市", "小狗在草地上奔跑", "a"};

at::Tensor token_ids(Encoder& enc, int n) {
  std::vector<std::string> t(kTexts.begin(), kTexts.begin() + n);
  auto ids = at::zeros({n, enc.context_length()}, at::kLong);
  for (int i = 0; i < n; ++i) enc.tokenizer().encode_into(t[i], enc.context_length(), ids.data_ptr<int64_t>() + i * enc.context_length());
  return ids;
}

at::Tensor pixels(int n, int r) {
  at::manual_seed(1234 + n);
  return at::randn({n, 3, r, r}, at::kFloat);
}

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  *rc = pclose(p);
  return out;
}

void write_raw(const std::string& path, const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(c.data_ptr()), std::streamsize(c.numel() * c.element_size()));
  REQUIRE(f.good());
}

std::string node_runner() {
  const std::string dir = testutil::source_dir() + "/tests/node";
  INFO("onnxruntime-node is missing: run scripts/setup.sh (npm install in tests/node)");
  REQUIRE(fs::exists(dir + "/node_modules/onnxruntime-node"));
  return dir + "/run_onnx.js";
}

// Runs the graph in onnxruntime-node; returns its [N, E] float32 output.
at::Tensor run_ort(const std::string& model, const std::string& input, const at::Tensor& x, int64_t embed) {
  const std::string dir = fs::path(model).parent_path().string();
  const std::string in = dir + "/in.bin", out = dir + "/out.bin";
  write_raw(in, x);
  std::string dims;
  for (auto d : x.sizes()) dims += (dims.empty() ? "" : "x") + std::to_string(d);
  const std::string dtype = x.scalar_type() == at::kLong ? "int64" : "float32";
  int rc = 0;
  std::string res = run_capture("node " + node_runner() + " '" + model + "' '" + out + "' " + input + "=" + in + ":" + dtype + ":" + dims, &rc);
  INFO(res);
  REQUIRE(rc == 0);
  json j = json::parse(res);
  CHECK(j["dims"] == json::array({x.size(0), embed}));
  std::ifstream f(out, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() == size_t(x.size(0) * embed * 4));
  return at::from_blob(bytes.data(), {x.size(0), embed}, at::kFloat).clone();
}

void python_check(const std::string& model) {
  int rc = 0;
  std::string res = run_capture("/usr/bin/python3 -c \"import onnx,sys; onnx.checker.check_model(sys.argv[1], full_check=True); "
                                "print('ok')\" '" + model + "' 2>&1", &rc);
  INFO(res);
  CHECK(rc == 0);
  CHECK(res.find("ok") != std::string::npos);
}

// Per-row cosine and norm ratio between ORT's and LibTorch's unnormalised features.
void compare(const at::Tensor& ort, const at::Tensor& ref, double min_cos, double max_norm_err) {
  REQUIRE(ort.sizes() == ref.sizes());
  at::Tensor cos = (ort * ref).sum(1) / (ort.norm(2, 1) * ref.norm(2, 1));
  at::Tensor nerr = (ort.norm(2, 1) / ref.norm(2, 1) - 1).abs();
  INFO("min cosine " << cos.min().item<double>() << ", max norm error " << nerr.max().item<double>());
  CHECK(cos.min().item<double>() >= min_cos);
  CHECK(nerr.max().item<double>() <= max_norm_err);
}

// The features of texts and images through an encoder (L2-normalised).
std::pair<at::Tensor, at::Tensor> features(Encoder& enc) {
  return {enc.encode_ids(token_ids(enc, 7)), enc.encode_pixels(pixels(7, enc.resolution()))};
}

}  // namespace

TEST_CASE("cnclip round trip keeps weights and features", "[export]") {
  for (const Fixture& fx : {kVit, kRn}) {
    DYNAMIC_SECTION(fx.name) {
      Encoder src(fixture_options(fx), RuntimeOptions{});
      const std::string out = temp_dir(std::string("cnclip_") + fx.name) + "/model.pt";
      write_cnclip_checkpoint(out, src.model());
      ModelOptions mo;  // no configs: the file's own model_config must describe it
      mo.checkpoint = out;
      mo.vocab = testutil::fixture("vocab.txt");
      Encoder back(mo, RuntimeOptions{});
      CHECK(back.config().name() == src.config().name());
      CHECK(back.config().text.num_heads == 2);
      CHECK(back.weights_hash() == src.weights_hash());
      auto [t0, i0] = features(src);
      auto [t1, i1] = features(back);
      CHECK(at::equal(t0, t1));
      CHECK(at::equal(i0, i1));
      // torch.load reads it in the original's layout.
      int rc = 0;
      std::string res = run_capture(
          "/usr/bin/python3 -c \"import torch,sys,json; d=torch.load(sys.argv[1], map_location='cpu'); sd=d['state_dict']; "
          "print(json.dumps([list(d.keys()), type(sd).__name__, all(k.startswith('module.') for k in sd), len(sd), "
          "str(sd['module.text_projection'].dtype)]))\" '" + out + "' 2>&1", &rc);
      INFO(res);
      REQUIRE(rc == 0);
      json j = json::parse(res);
      CHECK(j[0] == json::array({"epoch", "step", "name", "state_dict", "model_config"}));
      CHECK(j[1] == "OrderedDict");
      CHECK(j[2] == true);
      CHECK(j[3].get<size_t>() == model_state(src.model()).size());
      CHECK(j[4] == "torch.float32");
    }
  }
}

TEST_CASE("Hugging Face folder round trip keeps features", "[export]") {
  Encoder src(fixture_options(kVit), RuntimeOptions{});
  const std::string dir = temp_dir("hf") + "/tiny-hf";
  write_hf_folder(dir, src.model(), testutil::fixture("vocab.txt"), src.context_length());
  for (const char* f : {"config.json", "model.safetensors", "vocab.txt", "preprocessor_config.json", "tokenizer_config.json"})
    CHECK(fs::exists(dir + "/" + f));
  json cfg = json::parse(std::ifstream(dir + "/config.json"));
  CHECK(cfg["model_type"] == "chinese_clip");
  CHECK(cfg["projection_dim"] == 32);
  CHECK(cfg["text_config"]["num_attention_heads"] == 2);
  CHECK(cfg["vision_config"]["hidden_size"] == 64);
  CHECK(cfg["vision_config"]["patch_size"] == 32);
  CHECK(std::abs(cfg["logit_scale_init_value"].get<double>() - 3.3) < 1e-6);

  ModelOptions mo;
  mo.checkpoint = dir;  // config from config.json, vocab.txt from the folder
  Encoder back(mo, RuntimeOptions{});
  CHECK(back.config().text.num_heads == 2);
  CHECK(back.config().vision.heads() == src.config().vision.heads());
  CHECK(back.weights_hash() == src.weights_hash());
  auto [t0, i0] = features(src);
  auto [t1, i1] = features(back);
  CHECK(at::equal(t0, t1));
  CHECK(at::equal(i0, i1));

  // And back again into the original's layout: hf -> cnclip -> ours.
  const std::string pt = fs::path(dir).parent_path().string() + "/from-hf.pt";
  write_cnclip_checkpoint(pt, back.model());
  ModelOptions mo2;
  mo2.checkpoint = pt;
  mo2.vocab = testutil::fixture("vocab.txt");
  Encoder again(mo2, RuntimeOptions{});
  auto [t2, i2] = features(again);
  CHECK(at::equal(t0, t2));
  CHECK(at::equal(i0, i2));

  // ModifiedResNet towers have no Hugging Face form.
  Encoder rn(fixture_options(kRn), RuntimeOptions{});
  const std::string rdir = temp_dir("hf_rn") + "/rn";
  CHECK_THROWS_AS(write_hf_folder(rdir, rn.model(), testutil::fixture("vocab.txt"), 52), UsageError);
  CHECK_FALSE(fs::exists(rdir + "/model.safetensors"));
}

TEST_CASE("a ViT with a non-4x MLP round-trips through the Hugging Face writer and loader", "[export]") {
  ModelConfig cfg;
  cfg.vision = vision_config(testutil::fixture("configs/ViT-Tiny-P32.json"));
  cfg.text = text_config(testutil::fixture("configs/RBT-Tiny-H64-L2.json"));
  cfg.vision.mlp_width = 96;  // transformers' intermediate_size may be anything; cn_clip's is 4 x 64
  ClipModel m(cfg);
  m->initialize_parameters(7);
  m->eval();
  bool found = false;
  for (auto& [name, t] : model_state(m)) {
    if (name == "visual.transformer.resblocks.1.mlp.c_fc.weight") {
      CHECK(t.sizes() == at::IntArrayRef({96, 64}));
      found = true;
    }
  }
  CHECK(found);

  const std::string dir = temp_dir("hf_mlp") + "/mlp-hf";
  write_hf_folder(dir, m, testutil::fixture("vocab.txt"), 52);
  json hc = json::parse(std::ifstream(dir + "/config.json"));
  CHECK(hc["vision_config"]["intermediate_size"] == 96);
  CHECK(read_file(dir + "/vocab.txt") == read_file(testutil::fixture("vocab.txt")));
  REQUIRE(fs::exists(dir + "/tokenizer.json"));
  json tc = json::parse(std::ifstream(dir + "/tokenizer_config.json"));
  CHECK(tc["do_lower_case"] == true);
  // As transformers 5 saves it: no vocab.txt, the tokenizer in tokenizer.json.
  fs::remove(dir + "/vocab.txt");
  ModelOptions mo;
  mo.checkpoint = dir;
  Encoder back(mo, RuntimeOptions{});
  CHECK(back.config().vision.mlp() == 96);
  CHECK(back.tokenizer().from_tokenizer_json());
  CHECK(back.tokenizer().vocab_sha256() == Tokenizer::load(testutil::fixture("vocab.txt")).vocab_sha256());
  const at::Tensor ids = token_ids(back, 7), px = pixels(3, back.resolution());
  {
    at::NoGradGuard ng;
    CHECK(at::equal(back.model()->encode_image(px), m->encode_image(px)));
    CHECK(at::equal(back.model()->encode_text(ids), m->encode_text(ids)));
  }
  // Shape inference reads the MLP width from the tensors.
  std::vector<std::string> notes;
  CHECK(infer_vision_config(load_checkpoint(dir).state_dict, notes).mlp() == 96);
  // And the cn_clip-layout checkpoint carries it in its model_config.
  const std::string pt = temp_dir("hf_mlp_pt") + "/m.pt";
  write_cnclip_checkpoint(pt, back.model());
  ModelOptions mo2;
  mo2.checkpoint = pt;
  mo2.vocab = dir + "/tokenizer.json";
  Encoder again(mo2, RuntimeOptions{});
  CHECK(again.config().vision.mlp() == 96);
  CHECK(again.weights_hash() == back.weights_hash());
}

TEST_CASE("ONNX graphs match LibTorch in onnxruntime", "[export]") {
  for (const Fixture& fx : {kVit, kRn}) {
    for (bool fp16 : {false, true}) {
      DYNAMIC_SECTION(fx.name << (fp16 ? " fp16" : " fp32")) {
        Encoder enc(fixture_options(fx), RuntimeOptions{});
        const std::string prefix = temp_dir(std::string("onnx_") + fx.name + (fp16 ? "16" : "32")) + "/tiny";
        OnnxExportOptions o;
        o.fp16 = fp16;
        o.context_length = enc.context_length();
        o.metadata["resolution"] = std::to_string(enc.resolution());
        const std::string txt = onnx_file_name(prefix, OnnxTower::text, fp16);
        const std::string img = onnx_file_name(prefix, OnnxTower::image, fp16);
        CHECK(txt == prefix + (fp16 ? ".txt.fp16.onnx" : ".txt.fp32.onnx"));
        auto rt = export_onnx(enc.model(), OnnxTower::text, txt, o);
        auto ri = export_onnx(enc.model(), OnnxTower::image, img, o);
        CHECK(rt.external_data_path.empty());
        CHECK(ri.external_data_path.empty());
        CHECK_NOTHROW(check_onnx_file(txt));
        CHECK_NOTHROW(check_onnx_file(img));
        python_check(txt);
        python_check(img);
        const double min_cos = fp16 ? 0.999 : 0.9999, norm_err = fp16 ? 1e-2 : 1e-4;
        for (int n : {1, 7}) {
          INFO("batch " << n);
          at::Tensor ids = token_ids(enc, n), px = pixels(n, enc.resolution());
          at::Tensor ref_t, ref_i;
          {
            at::NoGradGuard ng;
            ref_t = enc.model()->encode_text(ids);
            ref_i = enc.model()->encode_image(px);
          }
          compare(run_ort(txt, "text", ids, enc.embed_dim()), ref_t, min_cos, norm_err);
          compare(run_ort(img, "image", px, enc.embed_dim()), ref_i, min_cos, norm_err);
        }
      }
    }
  }
}

TEST_CASE("ONNX external data and metadata", "[export]") {
  Encoder enc(fixture_options(kVit), RuntimeOptions{});
  const std::string prefix = temp_dir("onnx_ext") + "/tiny";
  OnnxExportOptions o;
  o.external_data_threshold = 4096;
  o.metadata["resolution"] = "224";
  o.metadata["vocab_sha256"] = enc.tokenizer().vocab_sha256();
  o.metadata["source_checkpoint"] = enc.checkpoint_path();
  const std::string img = onnx_file_name(prefix, OnnxTower::image, false);
  auto r = export_onnx(enc.model(), OnnxTower::image, img, o);
  REQUIRE(r.external_data_path == img + ".extra_file");
  CHECK(r.external_tensors > 0);
  CHECK(fs::file_size(r.external_data_path) > fs::file_size(img));
  CHECK_NOTHROW(check_onnx_file(img));
  python_check(img);
  at::Tensor px = pixels(7, enc.resolution()), ref;
  {
    at::NoGradGuard ng;
    ref = enc.model()->encode_image(px);
  }
  compare(run_ort(img, "image", px, enc.embed_dim()), ref, 0.9999, 1e-4);

  int rc = 0;
  std::string res = run_capture("/usr/bin/python3 -c \"import onnx,sys,json; m=onnx.load(sys.argv[1], load_external_data=False); "
                                "print(json.dumps({p.key: p.value for p in m.metadata_props}))\" '" + img + "' 2>&1", &rc);
  INFO(res);
  REQUIRE(rc == 0);
  json meta = json::parse(res);
  CHECK(meta["resolution"] == "224");
  CHECK(meta["vocab_sha256"] == enc.tokenizer().vocab_sha256());
  CHECK(meta["source_checkpoint"] == enc.checkpoint_path());
  CHECK(meta["tower"] == "image");
  CHECK(model_config_from_json(meta["model_config"].get<std::string>(), "metadata").name() == enc.config().name());
}
