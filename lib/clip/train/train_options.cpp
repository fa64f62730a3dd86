// clip-finetune's settings in their JSON form (params.json); the flags are in cli/options.cpp.
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/train/train.h"
#include "clip/train/train_internal.h"

namespace clip {

namespace {

// Every saved setting with its params.json key, in one list for both directions.
template <class Options, class F>
void for_each_setting(Options& o, F&& f) {
  f("checkpoint", o.model.checkpoint);
  f("vision_model", o.model.vision_model);
  f("text_model", o.model.text_model);
  f("vocab", o.model.vocab);
  f("context_length", o.model.context_length);
  f("data_dir", o.data_dir);
  f("train_split", o.train_split);
  f("val_split", o.val_split);
  f("no_validation", o.no_validation);
  f("on_error", o.on_error);
  f("lr", o.lr);
  f("wd", o.wd);
  f("beta1", o.beta1);
  f("beta2", o.beta2);
  f("eps", o.eps);
  f("warmup", o.warmup);
  f("batch_size", o.runtime.batch_size);
  f("valid_batch_size", o.valid_batch_size);
  f("max_epochs", o.max_epochs);
  f("max_steps", o.max_steps);
  f("accum_freq", o.accum_freq);
  f("use_augment", o.use_augment);
  f("freeze_vision", o.freeze_vision);
  f("grad_checkpointing", o.grad_checkpointing);
  f("cuda_graph", o.cuda_graph);
  f("seed", o.seed);
  f("valid_step_interval", o.valid_step_interval);
  f("valid_epoch_interval", o.valid_epoch_interval);
  f("save_step_frequency", o.save_step_frequency);
  f("save_epoch_frequency", o.save_epoch_frequency);
  f("log_interval", o.log_interval);
  f("precision", o.runtime.precision);
  f("device", o.runtime.device);
  f("threads", o.runtime.threads);
  f("workers", o.workers);
  f("output_dir", o.output_dir);
  f("name", o.name);
  f("nproc_per_node", o.nproc_per_node);
  f("dist_backend", o.dist_backend);
  f("dist_timeout_s", o.dist_timeout_s);
}

}  // namespace

nlohmann::json TrainOptions::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for_each_setting(*this, [&](const char* key, const auto& field) { j[key] = field; });
  return j;
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
  TrainOptions o;
  for_each_setting(o, [&](const char* key, auto& field) {
    if (j.contains(key) && !j[key].is_null()) j[key].get_to(field);
  });
  return o;
}

std::string detail::resume_run_dir(const std::string& resume) {
  if (is_directory(resume)) return resume;
  // <run>/checkpoints/<file>.pt
  std::string dir = path_dirname(resume);
  if (dir.size() >= 11 && dir.compare(dir.size() - 11, 11, "checkpoints") == 0) return path_dirname(dir);
  return dir;
}

TrainOptions TrainOptions::stored_for_resume(const std::string& resume) {
  std::string run = detail::resume_run_dir(resume);
  std::string path = path_join(run, "params.json");
  if (!file_exists(path))
    throw UsageError("--resume " + resume + ": no params.json in '" + run +
                     "' (not a clip-finetune run folder); to start new training from a checkpoint's weights use "
                     "--checkpoint instead");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(path + ": not valid JSON (" + e.what() + ")");
  }
  TrainOptions o = from_json(j.value("options", nlohmann::json::object()));
  o.resume = resume;
  o.output_dir = run;
  return o;
}

}  // namespace clip
