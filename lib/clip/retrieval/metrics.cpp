#include "clip/retrieval/metrics.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <unordered_set>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/data/dataset.h"
#include "clip/data/lmdb.h"
#include "clip/retrieval/store.h"

namespace clip {

namespace {

// Booleans are JSON integers to Python's isinstance(x, int); here they are refused.
bool is_int(const nlohmann::json& v) { return v.is_number_integer(); }

std::vector<int64_t> int_list(const std::string& path, int64_t lineno, const nlohmann::json& obj, const char* key,
                              const std::string& owner, IdNames* names = nullptr) {
  auto it = obj.find(key);
  if (it == obj.end()) throw DataError(fmt::format("{}:{}: {} has no \"{}\" list", path, lineno, owner, key));
  if (!it->is_array()) throw DataError(fmt::format("{}:{}: \"{}\" of {} is not a list", path, lineno, key, owner));
  std::vector<int64_t> v;
  v.reserve(it->size());
  for (size_t r = 0; r < it->size(); ++r) {
    const auto& x = (*it)[r];
    std::optional<int64_t> id;
    if (is_int(x)) id = x.get<int64_t>();
    else if (names && x.is_string()) id = id_from_json(x, names);
    if (!id)
      throw DataError(fmt::format("{}:{}: {} has {} at rank {} of \"{}\", expected an integer id{}", path, lineno, owner,
                                  x.dump(), r + 1, key, names ? " or a path" : ""));
    v.push_back(*id);
  }
  return v;
}

int64_t int_field(const std::string& path, int64_t lineno, const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end()) throw DataError(fmt::format("{}:{}: no \"{}\" key", path, lineno, key));
  if (!is_int(*it))
    throw DataError(fmt::format("{}:{}: \"{}\" is {}, expected an integer (not a string)", path, lineno, key, it->dump()));
  return it->get<int64_t>();
}

std::string id_list(const std::vector<int64_t>& ids, size_t max_shown = 20) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < max_shown; ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  if (ids.size() > max_shown) s += fmt::format(", ... ({} in all)", ids.size());
  return s;
}

// --on-error skip: bad lines are counted in `report` (none: they stop the run).
BadLineHandler skip_handler(ReadReport* report) {
  if (!report) return nullptr;
  return [report](const std::string& msg, const std::string& reason) { report->add(msg, /*strict=*/false, reason); };
}

}  // namespace

GroundTruth read_ground_truth(const std::string& path, const GoldOptions& opt) {
  GroundTruth g;
  if (is_lmdb_env(path)) {  // cn_clip's pairs database: the texts in the JSONL's order
    ReadReport rep;
    for (const auto& t : read_lmdb_pairs(path, rep, /*strict=*/true)) {
      for (int64_t iid : t.image_ids) {
        auto [it, fresh] = g.image_to_texts.try_emplace(iid);
        if (fresh) g.image_ids.push_back(iid);
        it->second.push_back(t.text_id);
      }
      g.text_ids.push_back(t.text_id);
      g.text_to_images[t.text_id] = t.image_ids;
    }
    if (g.text_ids.empty()) throw DataError(fmt::format("'{}' holds no pairs", path));
    return g;
  }
  std::unordered_map<int64_t, int64_t> first_line;
  const size_t kept = for_each_json_line(
      path,
      [&](int64_t lineno, const nlohmann::json& j) {
        const int64_t tid = int_field(path, lineno, j, "text_id");
        std::vector<int64_t> imgs = int_list(path, lineno, j, "image_ids", fmt::format("text_id {}", tid), &g.names);
        auto [seen, fresh] = first_line.try_emplace(tid, lineno);
        if (!fresh && !opt.repeated_text_id_replaces)
          throw BadLine(fmt::format("{}:{}: text_id {} appears again (first on line {}); each text may be annotated "
                                    "once (--on-error skip keeps the first line, --cnclip-duplicates takes the later "
                                    "line's image_ids as cn_clip's evaluation.py does)",
                                    path, lineno, tid, seen->second),
                        "duplicate text_id");
        for (int64_t iid : imgs) {
          auto [it, first] = g.image_to_texts.try_emplace(iid);
          if (first) g.image_ids.push_back(iid);
          it->second.push_back(tid);
        }
        auto [it, first] = g.text_to_images.try_emplace(tid);
        if (first) g.text_ids.push_back(tid);
        it->second = std::move(imgs);
      },
      skip_handler(opt.skip));
  if (opt.skip) opt.skip->kept += kept;
  if (g.text_ids.empty()) throw DataError(fmt::format("'{}' holds no texts (empty file?)", path));
  return g;
}

Predictions read_predictions(const std::string& path, int k, ReadReport* skip) {
  Predictions p;
  std::string qkey, lkey;
  const size_t kept = for_each_json_line(
      path,
      [&](int64_t lineno, const nlohmann::json& j) {
        if (qkey.empty()) {
          if (j.contains("text_id")) p.query_kind = "text", qkey = "text_id", lkey = "image_ids";
          else if (j.contains("image_id")) p.query_kind = "image", qkey = "image_id", lkey = "text_ids";
          else throw DataError(fmt::format("{}:{}: no \"text_id\" or \"image_id\" key", path, lineno));
        }
        int64_t q;
        if (p.query_kind == "image" && j.contains(qkey) && j[qkey].is_string()) q = *id_from_json(j[qkey], &p.names);
        else q = int_field(path, lineno, j, qkey.c_str());
        const std::string owner = fmt::format("{} {}", qkey, id_to_string(q, &p.names));
        std::vector<int64_t> ids = int_list(path, lineno, j, lkey.c_str(), owner, p.query_kind == "text" ? &p.names : nullptr);
        if (static_cast<int>(ids.size()) != k)
          throw DataError(fmt::format("{}:{}: {} has {} predicted {}, expected exactly {}", path, lineno, owner, ids.size(),
                                      lkey, k));
        if (std::unordered_set<int64_t>(ids.begin(), ids.end()).size() != ids.size())
          throw DataError(fmt::format("{}:{}: {} has duplicate ids among its predicted {}", path, lineno, owner, lkey));
        auto [it, fresh] = p.ranked.try_emplace(q);
        if (fresh) p.queries.push_back(q);
        it->second = std::move(ids);
      },
      skip_handler(skip));
  if (skip) skip->kept += kept;
  if (p.queries.empty()) throw DataError(fmt::format("'{}' holds no predictions (empty file?)", path));
  return p;
}

void write_predictions(const std::string& path, const Predictions& p) {
  if (p.query_kind != "text" && p.query_kind != "image")
    throw UsageError("write_predictions: query kind must be text or image, not '" + p.query_kind + "'");
  const std::string qkey = p.query_kind + "_id", lkey = p.query_kind == "text" ? "image_ids" : "text_ids";
  std::string all;
  const IdNames* names = p.names.empty() ? nullptr : &p.names;
  for (int64_t q : p.queries) {
    auto it = p.ranked.find(q);
    std::string list;
    if (it != p.ranked.end())
      for (size_t i = 0; i < it->second.size(); ++i) {
        if (i) list += ", ";
        list += p.query_kind == "text" ? id_to_json(it->second[i], names).dump() : std::to_string(it->second[i]);
      }
    all += fmt::format("{{\"{}\": {}, \"{}\": [{}]}}\n", qkey,
                       p.query_kind == "image" ? id_to_json(q, names).dump() : std::to_string(q), lkey, list);
  }
  if (path == "-") {
    if (std::fwrite(all.data(), 1, all.size(), stdout) != all.size()) throw_io_error("write", "<stdout>");
    return;
  }
  write_file_atomic(path, all);
}

Recall compute_recall(const std::vector<int64_t>& gold_order, const Ranking& gold, const Ranking& predicted,
                      const std::string& what, bool missing_are_misses) {
  std::vector<int64_t> missing;
  for (int64_t q : gold_order)
    if (!predicted.count(q)) missing.push_back(q);
  if (!missing.empty() && !missing_are_misses)
    throw DataError(fmt::format("{}: no prediction for {} of the {} gold queries: {}", what, missing.size(),
                                gold_order.size(), id_list(missing)));
  if (!missing.empty())
    log_warn("{}: no prediction for {} of the {} gold queries (counted as misses): {}", what, missing.size(),
             gold_order.size(), id_list(missing));
  Recall r;
  r.queries = static_cast<int64_t>(gold_order.size());
  if (r.queries == 0) return r;
  for (int64_t q : gold_order) {
    const auto& g = gold.at(q);
    const std::unordered_set<int64_t> relevant(g.begin(), g.end());
    auto found = predicted.find(q);
    if (found == predicted.end()) continue;  // a miss (missing_are_misses)
    const auto& pred = found->second;
    int64_t first = -1;  // rank of the first relevant prediction
    for (size_t i = 0; i < pred.size() && i < 10; ++i)
      if (relevant.count(pred[i])) {
        first = static_cast<int64_t>(i);
        break;
      }
    if (first >= 0 && first < 1) ++r.hits1;
    if (first >= 0 && first < 5) ++r.hits5;
    if (first >= 0 && first < 10) ++r.hits10;
  }
  // Same operations, in the same order, as evaluation.py: fractions first, then x100.
  const double n = static_cast<double>(r.queries);
  const double f1 = static_cast<double>(r.hits1) / n, f5 = static_cast<double>(r.hits5) / n,
               f10 = static_cast<double>(r.hits10) / n;
  const double mean = (f1 + f5 + f10) / 3.0;
  r.r1 = f1 * 100;
  r.r5 = f5 * 100;
  r.r10 = f10 * 100;
  r.mean_recall = mean * 100;
  return r;
}

double overall_mean_recall(const EvalResult& r) {
  double sum = 0;
  int n = 0;
  for (const auto* d : {&r.text_to_image, &r.image_to_text})
    if (*d) sum += (*d)->mean_recall, ++n;
  return n ? sum / n : 0.0;
}

nlohmann::json eval_to_json(const EvalResult& r) {
  nlohmann::json j = nlohmann::json::object();
  auto dir = [](const Recall& x) {
    return nlohmann::json{{"r1", x.r1},           {"r5", x.r5},       {"r10", x.r10}, {"mean_recall", x.mean_recall},
                          {"queries", x.queries}, {"hits1", x.hits1}, {"hits5", x.hits5}, {"hits10", x.hits10}};
  };
  if (r.text_to_image) j["text_to_image"] = dir(*r.text_to_image);
  if (r.image_to_text) j["image_to_text"] = dir(*r.image_to_text);
  j["mean_recall"] = overall_mean_recall(r);
  for (auto it = r.info.begin(); it != r.info.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::string eval_to_table(const EvalResult& r, const std::string& format) {
  std::vector<std::pair<std::string, const Recall*>> rows;
  if (r.text_to_image) rows.push_back({"text->image", &*r.text_to_image});
  if (r.image_to_text) rows.push_back({"image->text", &*r.image_to_text});
  std::string s;
  if (format == "tsv") {
    s = "direction\tqueries\tr1\tr5\tr10\tmean_recall\n";
    for (auto& [name, x] : rows) s += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\n", name, x->queries, x->r1, x->r5, x->r10, x->mean_recall);
    return s;
  }
  if (format == "md") {
    s = "| direction | queries | R@1 | R@5 | R@10 | MR |\n|---|---:|---:|---:|---:|---:|\n";
    for (auto& [name, x] : rows)
      s += fmt::format("| {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n", name, x->queries, x->r1, x->r5, x->r10,
                       x->mean_recall);
    if (rows.size() > 1) s += fmt::format("| overall | | | | | {:.2f} |\n", overall_mean_recall(r));
    return s;
  }
  if (format != "text") throw UsageError("unknown table format '" + format + "' (expected md, tsv or text)");
  s = fmt::format("{:<12} {:>8} {:>7} {:>7} {:>7} {:>7}\n", "direction", "queries", "R@1", "R@5", "R@10", "MR");
  for (auto& [name, x] : rows)
    s += fmt::format("{:<12} {:>8} {:>7.2f} {:>7.2f} {:>7.2f} {:>7.2f}\n", name, x->queries, x->r1, x->r5, x->r10,
                     x->mean_recall);
  if (rows.size() > 1) s += fmt::format("{:<12} {:>8} {:>7} {:>7} {:>7} {:>7.2f}\n", "overall", "", "", "", "", overall_mean_recall(r));
  return s;
}

}  // namespace clip
