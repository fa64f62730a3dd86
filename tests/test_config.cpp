// Model configs: the built-in official registry, cn_clip's JSON schema and its error messages.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "clip/model/config.h"
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
