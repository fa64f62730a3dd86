#include "clip/retrieval/indexing.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <future>
#include <numeric>
#include <optional>
#include <unordered_set>

#include "clip/retrieval/ann.h"
#include "clip/retrieval/int8.h"

#include <ATen/ATen.h>

#include "clip/model/config.h"
#include "clip/data/dataset.h"
#include "clip/data/image_folder.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/base/pipeline.h"
#include "clip/base/timing.h"
#include "clip/image/image.h"
#include "clip/model/tensor_torch.h"
#include "clip/text/tokenizer.h"

namespace clip {

EncodedSet encode_images(Encoder& enc, const ImageSource& tsv, int threads, bool skip_errors,
                         const std::vector<size_t>& only) {
  const auto t_start = SteadyClock::now();
  const int r = enc.resolution();
  const DecodeMode mode = enc.image_options().decode;
  const size_t item = static_cast<size_t>(3) * r * r;
  const size_t n = only.empty() ? tsv.size() : only.size();
  auto row_of = [&](size_t i) { return only.empty() ? i : only[i]; };
  // Worker time in nanoseconds, added to by every worker.
  std::atomic<int64_t> read_ns{0}, decode_ns{0}, resize_ns{0}, slab_wait_ns{0}, unslabbed{0};
  auto add_ns = [](std::atomic<int64_t>& acc, SteadyClock::time_point a, SteadyClock::time_point b) {
    acc.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count(), std::memory_order_relaxed);
  };
  // The workers stop at the 8-bit RGB result of the exact resize (a quarter of the bytes of float
  // pixels); the model's device normalises it (Encoder::encode_pixels_async), bit for bit as
  // preprocess_eval would have on the CPU.
  // --decode device: the workers stop at the decoded RGB image, written into host memory of its own
  // (page-locked on CUDA, ready to upload) in `decoded[i]`; the pipeline's own item is then a
  // placeholder byte, and its queue still bounds how many decoded images wait. The squash runs on
  // the model's device (squash_bicubic_u8).
  const bool on_device = mode == DecodeMode::device;
  const bool pin = on_device && enc.on_cuda();
  std::vector<at::Tensor> decoded(on_device ? n : 0);  // each element written by one worker
  // On CUDA the workers start while the model is still on its way to the card (Encoder): a deeper
  // queue, up to about 512 MB of 8-bit pixels, lets them decode that far ahead meanwhile.
  const size_t bs = static_cast<size_t>(enc.batch_size());
  const size_t batch_bytes = std::max<size_t>(1, bs * item);
  const size_t queue_batches = !enc.on_cuda() ? 4
                               : on_device     ? 3  // and 4 page-locked slabs below
                                               : std::clamp<size_t>((size_t{512} << 20) / batch_bytes, 4, 16);
  // --decode device: a batch's decoded images go into one slab (UploadRing; page-locked on CUDA), one
  // upload per batch; room for images up to twice the model's side on average. An image that does
  // not fit gets its own page-locked tensor in `decoded[i]`; one in the slab leaves that undefined
  // and its place in `placed[i]`.
  struct Placed {
    size_t offset = 0;
    int64_t h = 0, w = 0;
  };
  std::vector<Placed> placed(on_device ? n : 0);
  std::optional<UploadRing> ring;  // exactly when on_device
  if (on_device) {
    // No more slabs than batches, no larger than a batch needs (a short input pins little).
    const size_t per_batch = std::min(bs, n);
    const size_t slab = per_batch * 3 * (2 * r) * (2 * r);
    ring.emplace(std::min(queue_batches + 1, (n + bs - 1) / bs), slab, /*pinned=*/pin);
  }
  BytePipeline pipe(
      n, enc.batch_size(), threads,
      [&](size_t i, uint8_t* out) {
        const size_t row = row_of(i);
        try {
          const auto t0 = SteadyClock::now();
          const std::vector<uint8_t> bytes = tsv.bytes(row);
          const auto t1 = SteadyClock::now();
          Image im = decode_image(bytes.data(), bytes.size(), enc.image_options(), r);
          const auto t2 = SteadyClock::now();
          if (on_device) {
            const Image rgb = device_resize_input(std::move(im), r);
            size_t offset = 0;
            const auto w0 = SteadyClock::now();
            uint8_t* dst = ring->reserve(i / bs, rgb.pixels.size(), offset);  // may wait for a free slab
            add_ns(slab_wait_ns, w0, SteadyClock::now());
            if (dst) {
              std::memcpy(dst, rgb.pixels.data(), rgb.pixels.size());
              placed[i] = Placed{offset, rgb.height, rgb.width};
            } else {
              unslabbed.fetch_add(1, std::memory_order_relaxed);
              at::Tensor t = at::empty({rgb.height, rgb.width, 3}, at::TensorOptions(at::kByte).pinned_memory(pin));
              std::memcpy(t.data_ptr<uint8_t>(), rgb.pixels.data(), rgb.pixels.size());
              decoded[i] = std::move(t);
            }
            out[0] = 0;
          } else {
            preprocess_eval_u8(im, r, out);
          }
          const auto t3 = SteadyClock::now();
          add_ns(read_ns, t0, t1);
          add_ns(decode_ns, t1, t2);
          add_ns(resize_ns, t2, t3);
        } catch (const DataError& e) {
          throw DataError(tsv.where(row) + ": " + e.what() +
                          (skip_errors ? "" : " (use --on-error skip to leave such images out)"));
        }
      },
      on_device ? 1 : item, queue_batches, skip_errors);
  // Destroyed before the pipeline: workers waiting for a slab give up when this function leaves early.
  struct CloseRing {
    std::optional<UploadRing>& r;
    ~CloseRing() {
      if (r) r->close();
    }
  } close_ring{ring};
  EncodedSet set;
  EncodeTiming& tm = set.timing;
  tm.threads = pipe.threads();
  std::vector<at::Tensor> parts;
  // Overlap on CUDA: while the workers decode ahead, each batch is staged in pinned memory, uploaded
  // asynchronously and its forward pass queued without waiting, followed by the copy of its
  // features to the host; a batch's features are taken (waiting for that copy only) once
  // `in_flight` newer batches are queued behind it, so the device always has work and host memory
  // stays bounded. On the CPU every batch completes at once.
  const size_t in_flight = enc.on_cuda() ? 2 : 0;
  std::deque<HostCopy> pending;  // oldest first
  auto drain = [&](size_t keep) {
    ScopedTimer wait(tm.wait_device_s);
    while (pending.size() > keep) {
      parts.push_back(enc.features_to_cpu(pending.front()));
      pending.pop_front();
    }
  };
  Progress prog("encode images", static_cast<int64_t>(n), "img");
  for (BytePipeline::Batch b;;) {
    bool more = false;
    {
      ScopedTimer wait(tm.wait_input_s);
      more = pipe.next(b);
    }
    if (!more) break;
    for (const auto& [i, why] : b.errors) {
      log_warn("skipped {}", why);
      set.skipped.emplace_back(tsv.id(row_of(i)), why);
    }
    // One copy for the batch's slab, for every batch (also one whose images were all skipped: this
    // releases its slab).
    at::Tensor slab;
    if (ring) {
      ScopedTimer stage(tm.stage_s);
      slab = ring->upload(b.index, enc.device());
    }
    if (!b.items.empty()) {
      at::Tensor staged;
      {
        // b.data is recycled by the next pipe.next(): staging copies it on CUDA, and on the CPU the
        // forward pass has finished reading it before encode_pixels_async returns.
        ScopedTimer stage(tm.stage_s);
        if (on_device) {
          std::vector<at::Tensor> ims;
          for (size_t i : b.items) {
            if (decoded[i].defined()) {
              ims.push_back(std::move(decoded[i]));
            } else {
              const Placed& p = placed[i];
              ims.push_back(slab.narrow(0, static_cast<int64_t>(p.offset), p.h * p.w * 3).view({p.h, p.w, 3}));
            }
          }
          staged = squash_bicubic_u8(ims, r, enc.device());
        } else {
          staged = enc.stage_pixels(at::from_blob(b.data.data(), {static_cast<int64_t>(b.items.size()), 3, r, r}, at::kByte));
        }
      }
      const auto t0 = SteadyClock::now();
      pending.push_back(enc.fetch_features(enc.encode_pixels_async(staged)));
      tm.add_forward(seconds_since(t0));
      drain(in_flight);
      for (size_t i : b.items) {
        set.ids.push_back(tsv.id(row_of(i)));
        std::string name = tsv.name(row_of(i));
        if (!name.empty()) set.names.emplace(set.ids.back(), std::move(name));
      }
    }
    prog.add(static_cast<int64_t>(b.items.size() + b.errors.size()));
  }
  drain(0);
  prog.finish();
  set.features = parts.empty() ? at::empty({0, enc.embed_dim()}, at::kFloat) : at::cat(parts, 0);
  if (!set.skipped.empty()) log_warn("{} of {} images skipped", set.skipped.size(), n);
  tm.read_cpu_s = static_cast<double>(read_ns.load()) * 1e-9;
  tm.decode_cpu_s = static_cast<double>(decode_ns.load()) * 1e-9;
  tm.slab_wait_cpu_s = static_cast<double>(slab_wait_ns.load()) * 1e-9;
  tm.resize_cpu_s = static_cast<double>(resize_ns.load()) * 1e-9 - tm.slab_wait_cpu_s;
  if (ring) {
    tm.slab_alloc_s = ring->allocation_seconds();
    tm.unslabbed = unslabbed.load();
  }
  tm.encode_s = seconds_since(t_start);
  return set;
}

namespace {

// Tokens of row `i` of ids [n, L]: up to the last non-padding (non-zero) id.
int64_t text_length(const at::Tensor& ids, int64_t i) {
  const int64_t len = ids.size(1);
  const int64_t* row = ids.data_ptr<int64_t>() + i * len;
  int64_t k = len;
  while (k > 0 && row[k - 1] == 0) --k;
  return k;
}

}  // namespace

EncodedSet encode_texts(Encoder& enc, const std::vector<TextRecord>& texts, const TextEncodeOptions& opt) {
  const auto t_start = SteadyClock::now();
  EncodedSet set;
  EncodeTiming& tm = set.timing;
  const bool cuda = enc.on_cuda();
  const bool trim = opt.trim.value_or(cuda);
  tm.trim = trim;
  const int64_t ctx = enc.context_length();
  const int64_t total = static_cast<int64_t>(texts.size());
  for (const auto& t : texts) set.ids.push_back(t.text_id);
  at::Tensor out = at::empty({total, enc.embed_dim()}, at::kFloat);
  Progress prog("encode texts", total, "txt");
  // Texts are tokenised a chunk at a time on every thread (bounded memory), then encoded batch by
  // batch; on CUDA the next chunk is tokenised on a helper thread while the device works.
  const size_t bs = static_cast<size_t>(enc.batch_size());
  const size_t chunk = std::max<size_t>(bs, 8192 / bs * bs);
  auto tokenize_chunk = [&](size_t c) {
    const auto t0 = SteadyClock::now();
    std::vector<std::string> part;
    for (size_t i = c; i < std::min(texts.size(), c + chunk); ++i) part.push_back(texts[i].text);
    at::Tensor ids = enc.tokenize(part, /*preprocess=*/true);
    tm.tokenize_s += seconds_since(t0);  // one tokenising thread at a time
    return ids;
  };
  // Features on their way to the host, with the rows of `out` they belong to; taken `in_flight`
  // batches behind on CUDA, at once on the CPU.
  struct Pending {
    HostCopy copy;
    at::Tensor rows;
  };
  std::deque<Pending> pending;
  const size_t in_flight = cuda ? 2 : 0;
  auto drain = [&](size_t keep) {
    ScopedTimer wait(tm.wait_device_s);
    while (pending.size() > keep) {
      out.index_copy_(0, pending.front().rows, enc.features_to_cpu(pending.front().copy));
      pending.pop_front();
    }
  };
  double columns = 0;
  std::future<at::Tensor> ahead;
  for (size_t c = 0; c < texts.size(); c += chunk) {
    at::Tensor ids;
    {
      ScopedTimer wait(tm.wait_input_s);
      ids = ahead.valid() ? ahead.get() : tokenize_chunk(c);
    }
    if (cuda && c + chunk < texts.size()) ahead = std::async(std::launch::async, tokenize_chunk, c + chunk);
    const int64_t n = ids.size(0);
    std::vector<int64_t> order(static_cast<size_t>(n)), len(static_cast<size_t>(n), ctx);
    {
      ScopedTimer stage(tm.stage_s);
      std::iota(order.begin(), order.end(), int64_t{0});
      if (trim) {
        for (int64_t i = 0; i < n; ++i) len[static_cast<size_t>(i)] = text_length(ids, i);
        // Longest first: the first batch sizes the device's buffers for the rest.
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return len[static_cast<size_t>(a)] > len[static_cast<size_t>(b)]; });
      }
    }
    const int64_t budget = static_cast<int64_t>(bs) * ctx;  // tokens of a full-length batch
    for (int64_t s = 0, e = 0; s < n; s = e) {
      // Trimmed: longest first, so the batch's first text sets its columns (its length: rounding it up,
      // to 8 before 2026-12-07, computed up to a fifth more padding on short captions), and the batch
      // takes as many texts as fit the budget at that width.
      int64_t width = ctx;
      e = std::min(n, s + static_cast<int64_t>(bs));
      if (trim) {
        width = std::min(ctx, std::max<int64_t>(1, len[static_cast<size_t>(order[static_cast<size_t>(s)])]));
        e = std::min(n, s + std::max(static_cast<int64_t>(bs), budget / width));
      }
      at::Tensor staged, rows;
      {
        ScopedTimer stage(tm.stage_s);
        std::vector<int64_t> global(order.begin() + s, order.begin() + e);
        for (auto& g : global) g += static_cast<int64_t>(c);
        rows = at::tensor(global, at::kLong);
        at::Tensor batch;
        if (trim) {
          batch = ids.index_select(0, rows - static_cast<int64_t>(c)).slice(1, 0, width).contiguous();
        } else {
          batch = ids.slice(0, s, e);
        }
        columns += static_cast<double>((e - s) * batch.size(1));
        staged = enc.stage_ids(batch);
      }
      const auto t0 = SteadyClock::now();
      pending.push_back({enc.fetch_features(enc.encode_ids_async(staged)), rows});
      tm.add_forward(seconds_since(t0));
      drain(in_flight);
      prog.add(e - s);
    }
  }
  drain(0);
  prog.finish();
  log_debug("{} texts encoded", texts.size());
  set.features = out;
  tm.columns = total > 0 ? columns / (static_cast<double>(total) * static_cast<double>(ctx)) : 1.0;
  tm.encode_s = seconds_since(t_start);
  return set;
}

bool is_jsonl_output(const std::string& path) {
  const std::string suf = ".jsonl";
  return path.size() >= suf.size() && path.compare(path.size() - suf.size(), suf.size(), suf) == 0;
}

StoreMeta store_meta_for(const std::string& path, const Encoder& enc, const std::string& kind,
                         const std::string& source_path) {
  if (!is_jsonl_output(path)) return make_store_meta(enc, kind, source_path);
  StoreMeta m;
  m.kind = kind;
  return m;
}

StoreMeta make_store_meta(const Encoder& enc, const std::string& kind, const std::string& source_path) {
  StoreMeta m;
  m.kind = kind;
  m.model_name = enc.config().name();
  m.weights_hash = enc.weights_hash();
  m.preprocess = enc.preprocess_meta();
  if (!source_path.empty()) m.sources.push_back(source_file_info(source_path));
  m.normalized = true;
  char buf[4096];
  std::string ckpt = enc.checkpoint_path();
  if (realpath(ckpt.c_str(), buf)) ckpt = buf;
  m.extra["checkpoint"] = ckpt;
  m.extra["model_config"] = model_config_json(enc.config());
  std::string vocab = enc.tokenizer().path();
  if (realpath(vocab.c_str(), buf)) vocab = buf;
  m.extra["vocab"] = vocab;
  m.extra["tool"] = std::string("clip-cpp ") + CLIP_VERSION;
  return m;
}


void write_features(const std::string& path, const EncodedSet& set, const StoreMeta& meta_in, StoreDtype dtype,
                    bool append, const SidecarOptions& side, bool replace) {
  StoreMeta meta = meta_in;
  for (const auto& [id, name] : set.names) meta.names[id] = name;
  at::Tensor f = set.features.contiguous();
  if (f.numel() > 0 && !at::isfinite(f).all().item<bool>()) {
    const auto bad = at::nonzero(at::logical_not(at::isfinite(f)).any(1));
    const int64_t row = bad.size(0) > 0 ? bad[0][0].item<int64_t>() : 0;
    throw ModelError("the " + meta.kind + " feature of id " + std::to_string(set.ids.at(static_cast<size_t>(row))) +
                     " (and " + std::to_string(bad.size(0) - 1) + " more) holds NaN or infinity; nothing was written to '" +
                     path + "'. The model's weights are broken (check the checkpoint)");
  }
  const float* data = f.data_ptr<float>();
  const int64_t dim = f.size(1);
  const std::string ann_file = ann_path(path), i8_file = int8_path(path);
  if (is_jsonl_output(path)) {
    if (append) throw UsageError("--append works on binary stores, not on JSONL output '" + path + "'");
    if (!side.ann_factory.empty() || side.int8)
      throw UsageError("--ann and --dtype i8 need a binary store, not JSONL output '" + path + "'");
    write_features_jsonl(path, meta.kind + "_id", set.ids, data, dim, meta.names_or_null());
    log_info("wrote {} {} features to {}", set.ids.size(), meta.kind, path);
    return;
  }
  FeatureSet old;  // the store before appending (its mapping stays valid after the rename)
  const bool appending = append && file_exists(path);
  if (appending) {
    old = open_store(path);
    if (old.meta.weights_hash != meta.weights_hash || old.meta.kind != meta.kind)
      throw DataError("cannot append to '" + path + "': it holds " + old.meta.kind + " features of weights " +
                      old.meta.weights_hash + ", these are " + meta.kind + " features of weights " + meta.weights_hash +
                      "; index into a new store instead");
    // The image settings of a store's rows, as the flags that give them (preprocess_meta records
    // each only when it is not the default).
    auto pixel_flags = [](const nlohmann::json& pre) {
      const bool obj = pre.is_object();
      std::string f = "--decode " + (obj && pre.contains("decode") ? pre["decode"].get<std::string>() : std::string("exact"));
      if (obj && pre.value("exif_transpose", false)) f += " --exif-transpose";
      return f;
    };
    if (pixel_flags(old.meta.preprocess) != pixel_flags(meta.preprocess))
      log_warn("appending features made with {} to '{}', whose rows were made with {}: the store mixes both",
               pixel_flags(meta.preprocess), path, pixel_flags(old.meta.preprocess));
    // Refuse before the store changes when the index beside it is not the store's.
    if (side.ann_factory.empty() && file_exists(ann_file)) AnnIndex::open(ann_file, old, {});
    AppendOptions opt;
    if (!meta.sources.empty()) opt.source = meta.sources.front();
    opt.names = set.names;
    opt.replace = replace;
    opt.extra_patch = meta.extra.contains("files") ? nlohmann::json{{"files", meta.extra["files"]}} : nlohmann::json();
    append_store(path, set.ids, data, dim, opt);
  } else {
    write_store(path, set.ids, data, dim, dtype, meta);
  }
  log_info("wrote {} {} features to {}", set.ids.size(), meta.kind, path);

  FeatureSet now = open_store(path);
  if (!side.ann_factory.empty()) {
    AnnBuildOptions bo;
    bo.factory = side.ann_factory;
    bo.max_train = side.ann_train;
    build_ann(now, bo, ann_file);
  } else if (file_exists(ann_file)) {
    if (appending && !replace) {
      extend_ann(ann_file, old, now);
    } else {
      std::remove(ann_file.c_str());
      log_warn("removed {}: it indexed rows this run replaced; rebuild it with --ann FACTORY", ann_file);
    }
  }
  if (side.int8 || (appending && file_exists(i8_file))) {
    build_int8(now, i8_file, side.int8 ? side.int8_scale : int8_scale_of(i8_file));
  } else if (file_exists(i8_file)) {
    std::remove(i8_file.c_str());
    log_warn("removed {}: it described the store this run replaced; rebuild it with --dtype i8", i8_file);
  }
}

void merge_features(const std::vector<std::string>& inputs, const std::string& out, const MergeOptions& opt,
                    const SidecarOptions& side) {
  if (inputs.size() < 2) throw UsageError("--merge needs at least two stores");
  for (const auto& in : inputs)
    if (!is_store_file(in)) throw UsageError("--merge takes binary feature stores; '" + in + "' is not one");
  // The inputs as they are now (their mappings stay valid when `out` replaces one of them), and their
  // indexes checked before anything is written.
  std::vector<FeatureSet> in;
  for (const auto& p : inputs) in.push_back(open_store(p));
  std::string carry_from, factory;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string a = ann_path(inputs[i]);
    if (!file_exists(a)) continue;
    const auto idx = AnnIndex::open(a, in[i], {});  // DataError with the remedy when stale
    if (factory.empty()) factory = idx->factory();
    if (i == 0) carry_from = a;
  }
  std::string i8_from;
  for (const auto& p : inputs)
    if (i8_from.empty() && file_exists(int8_path(p))) i8_from = int8_path(p);
  const Int8Scale i8_scale = side.int8 ? side.int8_scale : i8_from.empty() ? Int8Scale::per_vector : int8_scale_of(i8_from);
  // The first input's index stays where it is while `out` is written (when `out` is the first input,
  // it is read before being rewritten beside it).
  for (size_t i = 1; i < inputs.size(); ++i) {
    const std::string a = i == 1 ? inputs[0] : out;
    merge_stores(a, inputs[i], out, opt);
  }
  FeatureSet now = open_store(out);
  log_info("merged {} stores into {} ({} rows)", inputs.size(), out, now.size());
  // Did every row of the first input keep its place and value? (No id of a later input replaced one.)
  bool first_intact = true;
  if (opt.replace) {
    std::unordered_set<int64_t> first(in[0].ids.begin(), in[0].ids.end());
    for (size_t i = 1; i < in.size() && first_intact; ++i)
      for (int64_t id : in[i].ids)
        if (first.count(id)) {
          first_intact = false;
          break;
        }
  }
  const std::string ann_file = ann_path(out), i8_file = int8_path(out);
  if (!side.ann_factory.empty() || (!factory.empty() && (carry_from.empty() || !first_intact))) {
    AnnBuildOptions bo;
    bo.factory = side.ann_factory.empty() ? factory : side.ann_factory;
    bo.max_train = side.ann_train;
    if (side.ann_factory.empty())
      log_info("building a new {} index for {}: {}", bo.factory, out,
               carry_from.empty() ? "the first store has none to carry over" : "rows of the first store were replaced");
    build_ann(now, bo, ann_file);
  } else if (!carry_from.empty()) {
    carry_ann(carry_from, in[0], now, ann_file);
  } else if (file_exists(ann_file)) {
    std::remove(ann_file.c_str());
    log_warn("removed {}: it indexed the store this merge replaced; build one with --ann FACTORY", ann_file);
  }
  if (side.int8 || !i8_from.empty()) {
    build_int8(now, i8_file, i8_scale);
  } else if (file_exists(i8_file)) {
    std::remove(i8_file.c_str());
    log_warn("removed {}: it described the store this merge replaced; rebuild it with --dtype i8", i8_file);
  }
}

// For a TSV or LMDB every row is returned, so that appending an id already in the store stays the
// error append_store reports; only a photo folder skips what the store already holds unchanged.
std::vector<size_t> rows_to_index(const ImageSource& src, const std::string& store_path, size_t& changed) {
  changed = 0;
  std::vector<size_t> rows;
  const bool have = !store_path.empty() && file_exists(store_path) && is_store_file(store_path);
  FeatureSet old;
  if (have) old = open_store(store_path);
  const auto* folder = dynamic_cast<const ImageFolder*>(&src);
  const nlohmann::json files = have && old.meta.extra.contains("files") ? old.meta.extra["files"] : nlohmann::json::object();
  for (size_t i = 0; i < src.size(); ++i) {
    if (!have || old.find(src.id(i)) < 0 || !folder) {  // a TSV's known ids stay an error (append_store)
      rows.push_back(i);
      continue;
    }
    auto it = files.find(folder->name(i));
    const bool same = it != files.end() && it->is_array() && it->size() == 2 && (*it)[0] == folder->file_size(i) &&
                      (*it)[1] == folder->file_mtime(i);
    if (!same) {
      rows.push_back(i);
      ++changed;
    }
  }
  return rows;
}

nlohmann::json folder_file_stats(const ImageSource& src, const std::vector<int64_t>& ids) {
  nlohmann::json files = nlohmann::json::object();
  const auto* folder = dynamic_cast<const ImageFolder*>(&src);
  if (!folder) return files;
  for (int64_t id : ids)
    if (auto i = folder->find(id)) files[folder->name(*i)] = {folder->file_size(*i), folder->file_mtime(*i)};
  return files;
}

}  // namespace clip
