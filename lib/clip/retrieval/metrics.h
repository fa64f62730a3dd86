// Retrieval metrics with cn_clip's rules (cn_clip/eval/evaluation.py and evaluation_tr.py): for each gold
// query, Recall@K counts a hit when any gold id is among the first K predictions (K = 1, 5, 10);
// R@K = hits / gold queries; mean recall MR = (R@1 + R@5 + R@10) / 3; all reported x100, computed in
// the same floating-point order so that the numbers are identical to evaluation.py's. Torch-free:
// rankings from features come from topk_predictions() in search.h.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "clip/base/ids.h"

namespace clip {

struct ReadReport;  // data/dataset.h

using Ranking = std::unordered_map<int64_t, std::vector<int64_t>>;

// Gold annotations from a Flickr30k-CN texts JSONL ({"text_id": int, "text": str, "image_ids": [int]}).
// Text->image follows evaluation.py's read_reference, image->text transform_ir_annotation_to_tr.py
// (every line, in order, appends its text_id to each of its images; images in first-seen order). A
// repeated text_id is an error unless GoldOptions says otherwise (see read_ground_truth).
struct GroundTruth {
  std::vector<int64_t> text_ids;   // gold text queries in file order
  Ranking text_to_images;
  std::vector<int64_t> image_ids;  // gold image queries in first-seen order
  Ranking image_to_texts;
  IdNames names;                   // string image ids (photo paths, base/ids.h)
};
// Throws DataError naming the line for bad JSON, a missing or non-integer text_id, image_ids that is
// not a list of integers, or a text_id seen on an earlier line (naming both lines); IoError when
// unreadable. Blank lines are skipped. With `skip` (--on-error skip) bad lines are counted there and
// left out instead (a repeated text_id: the later line). `repeated_text_id_replaces` reads a repeated
// text_id as cn_clip's evaluation.py does instead (the later line's images replace the earlier's,
// and the image->text inversion counts both lines).
// Image ids may be strings (photo paths). `texts_jsonl` may also be cn_clip's LMDB pairs folder.
struct GoldOptions {
  ReadReport* skip = nullptr;
  bool repeated_text_id_replaces = false;
};
GroundTruth read_ground_truth(const std::string& texts_jsonl, const GoldOptions& opt = {});

// A prediction file in cn_clip's format: {"text_id": int, "image_ids": [k ints]} per line (text->image)
// or {"image_id": int, "text_ids": [k ints]} (image->text), the kind taken from the first line.
struct Predictions {
  std::string query_kind;        // "text" or "image"
  std::vector<int64_t> queries;  // in file order (first occurrence)
  Ranking ranked;
  IdNames names;                 // string image ids, read and written as strings
};
// Validates every line like evaluation.py: an integer query id, a list of exactly k integers, no
// duplicates within a list (booleans are not integers here, and blank lines are skipped). A query
// repeated on a later line replaces the earlier one, as in evaluation.py. Errors name the file and line;
// with `skip` bad lines are counted there and left out instead.
Predictions read_predictions(const std::string& path, int k = 10, ReadReport* skip = nullptr);
// Writes cn_clip's format (json.dumps spacing), queries in p.queries order; "-" = stdout.
void write_predictions(const std::string& path, const Predictions& p);

struct Recall {
  double r1 = 0, r5 = 0, r10 = 0, mean_recall = 0;  // percent
  int64_t queries = 0;                              // gold queries scored
  int64_t hits1 = 0, hits5 = 0, hits10 = 0;
};
// Scores `predicted` against `gold` over the queries in `gold_order`. Every gold query must have a
// prediction: otherwise DataError listing the missing ids (`what` names the prediction source).
// A ranking shorter than 10 counts only what it has.
// With `missing_are_misses` (--on-error skip) such queries count as misses instead, with a warning.
Recall compute_recall(const std::vector<int64_t>& gold_order, const Ranking& gold, const Ranking& predicted,
                      const std::string& what, bool missing_are_misses = false);

// One evaluation run: either direction may be absent.
struct EvalResult {
  std::optional<Recall> text_to_image, image_to_text;
  nlohmann::json info = nlohmann::json::object();  // model, inputs, counts: copied into the JSON record
};
double overall_mean_recall(const EvalResult& r);  // mean of the available directions' MR
// {"text_to_image": {"r1","r5","r10","mean_recall","queries"}, "image_to_text": {...}, "mean_recall", ...info}
nlohmann::json eval_to_json(const EvalResult& r);
// "md": a Markdown table; "tsv": header + one row per direction; "text": an aligned table for people.
std::string eval_to_table(const EvalResult& r, const std::string& format);

}  // namespace clip
