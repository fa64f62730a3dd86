// clip-finetune's settings in their JSON form (params.json); the flags are in cli/options.cpp.
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/train/train.h"
#include "clip/train/train_internal.h"

namespace clip {

nlohmann::json TrainOptions::to_json() const {
  return nlohmann::json{
      {"checkpoint", model.checkpoint},
      {"vision_model", model.vision_model},
      {"text_model", model.text_model},
      {"vocab", model.vocab},
      {"context_length", model.context_length},
      {"data_dir", data_dir},
      {"train_split", train_split},
      {"val_split", val_split},
      {"no_validation", no_validation},
      {"lr", lr},
      {"wd", wd},
      {"beta1", beta1},
      {"beta2", beta2},
      {"eps", eps},
      {"warmup", warmup},
      {"batch_size", runtime.batch_size},
      {"valid_batch_size", valid_batch_size},
      {"max_epochs", max_epochs},
      {"max_steps", max_steps},
      {"accum_freq", accum_freq},
      {"use_augment", use_augment},
      {"freeze_vision", freeze_vision},
      {"grad_checkpointing", grad_checkpointing},
      {"seed", seed},
      {"valid_step_interval", valid_step_interval},
      {"valid_epoch_interval", valid_epoch_interval},
      {"save_step_frequency", save_step_frequency},
      {"save_epoch_frequency", save_epoch_frequency},
      {"log_interval", log_interval},
      {"precision", runtime.precision},
      {"device", runtime.device},
      {"threads", runtime.threads},
      {"workers", workers},
      {"nproc_per_node", nproc_per_node},
      {"dist_backend", dist_backend},
      {"dist_timeout_s", dist_timeout_s},
      {"output_dir", output_dir},
      {"name", name},
  };
}

TrainOptions TrainOptions::from_json(const nlohmann::json& j) {
  TrainOptions o;
  auto get = [&](const char* k, auto& field) {
    if (j.contains(k) && !j[k].is_null()) j[k].get_to(field);
  };
  get("checkpoint", o.model.checkpoint);
  get("vision_model", o.model.vision_model);
  get("text_model", o.model.text_model);
  get("vocab", o.model.vocab);
  get("context_length", o.model.context_length);
  get("data_dir", o.data_dir);
  get("train_split", o.train_split);
  get("val_split", o.val_split);
  get("no_validation", o.no_validation);
  get("lr", o.lr);
  get("wd", o.wd);
  get("beta1", o.beta1);
  get("beta2", o.beta2);
  get("eps", o.eps);
  get("warmup", o.warmup);
  get("batch_size", o.runtime.batch_size);
  get("valid_batch_size", o.valid_batch_size);
  get("max_epochs", o.max_epochs);
  get("max_steps", o.max_steps);
  get("accum_freq", o.accum_freq);
  get("use_augment", o.use_augment);
  get("freeze_vision", o.freeze_vision);
  get("grad_checkpointing", o.grad_checkpointing);
  get("seed", o.seed);
  get("valid_step_interval", o.valid_step_interval);
  get("valid_epoch_interval", o.valid_epoch_interval);
  get("save_step_frequency", o.save_step_frequency);
  get("save_epoch_frequency", o.save_epoch_frequency);
  get("log_interval", o.log_interval);
  get("precision", o.runtime.precision);
  get("device", o.runtime.device);
  get("threads", o.runtime.threads);
  get("workers", o.workers);
  get("nproc_per_node", o.nproc_per_node);
  get("dist_backend", o.dist_backend);
  get("dist_timeout_s", o.dist_timeout_s);
  get("output_dir", o.output_dir);
  get("name", o.name);
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
