// clip-eval: text<->image retrieval recall with cn_clip's rules, from features (stores or cn_clip JSONL)
// or from cn_clip prediction files. JSON record on stdout, a readable table on stderr.
#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/base/log.h"
#include "clip/retrieval/metrics.h"
#include "clip/base/runtime.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Recall@1/5/10 and mean recall, text->image and image->text, as cn_clip's evaluation.py computes them.\n"
               "  clip-eval --image-feats test_imgs.img_feat.jsonl --text-feats test_texts.txt_feat.jsonl --texts test_texts.jsonl\n"
               "  clip-eval --predictions t2i.jsonl [--tr-predictions i2t.jsonl] --texts test_texts.jsonl",
               "clip-eval"};
  std::string image_feats, text_feats, texts, predictions, tr_predictions, format = "json", write_topk, name;
  RuntimeOptions ro;
  app.add_option("--image-feats", image_feats, "Image features: a clip-index store or cn_clip JSONL");
  app.add_option("--text-feats", text_feats, "Text features: a clip-index store or cn_clip JSONL");
  app.add_option("--predictions", predictions, "cn_clip text->image predictions ({\"text_id\", \"image_ids\": [10 ids]})");
  app.add_option("--tr-predictions", tr_predictions, "cn_clip image->text predictions ({\"image_id\", \"text_ids\": [10 ids]})");
  std::string data_dir, split = "test";
  app.add_option("--texts", texts,
                 "Gold annotations: texts JSONL ({\"text_id\", \"text\", \"image_ids\"}; image ids may be photo paths) "
                 "or cn_clip's LMDB pairs folder");
  app.add_option("--data", data_dir, "Instead of --texts: a dataset folder (TSV/JSONL or cn_clip's LMDB layout) ...");
  app.add_option("--split", split, "... and its split")->capture_default_str();
  app.add_option("--format", format, "Record on stdout: json, md or tsv")->check(CLI::IsMember({"json", "md", "tsv"}))->capture_default_str();
  app.add_option("--write-topk", write_topk, "Also write cn_clip prediction files PREFIX.t2i.jsonl and PREFIX.i2t.jsonl");
  app.add_option("--name", name, "A label copied into the record (e.g. the split)");
  std::string on_error = "stop";
  add_on_error_option(app, on_error,
                      "A malformed line of --texts or of a prediction file, or a text_id annotated twice: stop "
                      "(default: exit 3 naming file and line) or skip (leave it out, count it, summarise per reason; "
                      "a gold query left without a prediction then counts as a miss)");
  bool cnclip_duplicates = false;
  app.add_flag("--cnclip-duplicates", cnclip_duplicates,
               "A text_id annotated on several lines of --texts is read as cn_clip's evaluation.py reads it (the "
               "later line's image_ids replace the earlier's; image->text counts both lines) instead of being an error");
  RuntimeFlags rf;
  rf.device = rf.precision = rf.batch_size = false;
  add_runtime_options(app, ro, rf);
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();

  if (texts.empty() == data_dir.empty()) throw UsageError("give the gold annotations with --texts FILE or --data DIR");
  if (texts.empty()) {
    DataOptions d;
    d.data_dir = data_dir;
    d.split = split;
    d.resolve(false, true);
    texts = d.texts;
  }
  const bool from_feats = !image_feats.empty() || !text_feats.empty();
  if (from_feats == (!predictions.empty() || !tr_predictions.empty()))
    throw UsageError("give either --image-feats and --text-feats, or --predictions and/or --tr-predictions");
  if (from_feats && (image_feats.empty() || text_feats.empty()))
    throw UsageError("--image-feats and --text-feats go together");
  if (!write_topk.empty() && !from_feats) throw UsageError("--write-topk needs --image-feats and --text-feats");

  const bool skip = on_error == "skip";
  ReadReport gold_report;
  GoldOptions gold_opt;
  gold_opt.skip = skip ? &gold_report : nullptr;
  gold_opt.repeated_text_id_replaces = cnclip_duplicates;
  const GroundTruth gold = read_ground_truth(texts, gold_opt);
  gold_report.summarize(texts);
  EvalResult res;
  nlohmann::json inputs = {{"texts", texts}};
  res.info["counts"] = {{"gold_texts", gold.text_ids.size()}, {"gold_images", gold.image_ids.size()}};
  if (skip) res.info["counts"]["skipped_gold_lines"] = gold_report.skipped;
  auto score = [&](const Predictions& p, const std::string& what) {
    if (p.query_kind == "text") res.text_to_image = compute_recall(gold.text_ids, gold.text_to_images, p.ranked, what, skip);
    else res.image_to_text = compute_recall(gold.image_ids, gold.image_to_texts, p.ranked, what, skip);
  };
  if (from_feats) {
    FeatureSet img = read_features(image_feats), txt = read_features(text_feats);
    if (img.meta.kind != "image" || txt.meta.kind != "text")
      throw UsageError(fmt::format("--image-feats holds {} features and --text-feats {} features", img.meta.kind, txt.meta.kind));
    if (!img.meta.weights_hash.empty() && !txt.meta.weights_hash.empty() && img.meta.weights_hash != txt.meta.weights_hash)
      throw DataError(fmt::format("'{}' and '{}' come from different weights ({} vs {}): their scores are meaningless",
                                  image_feats, text_feats, img.meta.weights_hash, txt.meta.weights_hash));
    if (!img.meta.normalized || !txt.meta.normalized)
      log_warn("features are not all unit-norm: ranking by raw dot product, as cn_clip does");
    int64_t unseen = 0;
    for (int64_t id : gold.image_ids) unseen += img.find(id) < 0;
    if (unseen)
      log_warn("{} of the {} annotated images have no feature in '{}' (a different split?)", unseen,
               gold.image_ids.size(), image_feats);
    Predictions t2i = topk_predictions(txt, img, 10), i2t = topk_predictions(img, txt, 10);
    t2i.names = i2t.names = img.meta.names;
    if (img.size() < 10 || txt.size() < 10) log_warn("fewer than 10 candidates: evaluation.py would refuse these rankings");
    if (!write_topk.empty()) {
      write_predictions(write_topk + ".t2i.jsonl", t2i);
      write_predictions(write_topk + ".i2t.jsonl", i2t);
    }
    score(t2i, text_feats);
    score(i2t, image_feats);
    inputs["image_feats"] = image_feats, inputs["text_feats"] = text_feats;
    res.info["counts"]["image_features"] = img.size(), res.info["counts"]["text_features"] = txt.size();
    res.info["model"] = img.meta.model_name.empty() ? nlohmann::json() : nlohmann::json(img.meta.model_name);
  }
  for (const std::string* f : {&predictions, &tr_predictions}) {
    if (f->empty()) continue;
    ReadReport pred_report;
    Predictions p = read_predictions(*f, 10, skip ? &pred_report : nullptr);
    pred_report.summarize(*f);
    const bool want_text = f == &predictions;
    if ((p.query_kind == "text") != want_text)
      throw UsageError(fmt::format("'{}' holds {}->{} predictions; pass it with {}", *f, p.query_kind,
                                   want_text ? "text" : "image", want_text ? "--tr-predictions" : "--predictions"));
    score(p, *f);
    inputs[want_text ? "predictions" : "tr_predictions"] = *f;
  }
  res.info["inputs"] = inputs;
  if (!name.empty()) res.info["name"] = name;
  res.info["top_k"] = 10;
  res.info["version"] = CLIP_VERSION;

  if (format == "json") out(eval_to_json(res).dump() + "\n");
  else out(eval_to_table(res, format));
  if (log_level() >= LogLevel::info) std::fputs(eval_to_table(res, "text").c_str(), stderr);
  return kExitOk;
}

// CUDA's context started, and the end detached, before LibTorch initialises (cli/early_start.h).
CLIP_EARLY_START(clip::EarlyStart::cuda_detach)

int main(int argc, char** argv) { return run_main("clip-eval", argc, argv, body); }
