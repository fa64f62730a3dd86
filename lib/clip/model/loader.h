// The one model loader of every tool and of the trainer: a checkpoint (cn_clip .pt, our own, a Hugging
// Face folder / model.safetensors / pytorch_model.bin) plus optional --vision-model/--text-model, plus
// the config the checkpoint (or a feature store, or a run folder) carries; shape inference only for
// what none of them says; one vocab search; one log line per assumption.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "clip/io/checkpoint.h"
#include "clip/model/config.h"

namespace clip {

class ClipModel;
class Tokenizer;

// What the user asked for (the model flags, the same in every tool).
struct ModelOptions {
  std::string checkpoint;     // --checkpoint: torch.save .pt, HF folder / model.safetensors / pytorch_model.bin
  std::string vision_model;   // --vision-model: official name or JSON path (optional: inferred)
  std::string text_model;     // --text-model
  std::string vocab;          // --vocab: default vocab.txt beside the checkpoint
  int context_length = 52;    // --context-length
  // A config known from elsewhere (a feature store's or a run folder's record), used for any tower
  // that neither the flags nor the checkpoint describe; `known_config_source` names it for the log.
  std::optional<ModelConfig> known_config;
  std::string known_config_source;
  // The towers the job needs (set by the tool from what it encodes, not a flag).
  Towers towers = Towers::both;
};

// A resolved model: its config (and where each tower's came from), the checkpoint (if any), the vocab.
struct ModelSource {
  ModelConfig config;
  std::vector<std::string> notes;      // what was assumed or taken from where, for the log
  std::optional<Checkpoint> checkpoint;
  std::string vocab_path;              // empty when not asked for
};

// Reads the checkpoint (when given) and resolves the config, per tower: the explicit flag, else the
// config the checkpoint carries (our "model_config" entry, a Hugging Face config.json), else
// mo.known_config, else shape inference. Without a checkpoint both towers must be named. When
// need_vocab, finds the vocab (find_vocab: --vocab, beside the checkpoint, beside a text config JSON,
// then in `vocab_dirs`) and checks that it fits the text tower. Throws UsageError / ModelError / IoError.
ModelSource resolve_model(const ModelOptions& mo, bool need_vocab = true,
                          const std::vector<std::string>& vocab_dirs = {});

// The config a checkpoint describes itself with (our "model_config", or an HF config.json), if any.
std::optional<ModelConfig> carried_config(const Checkpoint& ck);

// ModelError when the vocab has more tokens than the text tower embeds.
void check_vocab_fits(const Tokenizer& tok, const TextConfig& text);

// Builds the model of `src.config` (only the towers asked for) and loads the checkpoint's weights
// (strict) when it has one; a model without a checkpoint holds zeros until initialize_parameters.
// Parameters a checkpoint overwrites are never filled first. With WeightUse::share (inference),
// float32 weights of a mapped checkpoint are used in place (see load_weights). Throws IoError when
// the checkpoint file changed under its map meanwhile.
ClipModel build_model(const ModelSource& src, Towers towers = Towers::both, WeightUse use = WeightUse::copy);

}  // namespace clip
