// Hugging Face ChineseCLIPConfig (config.json) <-> cn_clip model configs.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "clip/model/config.h"

namespace clip {

// ChineseCLIPConfig JSON for a config (logit_scale_init_value = the model's current logit_scale).
nlohmann::json hf_config_json(const ModelConfig& cfg, double logit_scale);
// The inverse: a ModelConfig from a ChineseCLIPConfig config.json (ViT vision towers only). Tower
// names are the official ones whose values match, else "<where>-vision" / "<where>-text".
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where);

}  // namespace clip
