// clip-index: L2-normalised image and text features, as cn_clip's extract_features writes them
// (JSONL) or as a binary store that opens by mmap.
#include <fmt/format.h>

#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/indexing.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/base/timing.h"

#include <future>
#include <optional>
#include <utility>

using namespace clip;

namespace {

// The parts of a job outside encode_images / encode_texts.
struct JobTimes {
  double open_s = 0;       // opening and reading the input (TSV index, folder walk, texts JSONL)
  double hash_wait_s = 0;  // blocked for the weights hash (the store's metadata)
  double write_s = 0;      // writing the output and the files beside it
};

// One machine-readable line per job at info level (stderr): where the whole process's time went.
// Described in docs/benchmarks.md ("The timing line").
void log_timing(const char* job, const EncodedSet& set, const JobTimes& jt, const RuntimeOptions& ro,
                const Encoder& enc, double startup_s, double load_s, bool hashed) {
  const EncodeTiming& t = set.timing;
  std::string line = fmt::format("timing job={} items={} skipped={} batches={} batch={} device={} precision={}", job,
                                 set.ids.size(), set.skipped.size(), t.batches, enc.batch_size(), enc.device().str(),
                                 ro.precision);
  const bool images = std::string(job) == "images";
  if (images) line += fmt::format(" decode={} threads={}", decode_mode_name(enc.image_options().decode), t.threads);
  else line += fmt::format(" trim={} columns={:.3f}", t.trim ? "on" : "off", t.columns);
  line += fmt::format(" total_s={:.3f} startup_s={:.3f} load_s={:.3f} load_wait_s={:.3f} open_s={:.3f} encode_s={:.3f}",
                      process_seconds(), startup_s, load_s, enc.load_wait_seconds(), jt.open_s, t.encode_s);
  if (images)
    line += fmt::format(" wait_decode_s={:.3f}", t.wait_input_s);
  else
    line += fmt::format(" tokenize_s={:.3f} wait_tokenize_s={:.3f}", t.tokenize_s, t.wait_input_s);
  line += fmt::format(" stage_s={:.3f} forward_s={:.3f} first_forward_s={:.3f} wait_device_s={:.3f}", t.stage_s,
                      t.forward_s, t.first_forward_s, t.wait_device_s);
  if (images)
    line += fmt::format(" read_cpu_s={:.3f} decode_cpu_s={:.3f} resize_cpu_s={:.3f} slab_wait_cpu_s={:.3f}", t.read_cpu_s,
                        t.decode_cpu_s, t.resize_cpu_s, t.slab_wait_cpu_s);
  if (images && enc.image_options().decode == DecodeMode::device)
    line += fmt::format(" slab_alloc_s={:.3f} unslabbed={}", t.slab_alloc_s, t.unslabbed);
  if (enc.on_cuda()) {
    const DevicePhases p = enc.device_phases();
    line += fmt::format(" cuda_init_s={:.3f} upload_s={:.3f} warm_images_s={:.3f} warm_texts_s={:.3f}", p.init_s,
                        p.upload_s, p.warm_images_s, p.warm_texts_s);
  }
  line += fmt::format(" hash_s={:.3f} hash_cached={} hash_wait_s={:.3f} write_s={:.3f}",
                      hashed ? enc.weights_hash_seconds() : 0.0, hashed && enc.weights_hash_cached() ? 1 : 0,
                      jt.hash_wait_s, jt.write_s);
  log_info("{}", line);
}

}  // namespace

static int body(int argc, char** argv) {
  const double startup_s = process_seconds();
  CLI::App app{"Encode images and texts into features.\n"
               "  clip-index -c model.pt --data data/shapes-zh --split test --image-out test.img.clipfeat --text-out test.txt.clipfeat\n"
               "  clip-index -c clip_cn_vit-b-16.pt --images test_imgs.tsv --image-out test_imgs.img_feat.jsonl\n"
               "  clip-index -c clip_cn_vit-b-16.pt --images ~/photos --image-out photos.clipfeat [--append]\n"
               "Outputs ending in .jsonl are cn_clip's feature files; any other name is a binary store (see docs/store-format.md).",
               "clip-index"};
  ModelOptions mo;
  ImageOptions io;
  RuntimeOptions ro;
  DataOptions dopt;
  std::string image_out, text_out, dtype = "f32";
  bool append = false;
  SidecarOptions side;
  add_model_options(app, mo, /*checkpoint_required=*/false);  // required unless --merge (below)
  add_runtime_options(app, ro);
  add_image_options(app, io);
  add_data_options(app, dopt);
  app.add_option("--image-out", image_out, "Image features: FILE.jsonl (cn_clip) or a store (e.g. FILE.clipfeat)");
  app.add_option("--text-out", text_out, "Text features: FILE.jsonl (cn_clip) or a store");
  app.add_option("--dtype", dtype, "Store element type: f32, f16, or i8 (a float16 store plus an int8 scan file STORE.i8 "
                 "whose best candidates are re-scored exactly)")
      ->capture_default_str()->check(CLI::IsMember({"f32", "f16", "i8"}));
  std::string i8_scale = "row";
  app.add_option("--i8-scale", i8_scale, "With --dtype i8: one int8 scale per row (max |x| of the row) or per "
                 "dimension (max |x| of the column over all rows)")
      ->capture_default_str()->check(CLI::IsMember({"row", "dim"}));
  app.add_option("--ann", side.ann_factory, "Also build an approximate faiss index STORE.ann, a faiss factory string "
                 "(e.g. IVF1024,SQ8, HNSW32, IVF4096,PQ64; see docs/search.md)");
  app.add_option("--ann-train", side.ann_train, "Rows (evenly spaced) that train the --ann index")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_flag("--append", append,
               "Add to an existing store instead of replacing it: new ids only; for a photo folder, the files not yet "
               "indexed or changed since (by path, size and mtime)");
  std::vector<std::string> merge;
  bool replace = false, force = false;
  app.add_option("--merge", merge, "Merge these stores (two or more, in this order) into the store "
                                   "named by --image-out or --text-out; an approximate index (STORE.ann) and int8 "
                                   "file beside them are carried over or rebuilt (docs/search.md)");
  app.add_flag("--replace", replace, "With --merge: an id in several stores keeps the later store's feature");
  app.add_flag("--force", force, "With --merge: merge stores of different models");
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();
  if (!merge.empty()) {
    if (image_out.empty() == text_out.empty())
      throw UsageError("--merge writes one store: give --image-out (image features) or --text-out (text features)");
    if (!dopt.images.empty() || !dopt.texts.empty() || !dopt.data_dir.empty() || append)
      throw UsageError("--merge reads feature stores only: drop --images/--texts/--data/--append");
    const std::string& out = image_out.empty() ? text_out : image_out;
    const std::string kind = image_out.empty() ? "text" : "image";
    for (const auto& m : merge)
      if (is_store_file(m) && open_store(m).meta.kind != kind)
        throw UsageError("'" + m + "' holds " + open_store(m).meta.kind + " features; write them with --" +
                         open_store(m).meta.kind + "-out");
    MergeOptions mopt;
    mopt.replace = replace;
    mopt.force = force;
    side.int8 = dtype == "i8";
    side.int8_scale = parse_int8_scale(i8_scale);
    std::optional<StoreDtype> out_dtype;
    if (app.get_option("--dtype")->count() > 0) out_dtype = side.int8 ? StoreDtype::f16 : parse_store_dtype(dtype);
    if (out_dtype) mopt.dtype = &*out_dtype;
    merge_features(merge, out, mopt, side);
    return kExitOk;
  }
  if (mo.checkpoint.empty()) throw UsageError("--checkpoint is required (run with --help for the options)");
  dopt.resolve(!image_out.empty(), !text_out.empty());
  if (image_out.empty() && text_out.empty()) throw UsageError("nothing to do: give --image-out and/or --text-out");
  if (!image_out.empty() && dopt.images.empty())
    throw UsageError("--image-out needs --images (TSV, photo folder, file list) or --data DIR");
  if (!text_out.empty() && dopt.texts.empty()) throw UsageError("--text-out needs --texts JSONL or --data DIR");

  // An output must not overwrite an input, nor the other output.
  for (const auto& [out, flag] : {std::pair{image_out, "--image-out"}, std::pair{text_out, "--text-out"}})
    for (const auto& [in, what] : {std::pair{dopt.images, "the images TSV"}, std::pair{dopt.texts, "the texts JSONL"}})
      if (same_file(out, in))
        throw UsageError(std::string(flag) + " '" + out + "' is " + what + " it reads; write the features elsewhere");
  if (same_file(image_out, text_out))
    throw UsageError("--image-out and --text-out name the same file '" + image_out + "'; give two names");

  // Only the towers this job encodes with.
  mo.towers = image_out.empty() ? Towers::text : text_out.empty() ? Towers::vision : Towers::both;
  // A store records the checkpoint's weights hash (about a second for a ViT-B checkpoint): computed
  // on a background thread from the moment the checkpoint is mapped, while the model loads and the
  // inputs are read and encoded. JSONL outputs never need it.
  const bool hash_images = !image_out.empty() && !is_jsonl_output(image_out);
  const bool hash_texts = !text_out.empty() && !is_jsonl_output(text_out);
  const bool skip = dopt.skip_bad();
  // The inputs are opened (a TSV's rows found, the texts read) on threads of their own while the
  // checkpoint is mapped and the model built; their errors surface below, after the model's.
  ReadReport image_rep, text_rep;
  std::future<std::unique_ptr<ImageSource>> image_src;
  std::future<std::vector<TextRecord>> text_recs;
  if (!image_out.empty())
    image_src = std::async(std::launch::async, [&] { return open_images(dopt.images, image_rep, !skip); });
  if (!text_out.empty())
    text_recs = std::async(std::launch::async, [&] { return read_texts(dopt.texts, text_rep, !skip); });
  // CUDA: the first batch's set-up (a warm-up batch) while the checkpoint loads and the input is opened.
  Encoder enc(mo, ro, io, (hash_images && !append) || hash_texts, ro.batch_size);
  const double load_s = process_seconds() - startup_s;
  JobTimes image_times, text_times;
  side.int8 = dtype == "i8";
  side.int8_scale = parse_int8_scale(i8_scale);
  const StoreDtype dt = side.int8 ? StoreDtype::f16 : parse_store_dtype(dtype);
  // Both inputs are read and encoded before anything is written, so a failure in either leaves
  // both outputs as they were.
  std::optional<EncodedSet> images, texts;
  nlohmann::json image_files;    // a photo folder's file stats, so that --append finds what changed
  bool replace_changed = false;  // --append on a folder re-encodes changed files in place
  if (!image_out.empty()) {
    const auto t_open = SteadyClock::now();
    std::unique_ptr<ImageSource> src = image_src.get();
    image_rep.summarize(dopt.images);
    if (src->size() == 0) throw DataError("'" + dopt.images + "' holds no images: nothing to index");
    size_t changed = 0;
    std::vector<size_t> rows;
    if (append) {
      rows = rows_to_index(*src, image_out, changed);
      if (rows.size() != src->size() || changed)
        log_info("{}: {} of {} images are new{}", dopt.images, rows.size() - changed, src->size(),
                 changed ? fmt::format(", {} changed since indexed", changed) : std::string());
      if (rows.empty()) log_info("nothing to add to {}", image_out);
    }
    image_times.open_s = seconds_since(t_open);
    if (!append || !rows.empty()) {
      if (hash_images) enc.start_weights_hash();
      images = encode_images(enc, *src, ro.threads, skip, rows);
      if (images->ids.empty())
        throw DataError("every image of '" + dopt.images + "' was skipped (undecodable): nothing to index");
      image_files = folder_file_stats(*src, images->ids);
      replace_changed = changed > 0;
    }
  }
  if (!text_out.empty()) {
    const auto t_open = SteadyClock::now();
    std::vector<TextRecord> recs = text_recs.get();
    text_rep.summarize(dopt.texts);
    if (recs.empty()) throw DataError("'" + dopt.texts + "' holds no texts: nothing to index");
    text_times.open_s = seconds_since(t_open);
    texts = encode_texts(enc, recs);
  }
  if (images) {
    auto t = SteadyClock::now();
    StoreMeta meta = store_meta_for(image_out, enc, "image", dopt.images);
    image_times.hash_wait_s = seconds_since(t);
    if (!image_files.empty()) meta.extra["files"] = image_files;
    t = SteadyClock::now();
    write_features(image_out, *images, meta, dt, append, side, replace_changed);
    image_times.write_s = seconds_since(t);
    log_timing("images", *images, image_times, ro, enc, startup_s, load_s, hash_images);
  }
  if (texts) {
    auto t = SteadyClock::now();
    const StoreMeta meta = store_meta_for(text_out, enc, "text", dopt.texts);
    text_times.hash_wait_s = seconds_since(t);
    t = SteadyClock::now();
    write_features(text_out, *texts, meta, dt, append, side);
    text_times.write_s = seconds_since(t);
    log_timing("texts", *texts, text_times, ro, enc, startup_s, load_s, hash_texts);
  }
  return kExitOk;
}

// CUDA's context started, and the end detached, before LibTorch initialises (cli/early_start.h).
CLIP_EARLY_START(clip::EarlyStart::cuda_detach)

int main(int argc, char** argv) { return run_main("clip-index", argc, argv, body); }
