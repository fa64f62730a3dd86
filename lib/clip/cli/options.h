// The one option table: the flag groups that several tools share, registered on a CLI::App (or an
// option group of one) with the same spelling, help and checks in every tool. The core takes the
// plain structs (ModelOptions in model/loader.h, RuntimeOptions in base/runtime.h, DataOptions in
// data/dataset.h, ImageOptions in image/image.h, TrainOptions in train/train.h); only this layer knows CLI11.
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "clip/base/runtime.h"
#include "clip/data/dataset.h"
#include "clip/image/image.h"
#include "clip/model/loader.h"

namespace clip {

struct TrainOptions;
struct SearchOptions;

// --checkpoint/-c, --vision-model, --text-model, --vocab, --context-length.
void add_model_options(CLI::App& app, ModelOptions& mo, bool checkpoint_required = true,
                       const std::string& checkpoint_help = "");

// Which runtime flags a tool has beyond the common ones (--threads/-j, --quiet/-q, --verbose/-v).
struct RuntimeFlags {
  bool device = true, precision = true, batch_size = true;
  std::vector<std::string> precisions{"fp32", "bf16", "fp16", "amp"};
  std::string default_precision = "fp32";  // empty: keep the value the options already hold
  std::string batch_help = "Batch size";
  std::string precision_help = "(fp16 on CUDA only; amp = bf16 autocast)";
};
void add_runtime_options(CLI::App& app, RuntimeOptions& ro, const RuntimeFlags& flags = {});

// --decode exact|fast|device: how images are decoded for the model (tools that encode images).
void add_image_options(CLI::App& app, ImageOptions& io);

// --on-error stop|skip (the one error policy; also part of add_data_options).
void add_on_error_option(CLI::App& app, std::string& on_error, const std::string& help = "");

// --data, --split, --images, --texts, --strict, --on-error.
void add_data_options(CLI::App& app, DataOptions& d, bool with_split = true);

// Every clip-finetune flag (the model and runtime groups above, plus the recipe's own).
void add_train_options(CLI::App& app, TrainOptions& o);

// --version printing "<tool> <version>" (every tool).
// --index (repeatable: shards searched as one), --exact, --nprobe, --ef, --candidates (clip-query, clip-serve).
void add_search_options(CLI::App& app, std::vector<std::string>& index, SearchOptions& so, const std::string& index_help);

void add_version_flag(CLI::App& app);

}  // namespace clip
