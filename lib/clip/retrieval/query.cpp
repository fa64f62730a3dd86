#include "clip/retrieval/query.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <iostream>

#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/indexing.h"
#include "clip/base/log.h"
#include "clip/model/config.h"
#include "clip/model/loader.h"

namespace clip {

size_t QueryResults::total_hits() const {
  size_t n = 0;
  for (const auto& q : queries) n += q.hits.size();
  return n;
}

void fill_model_options_from_store(ModelOptions& mo, const FeatureSet& store) {
  const auto& extra = store.meta.extra;
  if (mo.checkpoint.empty()) {
    if (!extra.contains("checkpoint") || !extra["checkpoint"].is_string())
      throw UsageError("'" + store.path + "' does not record its checkpoint; pass --checkpoint");
    mo.checkpoint = extra["checkpoint"].get<std::string>();
    if (!file_exists(mo.checkpoint))
      throw UsageError("the store was built from " + mo.checkpoint + ", which no longer exists; pass --checkpoint");
    log_info("checkpoint from the store: {}", mo.checkpoint);
  }
  if (mo.vocab.empty() && extra.contains("vocab") && extra["vocab"].is_string() &&
      file_exists(extra["vocab"].get<std::string>()))
    mo.vocab = extra["vocab"].get<std::string>();
  // The towers as the store's model had them (head counts are in no tensor shape).
  if (extra.contains("model_config") && extra["model_config"].is_string()) {
    // Written by clip-index: a config that does not parse is damage to the store (bad data, exit 3).
    try {
      mo.known_config = model_config_from_json(extra["model_config"].get<std::string>(), "model_config");
    } catch (const std::exception& e) {
      throw DataError("feature store '" + store.path + "': metadata field 'extra.model_config' is not a usable model "
                      "config (" + e.what() + "); rebuild the store with clip-index, or pass --vision-model and "
                      "--text-model");
    }
    mo.known_config_source = store.path;
  }
  if (mo.context_length == 52 && store.meta.preprocess.contains("context_length"))
    mo.context_length = store.meta.preprocess["context_length"].get<int>();
}

void fill_image_options_from_store(ImageOptions& io, const FeatureSet& store) {
  const auto& pre = store.meta.preprocess;
  if (io.exif_transpose || !pre.is_object() || !pre.value("exif_transpose", false)) return;
  io.exif_transpose = true;
  log_info("image queries are turned upright by their EXIF orientation, as the store's images were (--exif-transpose)");
}

static std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::string line;
  if (path == "-") {
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) lines.push_back(line);
    }
    return lines;
  }
  std::ifstream f(path);
  if (!f) throw_io_error("open", path);
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

static Query make_query(const char* kind, std::string label) {
  Query q;
  q.kind = kind;
  q.label = std::move(label);
  return q;
}

static void check_compatible(const Encoder& enc, const FeatureSet& store) {
  if (store.dim != enc.embed_dim())
    throw UsageError(fmt::format("the store holds {}-d features but the model makes {}-d ones: query it with the model "
                                 "it was built with", store.dim, enc.embed_dim()));
  if (!store.meta.weights_hash.empty() && store.meta.weights_hash != enc.weights_hash())
    log_warn("the store was built with weights {}, the model loaded is {}: scores mix two models",
             store.meta.weights_hash, enc.weights_hash());
}

std::vector<std::vector<Hit>> search_texts(Encoder& enc, const Collection& store, const std::vector<std::string>& texts,
                                           int k, float threshold) {
  at::Tensor f = enc.encode_texts(texts, true);
  return store.search(f, k, threshold);
}

std::vector<std::vector<Hit>> search_texts(Encoder& enc, const FeatureSet& store, const std::vector<std::string>& texts,
                                           int k, float threshold) {
  return search_texts(enc, Collection(store), texts, k, threshold);
}

QueryResults run_queries(Encoder& enc, const FeatureSet& store, const QueryOptions& q, int threads) {
  return run_queries(enc, Collection(store), q, threads);
}

QueryResults run_queries(Encoder& enc, const Collection& store, const QueryOptions& q, int threads) {
  for (const auto& s : store.shards()) check_compatible(enc, s);
  QueryResults res;
  // Text queries: all of them through the encoder in batches, then one search.
  std::vector<Query> tq;
  for (const auto& t : q.texts) {
    if (t.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
      throw UsageError("--text is empty: give the words to search for");
    tq.push_back(make_query("text", t));
  }
  if (!q.text_file.empty())
    for (auto& t : read_lines(q.text_file)) tq.push_back(make_query("text", std::move(t)));
  if (!q.texts_jsonl.empty()) {
    ReadReport rep;
    auto recs = read_texts(q.texts_jsonl, rep, !q.skip_bad);
    if (recs.empty()) throw DataError("'" + q.texts_jsonl + "' holds no texts: no queries to run");
    for (auto& rec : recs) {
      Query qq = make_query("text", rec.text);
      qq.has_id = true;
      qq.id = rec.text_id;
      qq.gold = rec.image_ids;
      tq.push_back(std::move(qq));
    }
    rep.summarize(q.texts_jsonl);
  }
  if (!tq.empty()) {
    std::vector<std::string> texts;
    for (const auto& t : tq) texts.push_back(t.label);
    auto hits = store.search(enc.encode_texts(texts, true), q.k, q.threshold);
    for (size_t i = 0; i < tq.size(); ++i) tq[i].hits = std::move(hits[i]);
    for (auto& t : tq) res.queries.push_back(std::move(t));
  }
  // Image queries: files and/or a TSV, decoded in parallel, encoded in batches.
  std::vector<Query> iq;
  std::vector<at::Tensor> feats;
  if (!q.image_paths.empty()) {
    const int r = enc.resolution();
    at::Tensor px = at::empty({static_cast<int64_t>(q.image_paths.size()), 3, r, r}, at::kFloat);
    for (size_t i = 0; i < q.image_paths.size(); ++i) {
      std::string bytes = read_file(q.image_paths[i]);
      try {
        enc.preprocess_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                             px.data_ptr<float>() + i * 3 * r * r);
      } catch (const DataError& e) {
        throw DataError(q.image_paths[i] + ": " + e.what());
      }
      iq.push_back(make_query("image", q.image_paths[i]));
    }
    feats.push_back(enc.encode_pixels(px));
  }
  if (!q.query_tsv.empty()) {
    ReadReport rep;
    std::unique_ptr<ImageSource> src = open_images(q.query_tsv, rep, !q.skip_bad);
    rep.summarize(q.query_tsv);
    if (src->size() == 0) throw DataError("'" + q.query_tsv + "' holds no images: no queries to run");
    EncodedSet set = encode_images(enc, *src, threads, q.skip_bad);
    for (const auto& [id, name] : set.names) res.query_names[id] = name;
    for (int64_t id : set.ids) {
      Query qq = make_query("image", "image_id " + id_to_string(id, &res.query_names));
      qq.has_id = true;
      qq.id = id;
      iq.push_back(std::move(qq));
    }
    feats.push_back(set.features);
  }
  if (!iq.empty()) {
    std::vector<int64_t> self;
    for (const auto& qq : iq) self.push_back(qq.has_id ? qq.id : std::numeric_limits<int64_t>::min());
    auto hits = store.search(at::cat(feats, 0), q.k, q.threshold, q.exclude_self ? &self : nullptr);
    for (size_t i = 0; i < iq.size(); ++i) iq[i].hits = std::move(hits[i]);
    for (auto& qq : iq) res.queries.push_back(std::move(qq));
  }
  return res;
}

static std::string tsv_field(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return s;
}

std::string format_results(const QueryResults& r, const FeatureSet& store, OutFormat f) {
  std::string o;
  const IdNames* names = store.meta.names_or_null();
  const IdNames* qnames = r.query_names.empty() ? nullptr : &r.query_names;
  auto oid = [](int64_t id, const IdNames* n) {
    nlohmann::ordered_json v;
    if (n && n->count(id)) v = n->at(id);
    else v = id;
    return v;
  };
  for (const auto& q : r.queries) {
    if (f == OutFormat::cnclip) {
      if (!q.has_id)
        throw UsageError("--format cnclip needs queries with ids: use --texts JSONL or --query-images TSV");
      const bool text = q.kind == "text";
      nlohmann::ordered_json j;
      j[text ? "text_id" : "image_id"] = oid(q.id, qnames);
      auto& arr = j[store.meta.kind == "text" ? "text_ids" : "image_ids"] = nlohmann::ordered_json::array();
      for (const auto& h : q.hits) arr.push_back(oid(h.id, names));
      o += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      continue;
    }
    for (size_t i = 0; i < q.hits.size(); ++i) {
      const auto& h = q.hits[i];
      if (f == OutFormat::tsv) {
        o += fmt::format("{}\t{}\t{}\t{:.6f}\n", tsv_field(q.label), i + 1, tsv_field(id_to_string(h.id, names)), h.score);
      } else {
        nlohmann::ordered_json j;
        j["query"] = q.label;
        if (q.has_id) j["query_id"] = oid(q.id, qnames);
        j["rank"] = i + 1;
        j["id"] = oid(h.id, names);
        j["score"] = std::round(static_cast<double>(h.score) * 1e6) / 1e6;
        o += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      }
    }
  }
  return o;
}

void write_montage(const std::string& path, const QueryResults& r, const FeatureSet& store,
                   const std::string& images_tsv) {
  if (store.meta.kind != "image") throw UsageError("--montage needs an image store");
  std::string src = images_tsv;
  if (src.empty()) {
    if (store.meta.sources.empty()) throw UsageError("the store records no images TSV; pass --images");
    src = store.meta.sources.front().path;
    if (!source_unchanged(store.meta.sources.front()))
      log_warn("{} changed since the store was built: thumbnails may not match", src);
  }
  ReadReport rep;
  std::unique_ptr<ImageSource> tsv = open_images(src, rep, false);
  const IdNames* names = store.meta.names_or_null();
  std::vector<Image> keep;
  keep.reserve(r.total_hits() + r.queries.size());
  std::vector<std::vector<MontageTile>> rows;
  std::vector<std::string> labels;
  size_t right = 0, known = 0;
  for (size_t qi = 0; qi < r.queries.size(); ++qi) {
    const auto& q = r.queries[qi];
    std::vector<MontageTile> row;
    if (q.kind == "image" && !q.has_id) {
      std::string bytes = read_file(q.label);
      keep.push_back(decode_image_upright(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      row.push_back({&keep.back(), "query"});
    } else if (q.kind == "image") {
      if (auto i = tsv->find(q.id)) {
        keep.push_back(tsv->decode_upright(*i));
        row.push_back({&keep.back(), "query"});
      }
    }
    for (size_t i = 0; i < q.hits.size(); ++i) {
      auto idx = tsv->find(q.hits[i].id);
      if (!idx) continue;
      keep.push_back(tsv->decode_upright(*idx));
      const bool hit = std::find(q.gold.begin(), q.gold.end(), q.hits[i].id) != q.gold.end();
      right += hit;
      std::string id = id_to_string(q.hits[i].id, names);
      if (names && names->count(q.hits[i].id)) id = path_basename(id);
      row.push_back({&keep.back(), fmt::format("#{} {:.3f} {}", i + 1, q.hits[i].score, id), hit});
    }
    known += !q.gold.empty();
    rows.push_back(std::move(row));
    labels.push_back(q.kind == "text" ? q.label : q.has_id ? q.label : path_basename(q.label));
    log_info("montage row {}: {}", qi + 1, q.label);
  }
  if (known) log_info("montage: {} right answer(s) framed in green among the hits of {} queries with known answers", right, known);
  if (unicode_font().empty()) log_warn("no CJK font found (install fonts-wqy-microhei or set CLIP_FONT): query texts are drawn in ASCII only");
  Image sheet = make_montage(rows, labels);
  auto png = encode_png(sheet);
  AtomicFile f(path);
  f.write(png.data(), png.size());
  f.commit();
  log_info("wrote {}", path);
}

}  // namespace clip
