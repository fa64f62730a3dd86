// Shared command-line plumbing: every tool's main() is `return clip::run_main(argc, argv, tool)`,
// and option groups spelled the same way in every tool register themselves on a CLI::App.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "clip/error.h"

namespace clip {

// Parse inside a tool: help/version print to stdout and return 0, parse errors return kExitUsage.
#define CLIP_PARSE(app, argc, argv)                         \
  try {                                                     \
    (app).parse((argc), (argv));                            \
  } catch (const CLI::ParseError& e) {                      \
    int rc_ = (app).exit(e);                                \
    return rc_ == 0 ? ::clip::kExitOk : ::clip::kExitUsage; \
  }

// Runs a tool: BLAS set-up, SIGPIPE handling, one catch mapping errors to exit codes, and a final
// check that stdout was written completely (a closed pipe counts as success, a full disk does not).
int run_main(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body);

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

// Output format for records on stdout.
enum class OutFormat { jsonl, tsv, cnclip };
OutFormat parse_out_format(const std::string& s);

// Write to stdout (data only). Throws IoError on a write error other than a closed pipe.
void out(const std::string& s);

}  // namespace clip
