// Option groups shared by the tools, as plain structs (no CLI11 here, so the core can take them).
// Each registers its flags with add_to(CLI::App&), defined in cli.cpp: the same spelling in every tool.
#pragma once
#include <string>

namespace CLI {
class App;
}

namespace clip {

// Model selection, the same flags in every tool that loads a model.
struct ModelOptions {
  std::string checkpoint;     // --checkpoint: torch.save .pt, HF folder / model.safetensors / pytorch_model.bin
  std::string vision_model;   // --vision-model: official name or JSON path (optional: inferred)
  std::string text_model;     // --text-model
  std::string vocab;          // --vocab: default vocab.txt beside the checkpoint
  int context_length = 52;    // --context-length
  void add_to(CLI::App& app, bool checkpoint_required = true);
};

// Execution: threads, device, precision, batch size, verbosity.
struct RuntimeOptions {
  int threads = 0;              // --threads (0 = all cores)
  std::string device = "cpu";   // --device cpu|cuda|cuda:N
  std::string precision = "fp32";  // --precision fp32|bf16|fp16|amp
  int batch_size = 64;          // --batch-size
  bool quiet = false, verbose = false;
  void add_to(CLI::App& app, const std::string& default_precision = "fp32");
  void apply() const;           // log level + thread count
};

// Data in the Flickr30k-CN layout: --data DIR --split NAME, or explicit --images / --texts.
struct DataOptions {
  std::string data_dir, split = "test", images, texts;
  bool strict = false;
  std::string on_error = "stop";  // --on-error stop|skip
  void add_to(CLI::App& app, bool with_split = true);
  // Fills images/texts from data_dir/split when they were not given explicitly.
  void resolve(bool need_images, bool need_texts);
};

}  // namespace clip
