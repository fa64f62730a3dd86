// cn_clip checkpoints and Hugging Face ChineseCLIP folders from a loaded model.
#include "clip/convert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <system_error>

#include "clip/checkpoint.h"
#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/image.h"
#include "clip/log.h"
#include "clip/model.h"
#include "clip/tensor_torch.h"

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

void write_hf_folder(const std::string& dir, ClipModel& model, const std::string& vocab_path, int context_length) {
  const ModelConfig& cfg = model->config();
  const double logit_scale = model->logit_scale().detach().to(at::kCPU).to(at::kDouble).item<double>();
  nlohmann::json config = hf_config_json(cfg, logit_scale);  // throws for ResNet before anything is written
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw IoError("cannot create folder '" + dir + "': " + ec.message());
  StateDict hf = cnclip_to_hf(float32_state(model));
  save_safetensors(path_join(dir, "model.safetensors"), hf);
  write_file_atomic(path_join(dir, "config.json"), config.dump(2) + "\n");
  write_file_atomic(path_join(dir, "vocab.txt"), read_file(vocab_path));
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
  nlohmann::json tok = {
      {"tokenizer_class", "BertTokenizer"},
      {"processor_class", "ChineseCLIPProcessor"},
      {"do_lower_case", true},
      {"tokenize_chinese_chars", true},
      {"model_max_length", context_length},
      {"unk_token", "[UNK]"}, {"sep_token", "[SEP]"}, {"pad_token", "[PAD]"}, {"cls_token", "[CLS]"},
      {"mask_token", "[MASK]"},
  };
  write_file_atomic(path_join(dir, "tokenizer_config.json"), tok.dump(2) + "\n");
  log_info("wrote Hugging Face ChineseCLIP folder {} ({} tensors)", dir, hf.keys.size());
}

}  // namespace clip
