#include "clip/cli.h"

#include <csignal>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "clip/fileio.h"
#include "clip/log.h"
#include "clip/runtime.h"

namespace clip {

namespace {
bool g_stdout_closed = false;
}

void out(const std::string& s) {
  if (g_stdout_closed) return;
  if (!s.empty() && std::fwrite(s.data(), 1, s.size(), stdout) != s.size()) {
    if (errno == EPIPE) {
      g_stdout_closed = true;
      return;
    }
    throw IoError(std::string("cannot write to stdout: ") + std::strerror(errno));
  }
}

int run_main(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body) {
  maybe_reexec_for_blas(argc, argv);
  tune_malloc();
  std::signal(SIGPIPE, SIG_IGN);  // writes to a closed pipe then fail with EPIPE, handled in out()
  int rc = kExitInternal;
  try {
    rc = body(argc, argv);
  } catch (const Error& e) {
    log_error("{}: {}: {}", tool, e.kind(), e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    log_error("{}: out of memory (try a smaller --batch-size)", tool);
    return kExitInternal;
  } catch (const std::exception& e) {
    log_error("{}: internal error: {}", tool, e.what());
    return kExitInternal;
  }
  if (std::fflush(stdout) != 0 && errno != EPIPE && !g_stdout_closed) {
    log_error("{}: cannot write to stdout: {}", tool, std::strerror(errno));
    return kExitIo;
  }
  return rc;
}

void ModelOptions::add_to(CLI::App& app, bool checkpoint_required) {
  auto* c = app.add_option("--checkpoint,-c", checkpoint,
                           "Checkpoint: cn_clip .pt (torch.save), or a Hugging Face ChineseCLIP folder, "
                           "model.safetensors or pytorch_model.bin");
  if (checkpoint_required) c->required();
  app.add_option("--vision-model", vision_model,
                 "Vision tower: an official name (ViT-B-16, ViT-B-32, ViT-L-14, ViT-L-14-336, ViT-H-14, RN50) or a "
                 "cn_clip JSON config. Default: inferred from the checkpoint");
  app.add_option("--text-model", text_model,
                 "Text tower: an official name (RoBERTa-wwm-ext-base-chinese, RoBERTa-wwm-ext-large-chinese, "
                 "RBT3-chinese) or a cn_clip JSON config. Default: inferred from the checkpoint");
  app.add_option("--vocab", vocab, "BERT vocab.txt (default: vocab.txt beside the checkpoint)");
  app.add_option("--context-length", context_length, "Text context length in tokens, [CLS] and [SEP] included")
      ->capture_default_str()
      ->check(CLI::Range(3, 512));
}

void RuntimeOptions::add_to(CLI::App& app, const std::string& default_precision) {
  precision = default_precision;
  app.add_option("--threads,-j", threads, "CPU threads (0 = all cores)")->capture_default_str();
  app.add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--precision", precision, "fp32, bf16 (CPU/GPU), fp16 (GPU) or amp (bf16 autocast)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "amp"}));
  app.add_option("--batch-size,-b", batch_size, "Batch size")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_flag("--quiet,-q", quiet, "Only errors on stderr");
  app.add_flag("--verbose,-v", verbose, "Debug messages on stderr");
}

void RuntimeOptions::apply() const {
  if (quiet) set_log_level(LogLevel::error);
  else if (verbose) set_log_level(LogLevel::debug);
  int n = set_threads(threads);
  log_debug("threads: {}, BLAS core: {}", n, blas_core_name().empty() ? "?" : blas_core_name());
}

void DataOptions::add_to(CLI::App& app, bool with_split) {
  app.add_option("--data", data_dir, "Dataset folder in the Flickr30k-CN layout ({split}_imgs.tsv, {split}_texts.jsonl)");
  if (with_split) app.add_option("--split", split, "Split name inside --data")->capture_default_str();
  app.add_option("--images", images, "Images TSV (image_id<TAB>base64)");
  app.add_option("--texts", texts, "Texts JSONL ({\"text_id\", \"text\", \"image_ids\"})");
  app.add_flag("--strict", strict, "Treat any skipped line or image as an error");
  app.add_option("--on-error", on_error, "On an undecodable image or bad line: stop (default) or skip (log and go on)")
      ->check(CLI::IsMember({"stop", "skip"}));
}

void DataOptions::resolve(bool need_images, bool need_texts) {
  if (!data_dir.empty()) {
    if (need_images && images.empty()) images = path_join(data_dir, split + "_imgs.tsv");
    if (need_texts && texts.empty()) texts = path_join(data_dir, split + "_texts.jsonl");
  }
}

OutFormat parse_out_format(const std::string& s) {
  if (s == "jsonl" || s == "json") return OutFormat::jsonl;
  if (s == "tsv") return OutFormat::tsv;
  if (s == "cnclip") return OutFormat::cnclip;
  throw UsageError("unknown --format '" + s + "' (expected jsonl, tsv or cnclip)");
}

}  // namespace clip
