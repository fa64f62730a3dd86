#include "clip/model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"

namespace clip {

namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Built-in registry: the values of cn_clip/clip/model_configs/*.json.

VisionConfig make_vit(const std::string& name, int embed, int res, int layers, int width, int patch, int head_width) {
  VisionConfig v;
  v.name = name;
  v.embed_dim = embed;
  v.image_resolution = res;
  v.resnet = false;
  v.layers = layers;
  v.width = width;
  v.patch_size = patch;
  v.head_width = head_width;
  return v;
}

const std::vector<VisionConfig>& vision_registry() {
  static const std::vector<VisionConfig> reg = [] {
    std::vector<VisionConfig> r;
    r.push_back(make_vit("ViT-B-16", 512, 224, 12, 768, 16, 64));
    r.push_back(make_vit("ViT-B-32", 512, 224, 12, 768, 32, 64));
    r.push_back(make_vit("ViT-L-14", 768, 224, 24, 1024, 14, 64));
    r.push_back(make_vit("ViT-L-14-336", 768, 336, 24, 1024, 14, 64));
    r.push_back(make_vit("ViT-H-14", 1024, 224, 32, 1280, 14, 80));
    VisionConfig rn;
    rn.name = "RN50";
    rn.embed_dim = 1024;
    rn.image_resolution = 224;
    rn.resnet = true;
    rn.layers = 0;
    rn.resnet_layers = {3, 4, 6, 3};
    rn.width = 64;
    rn.patch_size = 0;
    rn.head_width = 64;
    r.push_back(rn);
    return r;
  }();
  return reg;
}

TextConfig make_text(const std::string& name, int hidden, int layers, int heads, int inter) {
  TextConfig t;
  t.name = name;
  t.vocab_size = 21128;
  t.hidden_size = hidden;
  t.num_layers = layers;
  t.num_heads = heads;
  t.intermediate_size = inter;
  t.hidden_act = "gelu";
  t.hidden_dropout = 0.1;
  t.attention_dropout = 0.1;
  t.max_position_embeddings = 512;
  t.type_vocab_size = 2;
  t.initializer_range = 0.02;
  return t;
}

const std::vector<TextConfig>& text_registry() {
  static const std::vector<TextConfig> reg = {
      make_text("RoBERTa-wwm-ext-base-chinese", 768, 12, 12, 3072),
      make_text("RoBERTa-wwm-ext-large-chinese", 1024, 24, 16, 4096),
      make_text("RBT3-chinese", 768, 3, 12, 3072),
  };
  return reg;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

std::string layers_string(const std::vector<int>& l) {
  std::string s = "[";
  for (size_t i = 0; i < l.size(); ++i) s += (i ? "," : "") + std::to_string(l[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// JSON access with errors that name the source and the key.

[[noreturn]] void bad_key(const std::string& source, const std::string& key, const std::string& what) {
  throw UsageError("model config " + source + ": key '" + key + "' " + what);
}

const json& need(const json& j, const std::string& source, const std::string& key) {
  if (!j.is_object()) throw UsageError("model config " + source + ": expected a JSON object, found " + j.type_name());
  auto it = j.find(key);
  if (it == j.end()) bad_key(source, key, "is missing (cn_clip's model_configs schema requires it)");
  return *it;
}

int get_int(const json& j, const std::string& source, const std::string& key, int lo = 1) {
  const json& v = need(j, source, key);
  int64_t x = 0;
  if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
    x = static_cast<int64_t>(v.get<double>());
  } else {
    bad_key(source, key, "must be an integer, found " + v.dump());
  }
  if (x < lo || x > (int64_t{1} << 30)) bad_key(source, key, "is out of range: " + v.dump());
  return static_cast<int>(x);
}

double get_double(const json& j, const std::string& source, const std::string& key, double lo, double hi) {
  const json& v = need(j, source, key);
  if (!v.is_number()) bad_key(source, key, "must be a number, found " + v.dump());
  double x = v.get<double>();
  if (!(x >= lo && x <= hi)) bad_key(source, key, "is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]: " + v.dump());
  return x;
}

std::string get_string(const json& j, const std::string& source, const std::string& key) {
  const json& v = need(j, source, key);
  if (!v.is_string()) bad_key(source, key, "must be a string, found " + v.dump());
  return v.get<std::string>();
}

// "[3,4,6,3]" (cn_clip eval()s this string) -> {3,4,6,3}; nullopt-like empty on a syntax error.
bool parse_int_list(const std::string& s, std::vector<int>& out) {
  out.clear();
  size_t i = 0;
  auto skip = [&] { while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i; };
  skip();
  char close = 0;
  if (i < s.size() && (s[i] == '[' || s[i] == '(')) close = s[i++] == '[' ? ']' : ')';
  if (!close) return false;
  skip();
  if (i < s.size() && s[i] == close) return false;  // empty list
  while (true) {
    skip();
    size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start || i - start > 6) return false;
    out.push_back(std::stoi(s.substr(start, i - start)));
    skip();
    if (i < s.size() && s[i] == ',') {
      ++i;
      skip();
      if (i < s.size() && s[i] == close) { ++i; break; }  // trailing comma, as Python allows
      continue;
    }
    if (i < s.size() && s[i] == close) { ++i; break; }
    return false;
  }
  skip();
  return i == s.size();
}

std::string file_stem(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  size_t dot = base.rfind('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

bool looks_like_path(const std::string& s) {
  return s.find('/') != std::string::npos || (s.size() > 5 && s.compare(s.size() - 5, 5, ".json") == 0);
}

json read_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError("cannot open model config file " + path + "; pass an official name or an existing JSON file");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number overflowing
    throw UsageError("model config " + path + " is not valid JSON: " + e.what());
  }
}

VisionConfig vision_from_json_src(const json& j, const std::string& name, const std::string& source) {
  VisionConfig c;
  c.name = name;
  c.embed_dim = get_int(j, source, "embed_dim");
  c.image_resolution = get_int(j, source, "image_resolution");
  c.width = get_int(j, source, "vision_width");
  const json& layers = need(j, source, "vision_layers");
  if (layers.is_number_integer()) {
    c.resnet = false;
    c.layers = get_int(j, source, "vision_layers");
  } else if (layers.is_string() || layers.is_array()) {
    std::vector<int> l;
    bool ok = true;
    if (layers.is_string()) {
      ok = parse_int_list(layers.get<std::string>(), l);
    } else {
      for (const auto& e : layers) {
        if (!e.is_number_integer() || e.get<int64_t>() < 1 || e.get<int64_t>() > 1000) { ok = false; break; }
        l.push_back(e.get<int>());
      }
    }
    if (!ok || l.size() != 4)
      bad_key(source, "vision_layers", "must be an integer (ViT depth) or a list of 4 block counts such as \"[3,4,6,3]\", found " +
                                           layers.dump());
    for (int x : l)
      if (x < 1) bad_key(source, "vision_layers", "block counts must be >= 1, found " + layers.dump());
    c.resnet = true;
    c.layers = 0;
    c.resnet_layers = l;
  } else {
    bad_key(source, "vision_layers", "must be an integer or a list such as \"[3,4,6,3]\", found " + layers.dump());
  }
  if (c.resnet) {
    auto it = j.find("vision_patch_size");
    if (it != j.end() && !it->is_null() && !it->is_number_integer())
      bad_key(source, "vision_patch_size", "must be an integer or null, found " + it->dump());
    c.patch_size = 0;
  } else {
    if (j.find("vision_patch_size") == j.end() || j["vision_patch_size"].is_null())
      bad_key(source, "vision_patch_size", "is required for a ViT (vision_layers is an integer)");
    c.patch_size = get_int(j, source, "vision_patch_size");
  }
  c.head_width = j.contains("vision_head_width") ? get_int(j, source, "vision_head_width") : 64;
  if (j.contains("vision_mlp_width") && !j["vision_mlp_width"].is_null()) {
    if (c.resnet) bad_key(source, "vision_mlp_width", "applies to ViT towers only (vision_layers is a list here)");
    c.mlp_width = get_int(j, source, "vision_mlp_width");
    if (c.mlp_width == 4 * c.width) c.mlp_width = 0;
  }
  // The checks cn_clip's constructors would fail on, reported with the key to fix.
  if (!c.resnet) {
    if (c.image_resolution % c.patch_size != 0)
      bad_key(source, "image_resolution", "(" + std::to_string(c.image_resolution) + ") must be a multiple of vision_patch_size (" +
                                              std::to_string(c.patch_size) + ")");
    if (c.width % c.head_width != 0)
      bad_key(source, "vision_width", "(" + std::to_string(c.width) + ") must be a multiple of vision_head_width (" +
                                          std::to_string(c.head_width) + ")");
  } else {
    if (c.image_resolution % 32 != 0)
      bad_key(source, "image_resolution", "must be a multiple of 32 for a ModifiedResNet, found " + std::to_string(c.image_resolution));
    if (c.width % 2 != 0) bad_key(source, "vision_width", "must be even for a ModifiedResNet");
    if ((c.width * 32) % c.head_width != 0)
      bad_key(source, "vision_width", "* 32 must be a multiple of vision_head_width (" + std::to_string(c.head_width) + ")");
  }
  return c;
}

TextConfig text_from_json_src(const json& j, const std::string& name, const std::string& source) {
  TextConfig t;
  t.name = name;
  t.vocab_size = get_int(j, source, "vocab_size");
  t.hidden_size = get_int(j, source, "text_hidden_size");
  t.num_layers = get_int(j, source, "text_num_hidden_layers");
  t.num_heads = get_int(j, source, "text_num_attention_heads");
  t.intermediate_size = get_int(j, source, "text_intermediate_size");
  t.hidden_act = get_string(j, source, "text_hidden_act");
  static const std::set<std::string> acts = {"gelu", "relu", "swish", "gelu_new"};
  if (!acts.count(t.hidden_act))
    bad_key(source, "text_hidden_act", "must be one of gelu, relu, swish, gelu_new (cn_clip's ACT2FN), found \"" + t.hidden_act + "\"");
  t.hidden_dropout = get_double(j, source, "text_hidden_dropout_prob", 0.0, 1.0);
  t.attention_dropout = get_double(j, source, "text_attention_probs_dropout_prob", 0.0, 1.0);
  t.max_position_embeddings = get_int(j, source, "text_max_position_embeddings");
  t.type_vocab_size = get_int(j, source, "text_type_vocab_size");
  t.initializer_range = get_double(j, source, "text_initializer_range", 0.0, 100.0);
  if (t.hidden_size % t.num_heads != 0)
    bad_key(source, "text_num_attention_heads", "(" + std::to_string(t.num_heads) + ") must divide text_hidden_size (" +
                                                     std::to_string(t.hidden_size) + ")");
  return t;
}

// ---------------------------------------------------------------------------------------------
// Shape inference.

std::vector<int64_t> shape_of(const StateDict& sd, const std::string& key, size_t dims) {
  const TensorData& t = sd.at(key);
  if (t.shape.size() != dims)
    throw ModelError("checkpoint key '" + key + "' has shape " + t.shape_str() + " but " + std::to_string(dims) +
                     " dimensions were expected; the file does not look like a Chinese-CLIP checkpoint");
  return t.shape;
}

int count_indexed(const StateDict& sd, const std::string& prefix, const std::string& suffix) {
  int n = 0;
  while (sd.contains(prefix + std::to_string(n) + suffix)) ++n;
  return n;
}

int exact_sqrt(int64_t n) {
  int64_t r = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(n))));
  return r * r == n ? static_cast<int>(r) : -1;
}

bool same_vision_shapes(const VisionConfig& a, const VisionConfig& b) {
  if (a.resnet != b.resnet || a.embed_dim != b.embed_dim || a.image_resolution != b.image_resolution || a.width != b.width)
    return false;
  return a.resnet ? a.resnet_layers == b.resnet_layers
                  : (a.layers == b.layers && a.patch_size == b.patch_size && a.mlp() == b.mlp());
}

bool same_text_shapes(const TextConfig& a, const TextConfig& b) {
  return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size && a.num_layers == b.num_layers &&
         a.intermediate_size == b.intermediate_size && a.max_position_embeddings == b.max_position_embeddings &&
         a.type_vocab_size == b.type_vocab_size;
}

}  // namespace

VisionConfig infer_vision_config(const StateDict& sd, std::vector<std::string>& notes) {
  VisionConfig v;
  if (sd.contains("visual.class_embedding") && sd.contains("visual.conv1.weight")) {
    auto conv = shape_of(sd, "visual.conv1.weight", 4);
    auto pos = shape_of(sd, "visual.positional_embedding", 2);
    auto proj = shape_of(sd, "visual.proj", 2);
    v.resnet = false;
    v.width = static_cast<int>(conv[0]);
    v.patch_size = static_cast<int>(conv[2]);
    v.layers = count_indexed(sd, "visual.transformer.resblocks.", ".attn.in_proj_weight");
    int grid = exact_sqrt(pos[0] - 1);
    if (grid < 1 || v.layers < 1 || conv[2] != conv[3])
      throw ModelError("cannot infer the ViT config from the checkpoint (positional_embedding " + sd.at("visual.positional_embedding").shape_str() +
                       ", " + std::to_string(v.layers) + " resblocks); pass --vision-model");
    v.image_resolution = grid * v.patch_size;
    v.embed_dim = static_cast<int>(proj[1]);
    // The MLP width (cn_clip's is 4 x width; Hugging Face's intermediate_size may be anything).
    if (sd.contains("visual.transformer.resblocks.0.mlp.c_fc.weight")) {
      int mlp = static_cast<int>(shape_of(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0]);
      v.mlp_width = mlp == 4 * v.width ? 0 : mlp;
    }
  } else if (sd.contains("visual.layer1.0.conv1.weight")) {
    auto conv3 = shape_of(sd, "visual.conv3.weight", 4);
    auto pos = shape_of(sd, "visual.attnpool.positional_embedding", 2);
    auto cproj = shape_of(sd, "visual.attnpool.c_proj.weight", 2);
    v.resnet = true;
    v.layers = 0;
    v.patch_size = 0;
    v.width = static_cast<int>(conv3[0]);
    for (int s = 1; s <= 4; ++s)
      v.resnet_layers.push_back(count_indexed(sd, "visual.layer" + std::to_string(s) + ".", ".conv1.weight"));
    int grid = exact_sqrt(pos[0] - 1);
    if (grid < 1 || std::count(v.resnet_layers.begin(), v.resnet_layers.end(), 0) != 0)
      throw ModelError("cannot infer the ModifiedResNet config from the checkpoint (attnpool.positional_embedding " +
                       sd.at("visual.attnpool.positional_embedding").shape_str() + ", blocks " + layers_string(v.resnet_layers) +
                       "); pass --vision-model");
    v.image_resolution = grid * 32;
    v.embed_dim = static_cast<int>(cproj[0]);
  } else {
    throw ModelError(
        "cannot infer the vision tower: the checkpoint has neither visual.class_embedding (ViT) nor visual.layer1.0.conv1.weight "
        "(ModifiedResNet); is it a Chinese-CLIP checkpoint? pass --vision-model to name the architecture");
  }
  for (const auto& o : vision_registry()) {
    if (same_vision_shapes(o, v)) {
      v.name = o.name;
      v.head_width = o.head_width;
      notes.push_back("vision config inferred from the checkpoint shapes: they match the official " + o.name + " (" +
                      std::to_string(v.heads()) + " heads of width " + std::to_string(o.head_width) + ")");
      return v;
    }
  }
  v.head_width = 64;
  if (v.resnet) {
    v.name = "RN-W" + std::to_string(v.width) + "-L" + std::to_string(v.resnet_layers[0]) + std::to_string(v.resnet_layers[1]) +
             std::to_string(v.resnet_layers[2]) + std::to_string(v.resnet_layers[3]) + "-R" + std::to_string(v.image_resolution);
    if ((v.width * 32) % 64 != 0)
      throw ModelError("cannot infer the attention-pool head count for a ModifiedResNet of width " + std::to_string(v.width) +
                       "; pass --vision-model with a JSON config giving vision_head_width");
  } else {
    v.name = "ViT-W" + std::to_string(v.width) + "-L" + std::to_string(v.layers) + "-P" + std::to_string(v.patch_size) + "-R" +
             std::to_string(v.image_resolution) + (v.mlp_width > 0 ? "-M" + std::to_string(v.mlp_width) : std::string());
    if (v.width % 64 != 0)
      throw ModelError("cannot infer the ViT head count: width " + std::to_string(v.width) +
                       " is not a multiple of 64; pass --vision-model with a JSON config giving vision_head_width");
  }
  notes.push_back("vision config inferred from the checkpoint shapes (" + v.name + ", embed_dim " + std::to_string(v.embed_dim) +
                  "); no official config matches, so " + std::to_string(v.heads()) +
                  " attention heads (64 per head, cn_clip's default vision_head_width) were ASSUMED; pass --vision-model if that is wrong");
  return v;
}

TextConfig infer_text_config(const StateDict& sd, std::vector<std::string>& notes) {
  if (!sd.contains("bert.embeddings.word_embeddings.weight"))
    throw ModelError("cannot infer the text tower: the checkpoint has no bert.embeddings.word_embeddings.weight; pass --text-model");
  TextConfig t;
  auto we = shape_of(sd, "bert.embeddings.word_embeddings.weight", 2);
  t.vocab_size = static_cast<int>(we[0]);
  t.hidden_size = static_cast<int>(we[1]);
  t.max_position_embeddings = static_cast<int>(shape_of(sd, "bert.embeddings.position_embeddings.weight", 2)[0]);
  t.type_vocab_size = static_cast<int>(shape_of(sd, "bert.embeddings.token_type_embeddings.weight", 2)[0]);
  t.num_layers = count_indexed(sd, "bert.encoder.layer.", ".attention.self.query.weight");
  if (t.num_layers < 1) throw ModelError("cannot infer the text tower: no bert.encoder.layer.0.* keys; pass --text-model");
  t.intermediate_size = static_cast<int>(shape_of(sd, "bert.encoder.layer.0.intermediate.dense.weight", 2)[0]);
  for (const auto& o : text_registry()) {
    if (same_text_shapes(o, t)) {
      TextConfig r = o;
      notes.push_back("text config inferred from the checkpoint shapes: they match the official " + o.name + " (" +
                      std::to_string(o.num_heads) + " attention heads)");
      return r;
    }
  }
  if (t.hidden_size % 64 != 0)
    throw ModelError("cannot infer the BERT head count: hidden size " + std::to_string(t.hidden_size) +
                     " is not a multiple of 64; pass --text-model with a JSON config");
  t.num_heads = t.hidden_size / 64;
  t.name = "BERT-H" + std::to_string(t.hidden_size) + "-L" + std::to_string(t.num_layers) + "-I" + std::to_string(t.intermediate_size);
  notes.push_back("text config inferred from the checkpoint shapes (" + t.name + ", vocab " + std::to_string(t.vocab_size) +
                  "); no official config matches, so " + std::to_string(t.num_heads) +
                  " attention heads (64 per head) and BERT's default dropout 0.1 were ASSUMED; the head count changes the "
                  "features, so pass --text-model with the training config if it differs");
  return t;
}


// -----------------------------------------------------------------------------------------------

VisionConfig vision_config_from_json(const nlohmann::json& j, const std::string& name) {
  return vision_from_json_src(j, name, "'" + name + "'");
}

TextConfig text_config_from_json(const nlohmann::json& j, const std::string& name) {
  return text_from_json_src(j, name, "'" + name + "'");
}

nlohmann::json to_json(const VisionConfig& c) {
  json j;
  j["embed_dim"] = c.embed_dim;
  j["image_resolution"] = c.image_resolution;
  if (c.resnet) {
    j["vision_layers"] = layers_string(c.resnet_layers);  // cn_clip writes RN50's as a string and eval()s it
  } else {
    j["vision_layers"] = c.layers;
  }
  j["vision_width"] = c.width;
  j["vision_patch_size"] = c.resnet ? json(nullptr) : json(c.patch_size);
  if (c.head_width != 64) j["vision_head_width"] = c.head_width;
  if (!c.resnet && c.mlp_width > 0 && c.mlp_width != 4 * c.width) j["vision_mlp_width"] = c.mlp_width;
  return j;
}

nlohmann::json to_json(const TextConfig& c) {
  json j;
  j["vocab_size"] = c.vocab_size;
  j["text_attention_probs_dropout_prob"] = c.attention_dropout;
  j["text_hidden_act"] = c.hidden_act;
  j["text_hidden_dropout_prob"] = c.hidden_dropout;
  j["text_hidden_size"] = c.hidden_size;
  j["text_initializer_range"] = c.initializer_range;
  j["text_intermediate_size"] = c.intermediate_size;
  j["text_max_position_embeddings"] = c.max_position_embeddings;
  j["text_num_attention_heads"] = c.num_heads;
  j["text_num_hidden_layers"] = c.num_layers;
  j["text_type_vocab_size"] = c.type_vocab_size;
  return j;
}

std::vector<std::string> official_vision_names() {
  std::vector<std::string> n;
  for (const auto& c : vision_registry()) n.push_back(c.name);
  return n;
}

std::vector<std::string> official_text_names() {
  std::vector<std::string> n;
  for (const auto& c : text_registry()) n.push_back(c.name);
  return n;
}

VisionConfig vision_config(const std::string& name_or_path) {
  for (const auto& c : vision_registry())
    if (c.name == name_or_path) return c;
  std::ifstream probe(name_or_path);
  if (!probe) {
    if (looks_like_path(name_or_path)) throw UsageError("cannot open vision model config file " + name_or_path);
    throw UsageError("unknown vision model '" + name_or_path + "'; known: " + join(official_vision_names(), ", ") +
                     " (or a JSON file in cn_clip's model_configs schema)");
  }
  return vision_from_json_src(read_json_file(name_or_path), file_stem(name_or_path), name_or_path);
}

TextConfig text_config(const std::string& name_or_path) {
  for (const auto& c : text_registry())
    if (c.name == name_or_path) return c;
  std::ifstream probe(name_or_path);
  if (!probe) {
    if (looks_like_path(name_or_path)) throw UsageError("cannot open text model config file " + name_or_path);
    throw UsageError("unknown text model '" + name_or_path + "'; known: " + join(official_text_names(), ", ") +
                     " (or a JSON file in cn_clip's model_configs schema)");
  }
  return text_from_json_src(read_json_file(name_or_path), file_stem(name_or_path), name_or_path);
}

InferredConfig infer_config(const StateDict& sd) {
  InferredConfig r;
  r.config.vision = infer_vision_config(sd, r.notes);
  r.config.text = infer_text_config(sd, r.notes);
  if (sd.contains("text_projection")) {
    const TensorData& tp = sd.at("text_projection");
    if (tp.shape.size() != 2 || tp.shape[0] != r.config.text.hidden_size || tp.shape[1] != r.config.vision.embed_dim)
      throw ModelError("checkpoint key 'text_projection' has shape " + tp.shape_str() + " but the towers need [" +
                       std::to_string(r.config.text.hidden_size) + ", " + std::to_string(r.config.vision.embed_dim) +
                       "]; the checkpoint is inconsistent");
  }
  return r;
}

std::string model_config_json(const ModelConfig& c) {
  nlohmann::json j = {{"vision", to_json(c.vision)}, {"text", to_json(c.text)}, {"vision_name", c.vision.name},
                      {"text_name", c.text.name}};
  return j.dump();
}

ModelConfig model_config_from_json(const std::string& json_text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    throw UsageError(where + ": model config is not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("vision") || !j.contains("text"))
    throw UsageError(where + ": model config needs \"vision\" and \"text\" objects");
  ModelConfig c;
  c.vision = vision_config_from_json(j["vision"], j.value("vision_name", std::string("vision")));
  c.text = text_config_from_json(j["text"], j.value("text_name", std::string("text")));
  return c;
}

InferredConfig resolve_config(const StateDict& sd, const std::string& vision, const std::string& text,
                              const ModelConfig* carried) {
  InferredConfig r;
  if (!vision.empty()) r.config.vision = vision_config(vision);
  else if (carried) r.config.vision = carried->vision;
  else r.config.vision = infer_vision_config(sd, r.notes);
  if (!text.empty()) r.config.text = text_config(text);
  else if (carried) r.config.text = carried->text;
  else r.config.text = infer_text_config(sd, r.notes);
  return r;
}

bool key_in_towers(const std::string& key, Towers t) {
  if (key.rfind("visual.", 0) == 0) return has_vision(t);
  if (key.rfind("bert.", 0) == 0 || key == "text_projection") return has_text(t);
  return true;
}

}  // namespace clip
