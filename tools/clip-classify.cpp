// clip-classify: zero-shot image classification with cn_clip's protocol (lib/clip/retrieval/classify.h).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <unordered_map>

#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/retrieval/classify.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/indexing.h"

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Zero-shot classification: each image against a list of class names, with cn_clip's protocol.\n"
               "  clip-classify -c clip_cn_vit-b-16.pt --images ~/photos --labels labels.txt --template '一张{}的照片' -k 3\n"
               "  clip-classify -c clip_cn_vit-b-16.pt --images val_imgs.tsv --labels imagenet_cn.txt --templates cnclip \\\n"
               "      --ground-truth val_labels.tsv\n"
               "JSONL on stdout: {\"image_id\", \"rank\", \"label\", \"score\"} per image and rank (score = softmax probability);\n"
               "with --ground-truth, the top-1/top-5 accuracy as one JSON object instead (--output keeps the predictions).",
               "clip-classify"};
  ModelOptions mo;
  ImageOptions io;
  RuntimeOptions ro;
  std::string images, labels_path, template_set, ground_truth, output;
  std::vector<std::string> templates;
  int k = 5;
  bool skip = false;
  add_model_options(app, mo);
  add_runtime_options(app, ro);
  add_image_options(app, io);
  app.add_option("--images", images, "Images: a TSV (image_id<TAB>base64), a folder of photos, a file list or an LMDB imgs folder")
      ->required();
  app.add_option("--labels", labels_path, "Class names, one per line")->required();
  app.add_option("--template", templates, "A prompt template with {} for the class name (repeatable), e.g. '一张{}的照片'");
  app.add_option("--templates", template_set,
                 "A built-in template set: cnclip = cn_clip's 80 Chinese ImageNet templates (the default without --template)")
      ->check(CLI::IsMember({"cnclip"}));
  app.add_option("-k,--top-k", k, "Classes per image")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--ground-truth", ground_truth,
                 "image_id<TAB>label lines (or 'id,label', or JSONL {\"image_id\", \"label\"}): print top-1/top-5 accuracy");
  app.add_option("--output,-o", output, "Also write the predictions JSONL to this file");
  app.add_flag("--skip-errors", skip, "Leave out images that cannot be decoded (default: stop)");
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();
  if (template_set == "cnclip" || templates.empty())
    for (auto& t : cnclip_templates()) templates.push_back(t);
  for (const auto& t : templates) fill_template(t, "x");  // a template without {} is a usage error now

  const std::vector<std::string> labels = read_labels(labels_path);
  Encoder enc(mo, ro, io);
  log_info("{} classes x {} templates", labels.size(), templates.size());
  at::Tensor classes = class_features(enc, labels, templates);
  ReadReport rep;
  std::unique_ptr<ImageSource> src = open_images(images, rep, false);
  rep.summarize(images);
  EncodedSet set = encode_images(enc, *src, ro.threads, skip);
  const int top = std::max(k, ground_truth.empty() ? k : 5);
  auto preds = classify(set.features, classes, top);
  const IdNames* names = set.names.empty() ? nullptr : &set.names;

  std::string lines;
  for (size_t i = 0; i < preds.size(); ++i)
    for (int r = 0; r < k && r < static_cast<int>(preds[i].size()); ++r) {
      nlohmann::ordered_json j;
      nlohmann::json id = id_to_json(set.ids[i], names);
      if (id.is_string()) j["image_id"] = id.get<std::string>();
      else j["image_id"] = id.get<int64_t>();
      j["rank"] = r + 1;
      j["label"] = labels[preds[i][r].first];
      j["score"] = std::round(static_cast<double>(preds[i][r].second) * 1e6) / 1e6;
      lines += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  if (!output.empty()) write_file_atomic(output, lines);
  if (ground_truth.empty()) {
    out(lines);
    return preds.empty() ? kExitNoResults : kExitOk;
  }

  IdNames gt_names;
  auto gt = read_class_ground_truth(ground_truth, &gt_names);
  std::unordered_map<int64_t, size_t> row;
  for (size_t i = 0; i < set.ids.size(); ++i) row[set.ids[i]] = i;
  std::unordered_map<std::string, int> label_index;
  for (size_t c = 0; c < labels.size(); ++c) label_index[labels[c]] = static_cast<int>(c);
  int64_t n = 0, top1 = 0, top5 = 0, missing = 0, unknown = 0;
  for (const auto& [id, label] : gt) {
    auto it = row.find(id);
    if (it == row.end()) {
      ++missing;
      continue;
    }
    auto li = label_index.find(label);
    if (li == label_index.end()) ++unknown;
    ++n;
    const auto& p = preds[it->second];
    for (size_t r = 0; r < p.size() && r < 5; ++r)
      if (li != label_index.end() && p[r].first == li->second) {
        top1 += r == 0;
        ++top5;
      }
  }
  if (missing) log_warn("{} of the {} ground-truth images are not among the classified images", missing, gt.size());
  if (unknown) log_warn("{} ground-truth labels are not in {}: counted as wrong", unknown, labels_path);
  if (n == 0) throw DataError("no ground-truth image was classified: do the ids in " + ground_truth + " match " + images + "?");
  nlohmann::ordered_json acc;
  acc["top1"] = 100.0 * static_cast<double>(top1) / static_cast<double>(n);
  acc["top5"] = 100.0 * static_cast<double>(top5) / static_cast<double>(n);
  acc["images"] = n;
  acc["classes"] = labels.size();
  acc["templates"] = templates.size();
  out(acc.dump() + "\n");
  log_info("zero-shot accuracy on {} images: top-1 {:.2f} %, top-5 {:.2f} %", n, acc["top1"].get<double>(),
           acc["top5"].get<double>());
  return kExitOk;
}

// CUDA's context started, and the end detached, before LibTorch initialises (cli/early_start.h).
CLIP_EARLY_START(clip::EarlyStart::cuda_detach)

int main(int argc, char** argv) { return run_main("clip-classify", argc, argv, body); }
