// clip-query: text-to-image, image-to-image and image-to-text search against a feature store.
#include <unistd.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>

#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/indexing.h"
#include "clip/base/log.h"
#include "clip/retrieval/query.h"
#include "clip/retrieval/search.h"

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Search a feature store with texts or images.\n"
               "  clip-query --index test.img.clipfeat --text \"蓝色背景上的红色圆形\" -k 5\n"
               "  cat queries.txt | clip-query --index test.img.clipfeat --format tsv\n"
               "  clip-query --index test.img.clipfeat --texts test_texts.jsonl --format cnclip > t2i.jsonl\n"
               "  clip-query --index test.img.clipfeat --image cat.jpg --montage hits.png\n"
               "  clip-query --index part1.clipfeat --index part2.clipfeat --text \"海边的狗\" --nprobe 32",
               "clip-query"};
  ModelOptions mo;
  ImageOptions io;
  RuntimeOptions ro;
  QueryOptions q;
  std::vector<std::string> index;
  SearchOptions so;
  std::string format = "jsonl", montage, images_tsv;
  add_model_options(app, mo, /*checkpoint_required=*/false);
  add_runtime_options(app, ro);
  add_image_options(app, io);
  add_search_options(app, index, so, "Feature store (or cn_clip JSONL features) to search");
  app.add_option("--text,-t", q.texts, "A text query (repeatable)");
  app.add_option("--text-file", q.text_file, "Text queries, one per line ('-' = stdin; also used when stdin is a pipe)");
  app.add_option("--texts", q.texts_jsonl, "Text queries with ids from a cn_clip texts JSONL");
  app.add_option("--image,-i", q.image_paths, "An image file query (repeatable)");
  app.add_option("--query-images", q.query_tsv, "Image queries with ids: an images TSV, a photo folder or a file list");
  app.add_option("-k,--top-k", q.k, "Hits per query")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--threshold", q.threshold, "Only hits scoring at least this cosine");
  app.add_flag("--exclude-self", q.exclude_self, "Drop a hit whose id is the query image's own id");
  app.add_option("--format,-f", format, "jsonl (query, rank, id, score), tsv, or cnclip prediction lines")
      ->capture_default_str()->check(CLI::IsMember({"jsonl", "tsv", "cnclip"}));
  app.add_option("--montage", montage, "Draw the top hits of each query as a contact sheet (PNG)");
  app.add_option("--images", images_tsv, "Images of the store for --montage: TSV, photo folder, file list or LMDB (default: the store's source)");
  std::string on_error = "stop";
  add_on_error_option(app, on_error);
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  q.skip_bad = on_error == "skip";
  ro.apply();
  if (so.device.empty()) so.device = ro.device;  // the store is searched where the model runs
  if (q.texts.empty() && q.text_file.empty() && q.texts_jsonl.empty() && q.image_paths.empty() && q.query_tsv.empty()) {
    if (isatty(STDIN_FILENO)) throw UsageError("no query: give --text, --text-file, --texts, --image or --query-images");
    q.text_file = "-";
  }

  Collection coll = Collection::open(index, so);
  const FeatureSet& store = coll.front();
  log_info("store {}{}: {} {} features, dim {}; search: {}", index.front(),
           index.size() > 1 ? fmt::format(" and {} more shards", index.size() - 1) : "", coll.size(), store.meta.kind,
           store.dim, coll.method());
  fill_model_options_from_store(mo, store);
  fill_image_options_from_store(io, store);
  // Only the towers the queries need: text queries the text tower, image queries the vision tower.
  const bool text_queries = !q.texts.empty() || !q.text_file.empty() || !q.texts_jsonl.empty();
  const bool image_queries = !q.image_paths.empty() || !q.query_tsv.empty();
  mo.towers = text_queries && image_queries ? Towers::both : text_queries ? Towers::text : Towers::vision;
  Encoder enc(mo, ro, io);
  QueryResults res = run_queries(enc, coll, q, ro.threads);
  const OutFormat of = parse_out_format(format);
  out(format_results(res, store, of));
  if (!montage.empty()) write_montage(montage, res, store, images_tsv);
  return res.total_hits() == 0 ? kExitNoResults : kExitOk;
}

// CUDA's context started, and the end detached, before LibTorch initialises (cli/early_start.h).
CLIP_EARLY_START(clip::EarlyStart::cuda_detach)

int main(int argc, char** argv) { return run_main("clip-query", argc, argv, body); }
