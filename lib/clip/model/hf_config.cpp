// Hugging Face ChineseCLIPConfig (config.json) <-> cn_clip model configs.
#include "clip/model/hf_config.h"

#include <cmath>
#include <string>

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
      {"intermediate_size", 4 * v.width},
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
T get_or(const nlohmann::json& j, const char* key, T def, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ModelError(where + ": config key '" + key + "' has the wrong type (" + it->dump() + ")");
  }
}

}  // namespace

ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("text_config") || !j.contains("vision_config"))
    throw ModelError(where + ": not a ChineseCLIPConfig (no text_config / vision_config)");
  const auto& tj = j["text_config"];
  const auto& vj = j["vision_config"];
  ModelConfig c;
  // Defaults are ChineseCLIPTextConfig's / ChineseCLIPVisionConfig's (transformers omits defaults).
  c.text.vocab_size = get_or(tj, "vocab_size", 30522, where);
  c.text.hidden_size = get_or(tj, "hidden_size", 768, where);
  c.text.num_layers = get_or(tj, "num_hidden_layers", 12, where);
  c.text.num_heads = get_or(tj, "num_attention_heads", 12, where);
  c.text.intermediate_size = get_or(tj, "intermediate_size", 3072, where);
  c.text.hidden_act = get_or<std::string>(tj, "hidden_act", "gelu", where);
  c.text.hidden_dropout = get_or(tj, "hidden_dropout_prob", 0.1, where);
  c.text.attention_dropout = get_or(tj, "attention_probs_dropout_prob", 0.1, where);
  c.text.max_position_embeddings = get_or(tj, "max_position_embeddings", 512, where);
  c.text.type_vocab_size = get_or(tj, "type_vocab_size", 2, where);
  c.text.initializer_range = get_or(tj, "initializer_range", 0.02, where);
  c.vision.resnet = false;
  c.vision.width = get_or(vj, "hidden_size", 768, where);
  c.vision.layers = get_or(vj, "num_hidden_layers", 12, where);
  const int heads = get_or(vj, "num_attention_heads", 12, where);
  if (heads <= 0 || c.vision.width % heads != 0)
    throw ModelError(where + ": vision_config hidden_size " + std::to_string(c.vision.width) +
                     " is not divisible by num_attention_heads " + std::to_string(heads));
  c.vision.head_width = c.vision.width / heads;
  c.vision.image_resolution = get_or(vj, "image_size", 224, where);
  c.vision.patch_size = get_or(vj, "patch_size", 32, where);
  c.vision.embed_dim = get_or(j, "projection_dim", get_or(vj, "projection_dim", 512, where), where);
  c.vision.name = where + "-vision";
  c.text.name = where + "-text";
  for (const auto& n : official_vision_names()) {
    VisionConfig o = vision_config(n);
    if (!o.resnet && o.width == c.vision.width && o.layers == c.vision.layers && o.head_width == c.vision.head_width &&
        o.patch_size == c.vision.patch_size && o.image_resolution == c.vision.image_resolution &&
        o.embed_dim == c.vision.embed_dim)
      c.vision.name = n;
  }
  for (const auto& n : official_text_names()) {
    TextConfig o = text_config(n);
    if (o.hidden_size == c.text.hidden_size && o.num_layers == c.text.num_layers && o.num_heads == c.text.num_heads &&
        o.intermediate_size == c.text.intermediate_size && o.vocab_size == c.text.vocab_size)
      c.text.name = n;
  }
  return c;
}

}  // namespace clip
