// Writing a loaded model back out in the original's checkpoint layout and as a Hugging Face
// ChineseCLIP folder, and reading the Hugging Face config schema.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "clip/config.h"

namespace clip {

class ClipModel;

struct CnclipWriteOptions {
  int64_t epoch = 0, step = 0;
  std::string name = "clip-export";  // the original's experiment name field
  bool module_prefix = true;         // "module." keys, as the released files (DDP state dicts)
};

// torch.save zip of {epoch, step, name, state_dict (OrderedDict, float32), model_config}: loadable by
// torch.load and by cn_clip (which ignores the extra "model_config" key, our config JSON string).
void write_cnclip_checkpoint(const std::string& path, ClipModel& model, const CnclipWriteOptions& opt = {});

// A Hugging Face ChineseCLIP folder: config.json (ChineseCLIPConfig schema), model.safetensors (HF
// key names), vocab.txt (copied from vocab_path), preprocessor_config.json, tokenizer_config.json.
// ModifiedResNet vision towers have no Hugging Face counterpart: UsageError.
void write_hf_folder(const std::string& dir, ClipModel& model, const std::string& vocab_path, int context_length);

// ChineseCLIPConfig JSON for a config (logit_scale_init_value = the model's current logit_scale).
nlohmann::json hf_config_json(const ModelConfig& cfg, double logit_scale);
// The inverse: a ModelConfig from a ChineseCLIPConfig config.json (ViT vision towers only). Tower
// names are the official ones whose values match, else "<where>-vision" / "<where>-text".
ModelConfig model_config_from_hf(const nlohmann::json& j, const std::string& where);

}  // namespace clip
