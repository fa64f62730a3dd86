// clip-export: ONNX graphs of the encoders, and conversion to cn_clip checkpoints and Hugging Face folders.
#include <nlohmann/json.hpp>

#include "clip/cli/cli.h"
#include "clip/export/convert.h"
#include "clip/retrieval/encoder.h"
#include "clip/text/tokenizer.h"
#include "clip/base/log.h"
#ifdef CLIP_HAVE_ONNX
#include "clip/export/onnx_export.h"
#endif

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Export a model as ONNX graphs, a cn_clip checkpoint or a Hugging Face ChineseCLIP folder.\n"
               "  clip-export -c clip_cn_vit-b-16.pt --format onnx --output deploy/vit-b-16 [--fp16] [--tower text]\n"
               "  clip-export -c finetuned.pt --format hf --output hf-model/\n"
               "  clip-export -c hf-model/ --format cnclip --output clip_cn_vit-b-16.pt\n"
               "ONNX files: PREFIX.txt.fp32.onnx (input `text` [N, L] int64) and PREFIX.img.fp32.onnx (input `image`\n"
               "[N, 3, R, R] float32); outputs are the unnormalised features. See docs/export.md.",
               "clip-export"};
  ModelOptions mo;
  RuntimeOptions ro;
  std::string format = "onnx", output, tower = "both";
  bool fp16 = false, check = false;
  int64_t external_threshold = -1;
  add_model_options(app, mo);
  app.add_option("--format,-f", format, "onnx, cnclip (.pt as the original saves) or hf (Hugging Face folder)")
      ->capture_default_str()->check(CLI::IsMember({"onnx", "cnclip", "hf"}));
  app.add_option("--output,-o", output, "onnx: file prefix; cnclip: .pt file; hf: folder")->required();
  app.add_option("--tower", tower, "onnx: text, image or both")->capture_default_str()->check(CLI::IsMember({"text", "image", "both"}));
  app.add_flag("--fp16", fp16, "onnx: float16 weights and compute (float32 inputs/outputs)");
  app.add_option("--external-data-threshold", external_threshold,
                 "onnx: weights of at least this many bytes go to PREFIX...onnx.extra_file (default: only past 2 GB)");
  app.add_flag("--check", check, "onnx: run ONNX's checker on the written files");
  RuntimeFlags rf;
  rf.device = rf.precision = rf.batch_size = false;
  add_runtime_options(app, ro, rf);
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();
  if (format != "onnx" && (fp16 || tower != "both" || external_threshold >= 0))
    throw UsageError("--fp16, --tower and --external-data-threshold apply to --format onnx only");

  Encoder enc(mo, ro);
  if (format == "hf") {
    write_hf_folder(output, enc.model(), enc.tokenizer().path(), enc.context_length());
  } else if (format == "cnclip") {
    write_cnclip_checkpoint(output, enc.model());
    log_info("wrote {}", output);
  } else {
#ifdef CLIP_HAVE_ONNX
    OnnxExportOptions oo;
    oo.fp16 = fp16;
    oo.external_data_threshold = external_threshold;
    oo.context_length = enc.context_length();
    const nlohmann::json meta = enc.preprocess_meta();
    for (const auto& [k, v] : meta.items()) oo.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
    oo.metadata["source_checkpoint"] = enc.checkpoint_path();
    oo.metadata["weights_hash"] = enc.weights_hash();
    for (OnnxTower t : {OnnxTower::text, OnnxTower::image}) {
      if (tower != "both" && tower != (t == OnnxTower::text ? "text" : "image")) continue;
      auto r = export_onnx(enc.model(), t, onnx_file_name(output, t, oo.fp16), oo);
      if (check) check_onnx_file(r.model_path);
    }
#else
    throw UsageError("this clip-export was built without ONNX (libonnx-dev was not found at configure time): "
                     "use --format cnclip or hf, or rebuild after scripts/setup.sh");
#endif
  }
  return kExitOk;
}

// CUDA's context started, and the end detached, before LibTorch initialises (cli/early_start.h).
CLIP_EARLY_START(clip::EarlyStart::cuda_detach)

int main(int argc, char** argv) { return run_main("clip-export", argc, argv, body); }
