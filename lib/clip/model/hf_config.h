// Hugging Face ChineseCLIPConfig (config.json) <-> cn_clip model configs.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "clip/model/config.h"

namespace clip {

// ChineseCLIPConfig JSON for a config (logit_scale_init_value = the model's current logit_scale).
nlohmann::json hf_config_json(const ModelConfig& cfg, double logit_scale);
// The inverse: a ModelConfig from a ChineseCLIPConfig config.json (ViT vision towers only). Tower
// names are the official ones whose values match, else "<name>-vision" / "<name>-text". Any value
// the towers cannot compute (an activation other than the ViT's quick_gelu or BERT's gelu/gelu_new/
// relu/swish, other LayerNorm eps, relative positions, non-RGB input, heads that do not divide the
// width, ...) throws ModelError naming `file` (else "<name>: config.json") and the one field.
// The vision intermediate_size becomes VisionConfig::mlp_width; the top-level projection_dim the
// projection size of both towers (as in ChineseCLIPModel).
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& name, const std::string& file = "");

}  // namespace clip
