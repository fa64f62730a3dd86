// Writing a loaded model back out in the original's checkpoint layout and as a Hugging Face
// ChineseCLIP folder, and reading the Hugging Face config schema.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "clip/model/config.h"
#include "clip/model/hf_config.h"

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
// key names), vocab.txt and tokenizer.json (the vocab of vocab_path, a vocab.txt or a tokenizer.json; the
// tokenizer.json is what transformers 5's fast BertTokenizer reads), preprocessor_config.json,
// tokenizer_config.json.
// ModifiedResNet vision towers have no Hugging Face counterpart: UsageError.
void write_hf_folder(const std::string& dir, ClipModel& model, const std::string& vocab_path, int context_length);

}  // namespace clip
