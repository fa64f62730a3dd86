// Hugging Face ChineseCLIPConfig (config.json) <-> cn_clip model configs.
#include "clip/model/hf_config.h"

#include <cmath>
#include <string>
#include <type_traits>

#include "clip/base/error.h"

namespace clip {

nlohmann::json hf_config_json(const ModelConfig& cfg, double logit_scale) {
  const VisionConfig& v = cfg.vision;
  const TextConfig& t = cfg.text;
  if (v.resnet)
    throw UsageError("vision tower '" + v.name + "' is a ModifiedResNet, which Hugging Face's ChineseCLIPModel cannot "
                     "hold (it has ViT towers only); export it with --format cnclip or --format onnx instead");
  nlohmann::json text = {
      {"model_type", "chinese_clip_text_model"},
      {"vocab_size", t.vocab_size},
      {"hidden_size", t.hidden_size},
      {"num_hidden_layers", t.num_layers},
      {"num_attention_heads", t.num_heads},
      {"intermediate_size", t.intermediate_size},
      {"hidden_act", t.hidden_act},
      {"hidden_dropout_prob", t.hidden_dropout},
      {"attention_probs_dropout_prob", t.attention_dropout},
      {"max_position_embeddings", t.max_position_embeddings},
      {"type_vocab_size", t.type_vocab_size},
      {"initializer_range", t.initializer_range},
      {"initializer_factor", 1.0},
      {"layer_norm_eps", 1e-12},
      {"pad_token_id", 0},
      {"position_embedding_type", "absolute"},
      {"use_cache", true},
  };
  nlohmann::json vision = {
      {"model_type", "chinese_clip_vision_model"},
      {"hidden_size", v.width},
      {"intermediate_size", v.mlp()},
      {"projection_dim", v.embed_dim},
      {"num_hidden_layers", v.layers},
      {"num_attention_heads", v.heads()},
      {"num_channels", 3},
      {"image_size", v.image_resolution},
      {"patch_size", v.patch_size},
      {"hidden_act", "quick_gelu"},
      {"layer_norm_eps", 1e-5},
      {"attention_dropout", 0.0},
      {"initializer_range", 0.02},
      {"initializer_factor", 1.0},
  };
  return {
      {"architectures", {"ChineseCLIPModel"}},
      {"model_type", "chinese_clip"},
      {"projection_dim", v.embed_dim},
      {"logit_scale_init_value", logit_scale},
      {"initializer_factor", 1.0},
      {"text_config", text},
      {"vision_config", vision},
      {"torch_dtype", "float32"},
  };
}

namespace {

template <class T>
T get_or(const nlohmann::json& j, const char* key, T def, const std::string& where, const char* section) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  const std::string field = std::string(section) + key;
  try {
    if constexpr (std::is_same_v<T, int>) {
      if (!it->is_number_integer() && !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()))
        throw ModelError(where + ": " + field + " must be an integer, found " + it->dump());
    }
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ModelError(where + ": " + field + " has the wrong type (" + it->dump() + ")");
  }
}

// A value the towers cannot take: the error names the one field and what would be representable.
[[noreturn]] void unrepresentable(const std::string& where, const std::string& field, const nlohmann::json& value,
                                  const std::string& why) {
  throw ModelError(where + ": " + field + " = " + value.dump() + " cannot be represented: " + why +
                   "; this toolkit computes only cn_clip's architecture (a ChineseCLIP model with another " + field +
                   " would give other features)");
}

int positive(const nlohmann::json& j, const char* key, int def, const std::string& where, const char* section) {
  int v = get_or(j, key, def, where, section);
  if (v < 1) unrepresentable(where, std::string(section) + key, v, "must be a positive integer");
  return v;
}

// The LayerNorm eps the towers use (cn_clip fixes them): another value would change every feature.
void require_eps(const nlohmann::json& j, double expected, const std::string& where, const char* section) {
  double eps = get_or(j, "layer_norm_eps", expected, where, section);
  if (std::abs(eps - expected) > 1e-6 * expected)
    unrepresentable(where, std::string(section) + "layer_norm_eps", eps,
                    "this tower's LayerNorms use eps " + nlohmann::json(expected).dump() + " (cn_clip's)");
}

}  // namespace

ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& name, const std::string& file) {
  const std::string where = file.empty() ? name + ": config.json" : file;  // errors: "<where>: <field> ..."
  if (!j.is_object() || !j.contains("text_config") || !j.contains("vision_config"))
    throw ModelError(where + ": not a ChineseCLIPConfig (no text_config / vision_config)");
  const auto& tj = j["text_config"];
  const auto& vj = j["vision_config"];
  if (!tj.is_object() || !vj.is_object())
    throw ModelError(where + ": text_config and vision_config must be JSON objects");
  const char* T = "text_config.";
  const char* V = "vision_config.";
  ModelConfig c;
  // Defaults are ChineseCLIPTextConfig's / ChineseCLIPVisionConfig's (transformers omits defaults).
  c.text.vocab_size = positive(tj, "vocab_size", 30522, where, T);
  c.text.hidden_size = positive(tj, "hidden_size", 768, where, T);
  c.text.num_layers = positive(tj, "num_hidden_layers", 12, where, T);
  c.text.num_heads = positive(tj, "num_attention_heads", 12, where, T);
  if (c.text.hidden_size % c.text.num_heads != 0)
    unrepresentable(where, std::string(T) + "num_attention_heads", c.text.num_heads,
                    "it must divide text_config.hidden_size (" + std::to_string(c.text.hidden_size) + ")");
  c.text.intermediate_size = positive(tj, "intermediate_size", 3072, where, T);
  std::string act = get_or<std::string>(tj, "hidden_act", "gelu", where, T);
  // transformers' names for the activations cn_clip's BERT has (silu = swish, torch's tanh GELU = gelu_new).
  if (act == "silu") act = "swish";
  if (act == "gelu_pytorch_tanh") act = "gelu_new";
  if (act != "gelu" && act != "gelu_new" && act != "relu" && act != "swish")
    unrepresentable(where, std::string(T) + "hidden_act", act, "the text tower has gelu, gelu_new, relu and swish/silu");
  c.text.hidden_act = act;
  c.text.hidden_dropout = get_or(tj, "hidden_dropout_prob", 0.1, where, T);
  c.text.attention_dropout = get_or(tj, "attention_probs_dropout_prob", 0.1, where, T);
  c.text.max_position_embeddings = positive(tj, "max_position_embeddings", 512, where, T);
  c.text.type_vocab_size = positive(tj, "type_vocab_size", 2, where, T);
  c.text.initializer_range = get_or(tj, "initializer_range", 0.02, where, T);
  require_eps(tj, 1e-12, where, T);
  const std::string pos_type = get_or<std::string>(tj, "position_embedding_type", "absolute", where, T);
  if (pos_type != "absolute")
    unrepresentable(where, std::string(T) + "position_embedding_type", pos_type, "the text tower has absolute positions only");

  c.vision.resnet = false;
  c.vision.width = positive(vj, "hidden_size", 768, where, V);
  c.vision.layers = positive(vj, "num_hidden_layers", 12, where, V);
  const int heads = positive(vj, "num_attention_heads", 12, where, V);
  if (c.vision.width % heads != 0)
    unrepresentable(where, std::string(V) + "num_attention_heads", heads,
                    "it must divide vision_config.hidden_size (" + std::to_string(c.vision.width) + ")");
  c.vision.head_width = c.vision.width / heads;
  const int mlp = positive(vj, "intermediate_size", 3072, where, V);
  c.vision.mlp_width = mlp == 4 * c.vision.width ? 0 : mlp;
  c.vision.image_resolution = positive(vj, "image_size", 224, where, V);
  c.vision.patch_size = positive(vj, "patch_size", 32, where, V);
  if (c.vision.image_resolution % c.vision.patch_size != 0)
    unrepresentable(where, std::string(V) + "image_size", c.vision.image_resolution,
                    "it must be a multiple of vision_config.patch_size (" + std::to_string(c.vision.patch_size) + ")");
  const int channels = positive(vj, "num_channels", 3, where, V);
  if (channels != 3) unrepresentable(where, std::string(V) + "num_channels", channels, "images are RGB (3 channels)");
  const std::string vact = get_or<std::string>(vj, "hidden_act", "quick_gelu", where, V);
  if (vact != "quick_gelu")
    unrepresentable(where, std::string(V) + "hidden_act", vact, "the ViT's MLP uses quick_gelu (cn_clip's QuickGELU)");
  require_eps(vj, 1e-5, where, V);
  // ChineseCLIPModel projects both towers to the top-level projection_dim (vision_config's is unused).
  c.vision.embed_dim = positive(j, "projection_dim", 512, where, "");
  c.vision.name = name + "-vision";
  c.text.name = name + "-text";
  for (const auto& n : official_vision_names()) {
    VisionConfig o = vision_config(n);
    if (!o.resnet && o.width == c.vision.width && o.layers == c.vision.layers && o.head_width == c.vision.head_width &&
        o.patch_size == c.vision.patch_size && o.image_resolution == c.vision.image_resolution &&
        o.embed_dim == c.vision.embed_dim && o.mlp() == c.vision.mlp())
      c.vision.name = n;
  }
  for (const auto& n : official_text_names()) {
    TextConfig o = text_config(n);
    if (o.hidden_size == c.text.hidden_size && o.num_layers == c.text.num_layers && o.num_heads == c.text.num_heads &&
        o.intermediate_size == c.text.intermediate_size && o.vocab_size == c.text.vocab_size &&
        o.hidden_act == c.text.hidden_act && o.max_position_embeddings == c.text.max_position_embeddings &&
        o.type_vocab_size == c.text.type_vocab_size)
      c.text.name = n;
  }
  return c;
}

}  // namespace clip
