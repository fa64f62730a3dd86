// Model configs: the built-in official registry, cn_clip's JSON schema and its error messages.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "clip/model/config.h"
#include "clip/model/hf_config.h"
#include "clip/base/error.h"
#include "util.h"

using namespace clip;
using nlohmann::json;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no UsageError)";
}

}  // namespace

TEST_CASE("official configs hold cn_clip's model_configs values", "[config]") {
  CHECK(official_vision_names() == std::vector<std::string>({"ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50"}));
  CHECK(official_text_names() ==
        std::vector<std::string>({"RoBERTa-wwm-ext-base-chinese", "RoBERTa-wwm-ext-large-chinese", "RBT3-chinese"}));
  struct V {
    const char* name;
    int embed, res, layers, width, patch, heads;
  };
  for (const V& v : {V{"ViT-B-16", 512, 224, 12, 768, 16, 12}, V{"ViT-B-32", 512, 224, 12, 768, 32, 12},
                     V{"ViT-L-14", 768, 224, 24, 1024, 14, 16}, V{"ViT-L-14-336", 768, 336, 24, 1024, 14, 16},
                     V{"ViT-H-14", 1024, 224, 32, 1280, 14, 16}}) {
    INFO(v.name);
    VisionConfig c = vision_config(v.name);
    CHECK(c.name == v.name);
    CHECK_FALSE(c.resnet);
    CHECK(c.embed_dim == v.embed);
    CHECK(c.image_resolution == v.res);
    CHECK(c.layers == v.layers);
    CHECK(c.width == v.width);
    CHECK(c.patch_size == v.patch);
    CHECK(c.heads() == v.heads);
  }
  CHECK(vision_config("ViT-H-14").head_width == 80);
  VisionConfig rn = vision_config("RN50");
  CHECK(rn.resnet);
  CHECK(rn.resnet_layers == std::vector<int>({3, 4, 6, 3}));
  CHECK(rn.width == 64);
  CHECK(rn.embed_dim == 1024);
  CHECK(rn.heads() == 32);
  // RN50's vision_layers is written as a string, as in cn_clip's RN50.json; patch size null.
  json j = to_json(rn);
  CHECK(j["vision_layers"] == "[3,4,6,3]");
  CHECK(j["vision_patch_size"].is_null());
  CHECK_FALSE(j.contains("vision_head_width"));
  CHECK(to_json(vision_config("ViT-H-14"))["vision_head_width"] == 80);

  TextConfig base = text_config("RoBERTa-wwm-ext-base-chinese");
  CHECK(base.vocab_size == 21128);
  CHECK(base.hidden_size == 768);
  CHECK(base.num_layers == 12);
  CHECK(base.num_heads == 12);
  CHECK(base.intermediate_size == 3072);
  CHECK(base.hidden_act == "gelu");
  CHECK(base.hidden_dropout == 0.1);
  CHECK(base.attention_dropout == 0.1);
  CHECK(base.max_position_embeddings == 512);
  CHECK(base.type_vocab_size == 2);
  CHECK(base.initializer_range == 0.02);
  TextConfig large = text_config("RoBERTa-wwm-ext-large-chinese");
  CHECK(large.hidden_size == 1024);
  CHECK(large.num_layers == 24);
  CHECK(large.num_heads == 16);
  CHECK(large.intermediate_size == 4096);
  TextConfig rbt3 = text_config("RBT3-chinese");
  CHECK(rbt3.num_layers == 3);
  CHECK(rbt3.hidden_size == 768);
  CHECK(rbt3.num_heads == 12);
  // JSON round trip with cn_clip's key names.
  json tj = to_json(base);
  CHECK(tj.size() == 11);
  CHECK(tj["text_num_attention_heads"] == 12);
  TextConfig back = text_config_from_json(tj, "x");
  CHECK(back.hidden_size == base.hidden_size);
  CHECK(back.initializer_range == base.initializer_range);
  VisionConfig vb = vision_config_from_json(to_json(vision_config("ViT-L-14-336")), "y");
  CHECK(vb.image_resolution == 336);
  CHECK(vb.patch_size == 14);
  CHECK(vision_config_from_json(to_json(rn), "z").resnet_layers == rn.resnet_layers);
}

TEST_CASE("JSON config files in cn_clip's schema", "[config]") {
  VisionConfig vit = vision_config(testutil::fixture("configs/ViT-Tiny-P32.json"));
  CHECK(vit.name == "ViT-Tiny-P32");
  CHECK_FALSE(vit.resnet);
  CHECK(vit.layers == 2);
  CHECK(vit.width == 64);
  CHECK(vit.patch_size == 32);
  CHECK(vit.embed_dim == 32);
  CHECK(vit.heads() == 1);
  VisionConfig rn = vision_config(testutil::fixture("configs/RN-Tiny.json"));
  CHECK(rn.name == "RN-Tiny");
  CHECK(rn.resnet);
  CHECK(rn.resnet_layers == std::vector<int>({1, 1, 1, 1}));
  CHECK(rn.width == 8);
  CHECK(rn.heads() == 4);
  TextConfig t = text_config(testutil::fixture("configs/RBT-Tiny-H64-L2.json"));
  CHECK(t.name == "RBT-Tiny-H64-L2");
  CHECK(t.hidden_size == 64);
  CHECK(t.num_heads == 2);
  CHECK(t.num_layers == 2);
  CHECK(t.intermediate_size == 128);
  CHECK(t.hidden_dropout == 0.0);
  CHECK(t.initializer_range == 0.15);

  testutil::TempDir d{"cfg"};
  // vision_layers as a JSON list, and as a string with spaces; vision_patch_size absent for a ResNet.
  auto l = vision_config(d.write("rn-list.json", R"({"embed_dim": 16, "image_resolution": 64, "vision_layers": [2, 1, 1, 1],
                                                     "vision_width": 16, "vision_patch_size": null})"));
  CHECK(l.resnet_layers == std::vector<int>({2, 1, 1, 1}));
  CHECK(l.name == "rn-list");
  auto s = vision_config(d.write("rn-str.json", R"({"embed_dim": 16, "image_resolution": 64, "vision_layers": "[ 1, 2,1,1 ]",
                                                    "vision_width": 16})"));
  CHECK(s.resnet_layers == std::vector<int>({1, 2, 1, 1}));
  auto h = vision_config(d.write("vit-h.json", R"({"embed_dim": 16, "image_resolution": 64, "vision_layers": 1,
                                                   "vision_width": 160, "vision_patch_size": 16, "vision_head_width": 80})"));
  CHECK(h.heads() == 2);
  // One combined file serves both towers.
  std::string both = d.write("both.json", R"({"embed_dim": 16, "image_resolution": 64, "vision_layers": 1, "vision_width": 64,
      "vision_patch_size": 16, "vocab_size": 100, "text_attention_probs_dropout_prob": 0.0, "text_hidden_act": "gelu",
      "text_hidden_dropout_prob": 0.0, "text_hidden_size": 32, "text_initializer_range": 0.02, "text_intermediate_size": 64,
      "text_max_position_embeddings": 64, "text_num_attention_heads": 4, "text_num_hidden_layers": 1, "text_type_vocab_size": 2})");
  CHECK(vision_config(both).width == 64);
  CHECK(text_config(both).num_heads == 4);
}

TEST_CASE("config errors name the file, the key and the known names", "[config]") {
  std::string msg = error_of([] { vision_config("ViT-B-99"); });
  CHECK(msg.find("unknown vision model 'ViT-B-99'") != std::string::npos);
  for (const auto& n : official_vision_names()) CHECK(msg.find(n) != std::string::npos);
  msg = error_of([] { text_config("bert-base"); });
  CHECK(msg.find("unknown text model 'bert-base'") != std::string::npos);
  CHECK(msg.find("RBT3-chinese") != std::string::npos);
  CHECK(error_of([] { vision_config("/nonexistent/dir/x.json"); }).find("/nonexistent/dir/x.json") != std::string::npos);

  testutil::TempDir d{"cfg"};
  std::string bad = d.write("bad.json", "{\"embed_dim\": 32,,}");
  msg = error_of([&] { vision_config(bad); });
  CHECK(msg.find(bad) != std::string::npos);
  CHECK(msg.find("not valid JSON") != std::string::npos);

  std::string missing = d.write("missing.json", R"({"embed_dim": 32, "image_resolution": 224, "vision_layers": 2})");
  msg = error_of([&] { vision_config(missing); });
  CHECK(msg.find(missing) != std::string::npos);
  CHECK(msg.find("'vision_width'") != std::string::npos);
  CHECK(msg.find("missing") != std::string::npos);

  std::string wrong = d.write("wrong.json", R"({"embed_dim": "32", "image_resolution": 224, "vision_layers": 2,
                                                 "vision_width": 64, "vision_patch_size": 32})");
  msg = error_of([&] { vision_config(wrong); });
  CHECK(msg.find("'embed_dim'") != std::string::npos);
  CHECK(msg.find("integer") != std::string::npos);

  std::string layers = d.write("layers.json", R"({"embed_dim": 32, "image_resolution": 224, "vision_layers": "[1,1,1]",
                                                   "vision_width": 8, "vision_patch_size": null})");
  CHECK(error_of([&] { vision_config(layers); }).find("'vision_layers'") != std::string::npos);
  std::string nopatch = d.write("nopatch.json", R"({"embed_dim": 32, "image_resolution": 224, "vision_layers": 2,
                                                     "vision_width": 64, "vision_patch_size": null})");
  CHECK(error_of([&] { vision_config(nopatch); }).find("'vision_patch_size'") != std::string::npos);
  std::string heads = d.write("heads.json", R"({"vocab_size": 100, "text_attention_probs_dropout_prob": 0.0,
      "text_hidden_act": "gelu", "text_hidden_dropout_prob": 0.0, "text_hidden_size": 30, "text_initializer_range": 0.02,
      "text_intermediate_size": 64, "text_max_position_embeddings": 64, "text_num_attention_heads": 4,
      "text_num_hidden_layers": 1, "text_type_vocab_size": 2})");
  msg = error_of([&] { text_config(heads); });
  CHECK(msg.find(heads) != std::string::npos);
  CHECK(msg.find("'text_num_attention_heads'") != std::string::npos);
  std::string act = d.write("act.json", R"({"vocab_size": 100, "text_attention_probs_dropout_prob": 0.0,
      "text_hidden_act": "mish", "text_hidden_dropout_prob": 0.0, "text_hidden_size": 32, "text_initializer_range": 0.02,
      "text_intermediate_size": 64, "text_max_position_embeddings": 64, "text_num_attention_heads": 4,
      "text_num_hidden_layers": 1, "text_type_vocab_size": 2})");
  CHECK(error_of([&] { text_config(act); }).find("'text_hidden_act'") != std::string::npos);
  // Errors from in-memory JSON name the config.
  CHECK(error_of([] { text_config_from_json(json::object(), "mine"); }).find("'mine'") != std::string::npos);
}

TEST_CASE("vision_mlp_width: optional ViT MLP width, written only when it is not 4 x width", "[config]") {
  json j = {{"embed_dim", 32}, {"image_resolution", 64}, {"vision_layers", 2}, {"vision_width", 64}, {"vision_patch_size", 16}};
  VisionConfig four = vision_config_from_json(j, "v");
  CHECK(four.mlp() == 256);
  CHECK(four.mlp_width == 0);
  CHECK_FALSE(to_json(four).contains("vision_mlp_width"));  // cn_clip's own JSON stays as it was
  j["vision_mlp_width"] = 256;
  CHECK(vision_config_from_json(j, "v").mlp_width == 0);  // 4 x width is the default, however spelt
  j["vision_mlp_width"] = 96;
  VisionConfig v = vision_config_from_json(j, "v");
  CHECK(v.mlp() == 96);
  CHECK(to_json(v)["vision_mlp_width"] == 96);
  CHECK(vision_config_from_json(to_json(v), "v").mlp() == 96);
  ModelConfig mc;
  mc.vision = v;
  mc.text = text_config("RBT3-chinese");
  CHECK(model_config_from_json(model_config_json(mc), "x").vision.mlp() == 96);
  j["vision_mlp_width"] = 0;
  CHECK_THAT(error_of([&] { vision_config_from_json(j, "v"); }), Catch::Contains("vision_mlp_width"));
  json rn = {{"embed_dim", 32}, {"image_resolution", 64}, {"vision_layers", "[1,1,1,1]"}, {"vision_width", 8},
             {"vision_patch_size", nullptr}, {"vision_mlp_width", 40}};
  CHECK_THAT(error_of([&] { vision_config_from_json(rn, "rn"); }), Catch::Contains("vision_mlp_width"));
}

TEST_CASE("Hugging Face config.json: MLP widths and projection read, unrepresentable values refused by field", "[config]") {
  ModelConfig c;
  c.vision = vision_config("ViT-B-16");
  c.vision.width = 96;
  c.vision.head_width = 32;
  c.vision.layers = 2;
  c.vision.mlp_width = 160;
  c.vision.embed_dim = 48;
  c.text = text_config("RBT3-chinese");
  c.text.hidden_size = 96;
  c.text.num_heads = 4;
  c.text.intermediate_size = 200;
  json hf = hf_config_json(c, 4.6);
  CHECK(hf["vision_config"]["intermediate_size"] == 160);
  CHECK(hf["text_config"]["intermediate_size"] == 200);
  CHECK(hf["projection_dim"] == 48);
  ModelConfig back = model_config_from_hf(hf, "m", "/x/config.json");
  CHECK(back.vision.mlp() == 160);
  CHECK(back.vision.heads() == 3);
  CHECK(back.vision.embed_dim == 48);
  CHECK(back.text.num_heads == 4);
  CHECK(back.text.intermediate_size == 200);
  CHECK(back.vision.name == "m-vision");
  // 4 x width reads as the default; the official ViT-B-16 is recognised by its values.
  ModelConfig b16;
  b16.vision = vision_config("ViT-B-16");
  b16.text = text_config("RoBERTa-wwm-ext-base-chinese");
  ModelConfig b16_back = model_config_from_hf(hf_config_json(b16, 4.6), "m");
  CHECK(b16_back.vision.mlp_width == 0);
  CHECK(b16_back.vision.name == "ViT-B-16");
  CHECK(b16_back.text.name == "RoBERTa-wwm-ext-base-chinese");
  // The top-level projection_dim is the one ChineseCLIPModel uses (vision_config's is not).
  json p = hf;
  p["vision_config"]["projection_dim"] = 999;
  CHECK(model_config_from_hf(p, "m").vision.embed_dim == 48);
  // transformers' names for cn_clip's BERT activations.
  p = hf;
  p["text_config"]["hidden_act"] = "silu";
  CHECK(model_config_from_hf(p, "m").text.hidden_act == "swish");

  struct Case {
    const char* field;
    std::function<void(json&)> change;
  };
  const std::vector<Case> cases = {
      {"vision_config.hidden_act", [](json& j) { j["vision_config"]["hidden_act"] = "gelu"; }},
      {"vision_config.layer_norm_eps", [](json& j) { j["vision_config"]["layer_norm_eps"] = 1e-6; }},
      {"vision_config.num_channels", [](json& j) { j["vision_config"]["num_channels"] = 1; }},
      {"vision_config.num_attention_heads", [](json& j) { j["vision_config"]["num_attention_heads"] = 5; }},
      {"vision_config.image_size", [](json& j) { j["vision_config"]["image_size"] = 230; }},
      {"vision_config.intermediate_size", [](json& j) { j["vision_config"]["intermediate_size"] = 0; }},
      {"text_config.hidden_act", [](json& j) { j["text_config"]["hidden_act"] = "tanh"; }},
      {"text_config.layer_norm_eps", [](json& j) { j["text_config"]["layer_norm_eps"] = 1e-5; }},
      {"text_config.position_embedding_type", [](json& j) { j["text_config"]["position_embedding_type"] = "relative_key"; }},
      {"text_config.num_attention_heads", [](json& j) { j["text_config"]["num_attention_heads"] = 7; }},
      {"text_config.hidden_size", [](json& j) { j["text_config"]["hidden_size"] = 9.5; }},
      {"projection_dim", [](json& j) { j["projection_dim"] = -1; }},
  };
  for (const auto& k : cases) {
    json j = hf;
    k.change(j);
    std::string msg;
    try {
      model_config_from_hf(j, "m", "/x/config.json");
      msg = "(no ModelError)";
    } catch (const ModelError& e) {
      msg = e.what();
    }
    INFO(k.field << ": " << msg);
    CHECK_THAT(msg, Catch::StartsWith("/x/config.json: " + std::string(k.field) + " "));
  }
}
