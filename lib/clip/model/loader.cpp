#include "clip/model/loader.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/model/hf_config.h"
#include "clip/model/model.h"
#include "clip/text/tokenizer.h"

namespace clip {

std::optional<ModelConfig> carried_config(const Checkpoint& ck) {
  if (ck.root && ck.root->kind == PyValue::Kind::dict) {
    if (PyPtr mc = ck.root->get("model_config"); mc && mc->kind == PyValue::Kind::string)
      return model_config_from_json(mc->s, ck.path + ": model_config");
  }
  if (!ck.hf_config_json.empty()) {
    nlohmann::json hj = nlohmann::json::parse(ck.hf_config_json, nullptr, /*allow_exceptions=*/false);
    if (hj.is_discarded() || !hj.is_object())
      throw ModelError(ck.path + ": config.json is not valid JSON; restore the folder's config.json as "
                       "transformers wrote it, or pass --vision-model and --text-model");
    if (!hj.contains("vision_config") || !hj.contains("text_config"))
      throw ModelError(ck.path + ": config.json has no vision_config/text_config (not a ChineseCLIPConfig); pass "
                       "--vision-model and --text-model");
    return model_config_from_hf(hj, path_basename(ck.path), path_join(ck.path, "config.json"));
  }
  return std::nullopt;
}

ModelSource resolve_model(const ModelOptions& mo, bool need_vocab, const std::vector<std::string>& vocab_dirs) {
  ModelSource src;
  std::optional<ModelConfig> carried;
  std::string carried_from;
  if (!mo.checkpoint.empty()) {
    log_debug("reading checkpoint {}", mo.checkpoint);
    src.checkpoint = load_checkpoint(mo.checkpoint);
    log_debug("checkpoint read: {} tensors", src.checkpoint->state_dict.keys.size());
    carried = carried_config(*src.checkpoint);
    carried_from = mo.checkpoint;
    if (src.checkpoint->had_module_prefix) log_debug("stripped 'module.' from checkpoint keys");
    for (const auto& k : src.checkpoint->dropped_keys) log_debug("ignored checkpoint key {}", k);
  }
  if (!carried && mo.known_config) {
    carried = mo.known_config;
    carried_from = mo.known_config_source;
  }
  if (!src.checkpoint && (mo.vision_model.empty() || mo.text_model.empty()) && !carried)
    throw UsageError("without --checkpoint the model needs --vision-model and --text-model (official names or cn_clip "
                     "JSON configs)");
  // Per tower: the explicit flag, then the carried config, then shape inference.
  static const StateDict kNoTensors;
  const StateDict& sd = src.checkpoint ? src.checkpoint->state_dict : kNoTensors;
  InferredConfig ic = resolve_config(sd, mo.vision_model, mo.text_model, carried ? &*carried : nullptr);
  src.config = ic.config;
  src.notes = ic.notes;
  if (carried && (mo.vision_model.empty() || mo.text_model.empty()))
    src.notes.push_back("model config " + carried->name() + " as recorded in " + carried_from);
  for (const auto& n : src.notes) log_info("{}", n);

  if (need_vocab) {
    std::vector<std::string> dirs;
    if (!mo.text_model.empty() && file_exists(mo.text_model) && !is_directory(mo.text_model))
      dirs.push_back(path_dirname(mo.text_model));
    dirs.insert(dirs.end(), vocab_dirs.begin(), vocab_dirs.end());
    src.vocab_path = find_vocab(mo.vocab, mo.checkpoint, dirs);
  }
  if (mo.context_length > src.config.text.max_position_embeddings)
    throw UsageError("--context-length " + std::to_string(mo.context_length) + " exceeds the text tower's " +
                     std::to_string(src.config.text.max_position_embeddings) + " position embeddings");
  return src;
}

void check_vocab_fits(const Tokenizer& tok, const TextConfig& tc) {
  if (tok.vocab_size() > tc.vocab_size)
    throw ModelError(fmt::format("vocab {} has {} tokens but the text tower {} embeds only {}: use the vocab the model "
                                 "was made for (--vocab) or a text config with vocab_size >= {}",
                                 tok.path(), tok.vocab_size(), tc.name, tc.vocab_size, tok.vocab_size()));
}

ClipModel build_model(const ModelSource& src, Towers towers, WeightUse use) {
  // A strict load overwrites every parameter: filling them first would only cost time and memory.
  ParamFillScope fill(src.checkpoint ? ParamFill::uninitialised : ParamFill::values);
  ClipModel model(src.config, towers);
  log_debug("model built");
  if (src.checkpoint) {
    // The pages parsing mapped (zip directory, pickle) are not read again: unmapped (they stay in the
    // page cache; the tensors' pages are mapped again as the weights are read). Nothing writes to a
    // checkpoint's mapping, so dropping its pages loses nothing.
    std::vector<std::pair<const void*, size_t>> mapped;
    for (const auto& m : src.checkpoint->maps)
      if (m && m->data()) {
        mapped.emplace_back(m->data(), m->size());
        ::madvise(const_cast<uint8_t*>(m->data()), m->size(), MADV_DONTNEED);
      }
    load_weights(model, src.checkpoint->state_dict, /*strict=*/true, use, mapped);
    src.checkpoint->check_intact();
    log_debug("weights loaded");
  }
  return model;
}

}  // namespace clip
