// cn_clip checkpoints and Hugging Face ChineseCLIP folders from a loaded model.
#include "clip/export/convert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <system_error>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/model/model.h"
#include "clip/model/tensor_torch.h"
#include "clip/text/tokenizer.h"

namespace clip {

namespace {

// The model's state as float32 CPU tensors (integer buffers keep their type), cn_clip names.
StateDict float32_state(ClipModel& model) {
  StateDict sd;
  for (auto& [name, t] : model_state(model)) {
    at::Tensor c = t.detach().to(at::kCPU);
    if (c.is_floating_point()) c = c.to(at::kFloat);
    sd.add(name, to_tensor_data(c.contiguous()));
  }
  return sd;
}

}  // namespace

void write_cnclip_checkpoint(const std::string& path, ClipModel& model, const CnclipWriteOptions& opt) {
  StateDict sd = float32_state(model);
  PyPtr state = PyValue::dict(/*ordered=*/true);
  for (const auto& k : sd.keys) state->set((opt.module_prefix ? "module." : "") + k, PyValue::from_tensor(sd.at(k)));
  PyPtr root = PyValue::dict();
  root->set("epoch", PyValue::integer(opt.epoch));
  root->set("step", PyValue::integer(opt.step));
  root->set("name", PyValue::str(opt.name));
  root->set("state_dict", state);
  root->set("model_config", PyValue::str(model_config_json(model->config())));
  save_torch_zip(path, root);
}


void write_hf_folder(const std::string& dir, ClipModel& model, const std::string& vocab_path, int context_length) {
  const ModelConfig& cfg = model->config();
  const double logit_scale = model->logit_scale().detach().to(at::kCPU).to(at::kDouble).item<double>();
  nlohmann::json config = hf_config_json(cfg, logit_scale);  // throws for ResNet before anything is written
  const Tokenizer tok = Tokenizer::load(vocab_path);         // vocab.txt or tokenizer.json
  make_dirs(dir);
  StateDict hf = cnclip_to_hf(float32_state(model));
  save_safetensors(path_join(dir, "model.safetensors"), hf);
  write_file_atomic(path_join(dir, "config.json"), config.dump(2) + "\n");
  write_file_atomic(path_join(dir, "vocab.txt"), tok.vocab_text());
  // transformers 5 reads the tokenizer from tokenizer.json (its fast BertTokenizer); older ones from vocab.txt.
  write_file_atomic(path_join(dir, "tokenizer.json"), tokenizer_json(tok));
  const int r = cfg.vision.image_resolution;
  nlohmann::json pre = {
      {"image_processor_type", "ChineseCLIPImageProcessor"},
      {"processor_class", "ChineseCLIPProcessor"},
      {"do_convert_rgb", true},
      {"do_resize", true},
      {"size", {{"height", r}, {"width", r}}},
      {"resample", 3},  // PIL.Image.BICUBIC
      {"do_center_crop", false},
      {"crop_size", {{"height", r}, {"width", r}}},
      {"do_rescale", true},
      {"rescale_factor", 1.0 / 255.0},
      {"do_normalize", true},
      {"image_mean", {kClipMean[0], kClipMean[1], kClipMean[2]}},
      {"image_std", {kClipStd[0], kClipStd[1], kClipStd[2]}},
  };
  write_file_atomic(path_join(dir, "preprocessor_config.json"), pre.dump(2) + "\n");
  nlohmann::json tok_config = {
      {"tokenizer_class", "BertTokenizer"},
      {"processor_class", "ChineseCLIPProcessor"},
      {"do_lower_case", true},
      {"tokenize_chinese_chars", true},
      {"strip_accents", nullptr},
      {"model_max_length", context_length},
      {"unk_token", tok.token(tok.unk_id())}, {"sep_token", tok.token(tok.sep_id())}, {"pad_token", "[PAD]"},
      {"cls_token", tok.token(tok.cls_id())}, {"mask_token", "[MASK]"},
  };
  write_file_atomic(path_join(dir, "tokenizer_config.json"), tok_config.dump(2) + "\n");
  log_info("wrote Hugging Face ChineseCLIP folder {} ({} tensors)", dir, hf.keys.size());
}

}  // namespace clip
