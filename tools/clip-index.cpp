// clip-index: L2-normalised image and text features, as cn_clip's extract_features writes them
// (JSONL) or as a binary store that opens by mmap.
#include <fmt/format.h>

#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/indexing.h"
#include "clip/base/log.h"

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Encode images and texts into features.\n"
               "  clip-index -c model.pt --data data/shapes-zh --split test --image-out test.img.clipfeat --text-out test.txt.clipfeat\n"
               "  clip-index -c clip_cn_vit-b-16.pt --images test_imgs.tsv --image-out test_imgs.img_feat.jsonl\n"
               "  clip-index -c clip_cn_vit-b-16.pt --images ~/photos --image-out photos.clipfeat [--append]\n"
               "Outputs ending in .jsonl are cn_clip's feature files; any other name is a binary store (see docs/store-format.md).",
               "clip-index"};
  ModelOptions mo;
  RuntimeOptions ro;
  DataOptions dopt;
  std::string image_out, text_out, dtype = "f32";
  bool append = false;
  add_model_options(app, mo);
  add_runtime_options(app, ro);
  add_data_options(app, dopt);
  app.add_option("--image-out", image_out, "Image features: FILE.jsonl (cn_clip) or a store (e.g. FILE.clipfeat)");
  app.add_option("--text-out", text_out, "Text features: FILE.jsonl (cn_clip) or a store");
  app.add_option("--dtype", dtype, "Store element type: f32 or f16")->capture_default_str()->check(CLI::IsMember({"f32", "f16"}));
  app.add_flag("--append", append,
               "Add to an existing store instead of replacing it: new ids only; for a photo folder, the files not yet "
               "indexed or changed since (by path, size and mtime)");
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();
  dopt.resolve(!image_out.empty(), !text_out.empty());
  if (image_out.empty() && text_out.empty()) throw UsageError("nothing to do: give --image-out and/or --text-out");
  if (!image_out.empty() && dopt.images.empty())
    throw UsageError("--image-out needs --images (TSV, photo folder, file list) or --data DIR");
  if (!text_out.empty() && dopt.texts.empty()) throw UsageError("--text-out needs --texts JSONL or --data DIR");

  Encoder enc(mo, ro);
  const StoreDtype dt = parse_store_dtype(dtype);
  if (!image_out.empty()) {
    ReadReport rep;
    std::unique_ptr<ImageSource> src = open_images(dopt.images, rep, dopt.strict);
    rep.summarize(dopt.images);
    size_t changed = 0;
    std::vector<size_t> rows;
    if (append) {
      rows = rows_to_index(*src, image_out, changed);
      if (rows.size() != src->size() || changed)
        log_info("{}: {} of {} images are new{}", dopt.images, rows.size() - changed, src->size(),
                 changed ? fmt::format(", {} changed since indexed", changed) : std::string());
      if (rows.empty()) {
        log_info("nothing to add to {}", image_out);
        rows.clear();
      }
    }
    if (!append || !rows.empty()) {
      EncodedSet set = encode_images(enc, *src, ro.threads, dopt.on_error == "skip" && !dopt.strict, rows);
      StoreMeta meta = make_store_meta(enc, "image", dopt.images);
      nlohmann::json files = folder_file_stats(*src, set.ids);
      if (!files.empty()) meta.extra["files"] = files;
      write_features(image_out, set, meta, dt, append, /*replace=*/changed > 0);
    }
  }
  if (!text_out.empty()) {
    ReadReport rep;
    auto texts = read_texts(dopt.texts, rep, dopt.strict);
    rep.summarize(dopt.texts);
    EncodedSet set = encode_texts(enc, texts);
    write_features(text_out, set, make_store_meta(enc, "text", dopt.texts), dt, append);
  }
  return kExitOk;
}

int main(int argc, char** argv) { return run_main("clip-index", argc, argv, body); }
