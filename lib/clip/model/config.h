// Model configs in cn_clip's own JSON schema, and the registry of the official names.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace clip {

struct StateDict;

struct VisionConfig {
  std::string name;                 // "ViT-B-16", or the JSON file's stem
  int embed_dim = 512;
  int image_resolution = 224;
  bool resnet = false;              // vision_layers given as a list ("[3,4,6,3]") => ModifiedResNet
  int layers = 12;                  // ViT depth
  std::vector<int> resnet_layers;   // ModifiedResNet blocks per stage
  int width = 768;                  // vision_width
  int patch_size = 16;              // vision_patch_size (ViT only)
  int head_width = 64;              // vision_head_width (optional key, default 64)
  // ViT MLP hidden width: optional key vision_mlp_width (not cn_clip's: its ViT fixes 4 x width; written
  // only when it differs). 0 = 4 x width; kept 0 whenever it equals that, so configs compare equal.
  int mlp_width = 0;
  int heads() const { return resnet ? width * 32 / head_width : width / head_width; }
  int mlp() const { return mlp_width > 0 ? mlp_width : 4 * width; }
};

struct TextConfig {
  std::string name;                 // "RoBERTa-wwm-ext-base-chinese", or the JSON file's stem
  int vocab_size = 21128;
  int hidden_size = 768;            // text_hidden_size
  int num_layers = 12;              // text_num_hidden_layers
  int num_heads = 12;               // text_num_attention_heads
  int intermediate_size = 3072;     // text_intermediate_size
  std::string hidden_act = "gelu";
  double hidden_dropout = 0.1;
  double attention_dropout = 0.1;
  int max_position_embeddings = 512;
  int type_vocab_size = 2;
  double initializer_range = 0.02;
};

// Which towers a job needs: a text-only job loads the text tower and the projection, an image job
// the vision tower; logit_scale always.
enum class Towers : uint8_t { both, text, vision };
inline bool has_text(Towers t) { return t != Towers::vision; }
inline bool has_vision(Towers t) { return t != Towers::text; }
// Whether a cn_clip state-dict key belongs to a tower of `t` (visual.* to vision; bert.* and
// text_projection to text; anything else, e.g. logit_scale, to both).
bool key_in_towers(const std::string& key, Towers t);

// How load_weights gives stored tensors to the parameters. copy: every parameter gets its own copy.
// share: a CPU parameter whose stored tensor has its dtype and is contiguous becomes a view of the
// stored bytes (for a mapped checkpoint: the file's pages, copy-on-write, see MappedFile); the
// others get one copy.
enum class WeightUse : uint8_t { copy, share };

struct ModelConfig {
  VisionConfig vision;
  TextConfig text;
  std::string name() const { return vision.name + "@" + text.name; }  // cn_clip's struct string
  int embed_dim() const { return vision.embed_dim; }
};

// cn_clip JSON <-> structs (exact key names of cn_clip/clip/model_configs/*.json).
VisionConfig vision_config_from_json(const nlohmann::json& j, const std::string& name);
TextConfig text_config_from_json(const nlohmann::json& j, const std::string& name);
nlohmann::json to_json(const VisionConfig& c);
nlohmann::json to_json(const TextConfig& c);

// A name from the built-in registry or a path to a JSON file. Unknown names throw UsageError
// listing the known ones; unreadable/malformed JSON throws UsageError naming the file and key.
VisionConfig vision_config(const std::string& name_or_path);
TextConfig text_config(const std::string& name_or_path);
std::vector<std::string> official_vision_names();
std::vector<std::string> official_text_names();

// Architecture from tensor shapes. Head counts (which no shape holds) come from the official
// config whose shapes match, else 64 per head; `notes` says what was assumed, for the log.
struct InferredConfig {
  ModelConfig config;
  std::vector<std::string> notes;
};
InferredConfig infer_config(const StateDict& sd);
VisionConfig infer_vision_config(const StateDict& sd, std::vector<std::string>& notes);
TextConfig infer_text_config(const StateDict& sd, std::vector<std::string>& notes);
// Resolves the config for a checkpoint, per tower: the explicit name/JSON path, else the tower of
// `carried` (a config the checkpoint or a store recorded) when given, else shape inference.
InferredConfig resolve_config(const StateDict& sd, const std::string& vision, const std::string& text,
                              const ModelConfig* carried = nullptr);

// The whole config as one JSON object {"vision": {...}, "text": {...}, "vision_name", "text_name"}
// (cn_clip's schema inside): stored in our checkpoints ("model_config") and feature stores so that
// they describe themselves (model/loader.h reads it back).
std::string model_config_json(const ModelConfig& c);
ModelConfig model_config_from_json(const std::string& json_text, const std::string& where);

}  // namespace clip
