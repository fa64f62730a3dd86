#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/data/dataset.h"
#include "clip/retrieval/metrics.h"
#include "util.h"

using namespace clip;
using Catch::Matchers::Contains;

namespace {

std::string eval_data(const std::string& rel) { return testutil::source_dir() + "/tests/data/eval/" + rel; }

std::string temp_file(const std::string& content) {
  char tmpl[] = "/tmp/clipmetricsXXXXXX";
  int fd = mkstemp(tmpl);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
  close(fd);
  return tmpl;
}

std::string ten(const std::string& first = "1") { return "[" + first + ", 2, 3, 4, 5, 6, 7, 8, 9, 10]"; }

// The DataError message of `read` on a file holding `content` (the test fails when nothing is thrown).
template <typename Read>
std::string data_error_of(Read read, const std::string& content) {
  const std::string p = temp_file(content);
  std::string msg;
  try {
    read(p);
  } catch (const DataError& e) {
    msg = e.what();
  }
  std::remove(p.c_str());
  REQUIRE(!msg.empty());
  return msg;
}

std::string prediction_error(const std::string& content) {
  return data_error_of([](const std::string& p) { read_predictions(p); }, content);
}

}  // namespace

TEST_CASE("recall on hand-made rankings", "[metrics]") {
  // 4 texts, 2 images (A=1, B=2): text 10 and 12 show A, 11 and 13 show B.
  Ranking gold = {{10, {1}}, {11, {2}}, {12, {1}}, {13, {2}}};
  const std::vector<int64_t> order = {10, 11, 12, 13};
  Ranking pred = {{10, {1, 2}}, {11, {1, 2}}, {12, {2, 1}}, {13, {2, 1}}};
  Recall r = compute_recall(order, gold, pred, "hand");
  REQUIRE(r.queries == 4);
  REQUIRE(r.hits1 == 2);
  REQUIRE(r.r1 == 50.0);
  REQUIRE(r.r5 == 100.0);
  REQUIRE(r.r10 == 100.0);
  REQUIRE(r.mean_recall == Approx(250.0 / 3));

  // A hit at rank 6 counts for R@10 only; beyond rank 10 it does not count at all; a text with
  // several gold images hits when any of them is ranked.
  Ranking gold2 = {{1, {5}}, {2, {5}}, {3, {7, 5}}, {4, {}}};
  Ranking pred2 = {{1, {0, 1, 2, 3, 4, 5}},
                   {2, {0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 5}},
                   {3, {0, 7}},
                   {4, {5, 7}}};
  Recall r2 = compute_recall({1, 2, 3, 4}, gold2, pred2, "hand2");
  REQUIRE(r2.hits1 == 0);
  REQUIRE(r2.hits5 == 1);
  REQUIRE(r2.hits10 == 2);
  REQUIRE(r2.r1 == 0.0);
  REQUIRE(r2.r5 == 25.0);
  REQUIRE(r2.r10 == 50.0);
  REQUIRE(r2.mean_recall == 25.0);

  // Every gold query needs a prediction.
  Ranking partial = {{10, {1}}, {12, {1}}};
  try {
    compute_recall(order, gold, partial, "preds.jsonl");
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    REQUIRE_THAT(e.what(), Contains("preds.jsonl") && Contains("2 of the 4") && Contains("11, 13"));
  }
}

TEST_CASE("ground truth follows evaluation.py and transform_ir_annotation_to_tr.py", "[metrics][cnclip]") {
  GoldOptions cnclip;
  cnclip.repeated_text_id_replaces = true;
  GroundTruth g = read_ground_truth(eval_data("quant/texts.jsonl"), cnclip);
  REQUIRE(g.text_ids.size() == 100);  // 101 lines, one text_id repeated
  // The repeated text (the 11th) keeps its position but takes the later line's images.
  REQUIRE(g.text_to_images.at(g.text_ids[10]) == std::vector<int64_t>{1001977});
  // The inversion equals cn_clip's texts.tr.jsonl line by line (the repeated text counts in both lines).
  std::ifstream in(eval_data("quant/texts.tr.jsonl"));
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    REQUIRE(n < g.image_ids.size());
    REQUIRE(g.image_ids[n] == j["image_id"].get<int64_t>());
    REQUIRE(g.image_to_texts.at(g.image_ids[n]) == j["text_ids"].get<std::vector<int64_t>>());
    ++n;
  }
  REQUIRE(n == g.image_ids.size());
  REQUIRE(n == 36);

  auto bad = [](const std::string& content) {
    return data_error_of([](const std::string& p) { read_ground_truth(p); }, content);
  };
  const std::string ok = "{\"text_id\": 1, \"text\": \"a\", \"image_ids\": [5]}\n";
  REQUIRE_THAT(bad(ok + "{\"text\": \"b\", \"image_ids\": [5]}\n"), Contains(":2:") && Contains("text_id"));
  REQUIRE_THAT(bad(ok + "{\"text_id\": 2, \"image_ids\": 5}\n"), Contains(":2:") && Contains("not a list"));
  REQUIRE_THAT(bad(ok + "{\"text_id\": 2, \"image_ids\": [\"5\"]}\n"), Contains(":2:") && Contains("integer"));
  REQUIRE_THAT(bad(ok + "{\"text_id\": 2,\n"), Contains(":2:") && Contains("not valid JSON"));
  REQUIRE_THAT(bad(""), Contains("no texts"));
}

TEST_CASE("prediction files are validated like evaluation.py", "[metrics]") {
  const std::string ok = "{\"text_id\": 1, \"image_ids\": " + ten() + "}\n";
  Predictions p = read_predictions(temp_file(ok + "\n{\"text_id\": 2, \"image_ids\": " + ten("11") + "}\n"));
  REQUIRE(p.query_kind == "text");
  REQUIRE(p.queries == std::vector<int64_t>{1, 2});
  REQUIRE(p.ranked.at(2)[0] == 11);

  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": [1, 2, 3]}\n"),
               Contains(":2:") && Contains("text_id 2 has 3 predicted image_ids, expected exactly 10"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": " + ten("2") + "}\n"),
               Contains(":2:") && Contains("duplicate"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": \"2\", \"image_ids\": " + ten() + "}\n"),
               Contains(":2:") && Contains("not a string"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": " + ten("\"1\"") + "}\n"),
               Contains(":2:") && Contains("at rank 1"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": " + ten("1.0") + "}\n"), Contains("at rank 1"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": " + ten("true") + "}\n"), Contains("at rank 1"));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2}\n"), Contains(":2:") && Contains("no \"image_ids\" list"));
  REQUIRE_THAT(prediction_error(ok + "{\"image_id\": 2, \"text_ids\": " + ten() + "}\n"),
               Contains(":2:") && Contains("no \"text_id\""));
  REQUIRE_THAT(prediction_error(ok + "{\"text_id\": 2, \"image_ids\": [1, 2\n"), Contains(":2:") && Contains("not valid JSON"));
  REQUIRE_THAT(prediction_error("{\"foo\": 1}\n"), Contains(":1:"));

  Predictions tr = read_predictions(temp_file("{\"image_id\": 7, \"text_ids\": " + ten() + "}\n"));
  REQUIRE(tr.query_kind == "image");
  REQUIRE(tr.ranked.at(7).size() == 10);
}

TEST_CASE("recall numbers are identical to cn_clip's evaluation.py", "[metrics][cnclip]") {
  struct Case {
    const char* gold;
    const char* preds;
    double r1, r5, r10, mr;  // evaluation.py's output (tests/data/eval/*/*.score.json)
  };
  const Case cases[] = {
      {"quant/texts.jsonl", "quant/t2i.topk.jsonl", 61.0, 87.0, 93.0, 80.33333333333333},
      {"quant/texts.jsonl", "quant/i2t.topk.jsonl", 38.88888888888889, 86.11111111111111, 97.22222222222221,
       74.07407407407408},
      {"quant/texts.jsonl", "quant/random_a.jsonl", 9.0, 40.0, 69.0, 39.33333333333333},
      {"quant/texts.jsonl", "quant/random_b.jsonl", 8.0, 52.0, 97.0, 52.33333333333333},
      {"float/texts.jsonl", "float/t2i.topk.jsonl", 31.666666666666664, 65.0, 81.66666666666667, 59.44444444444444},
      {"float/texts.jsonl", "float/i2t.topk.jsonl", 35.714285714285715, 64.28571428571429, 78.57142857142857,
       59.523809523809526},
  };
  for (const Case& c : cases) {
    INFO(c.preds);
    GoldOptions cnclip;  // quant/texts.jsonl repeats a text_id on purpose: read as evaluation.py does
    cnclip.repeated_text_id_replaces = true;
    GroundTruth g = read_ground_truth(eval_data(c.gold), cnclip);
    Predictions p = read_predictions(eval_data(c.preds));
    const bool t2i = p.query_kind == "text";
    Recall r = t2i ? compute_recall(g.text_ids, g.text_to_images, p.ranked, c.preds)
                   : compute_recall(g.image_ids, g.image_to_texts, p.ranked, c.preds);
    // Exact equality: same operations in the same order as the Python script.
    REQUIRE(r.r1 == c.r1);
    REQUIRE(r.r5 == c.r5);
    REQUIRE(r.r10 == c.r10);
    REQUIRE(r.mean_recall == c.mr);
    // The JSON record prints the same digits as Python's json.dump.
    EvalResult res;
    (t2i ? res.text_to_image : res.image_to_text) = r;
    const std::string js = eval_to_json(res).dump();
    std::ostringstream mr;
    mr << "\"mean_recall\":" << nlohmann::json(c.mr).dump();
    REQUIRE_THAT(js, Contains(mr.str()));
  }
  // Rewriting a prediction file reproduces cn_clip's bytes.
  Predictions p = read_predictions(eval_data("quant/t2i.topk.jsonl"));
  const std::string out = temp_file("");
  write_predictions(out, p);
  REQUIRE(read_file(out) == read_file(eval_data("quant/t2i.topk.jsonl")));
  std::remove(out.c_str());
}

TEST_CASE("evaluation report formats", "[metrics]") {
  EvalResult r;
  Recall a;
  a.r1 = 50, a.r5 = 75, a.r10 = 100, a.mean_recall = 75, a.queries = 4;
  Recall b = a;
  b.mean_recall = 65;
  r.text_to_image = a;
  r.image_to_text = b;
  r.info["model"] = "m";
  REQUIRE(overall_mean_recall(r) == 70.0);
  auto j = eval_to_json(r);
  REQUIRE(j["text_to_image"]["r1"] == 50.0);
  REQUIRE(j["image_to_text"]["mean_recall"] == 65.0);
  REQUIRE(j["mean_recall"] == 70.0);
  REQUIRE(j["model"] == "m");
  REQUIRE_THAT(eval_to_table(r, "md"), Contains("| text->image | 4 | 50.00 | 75.00 | 100.00 | 75.00 |"));
  REQUIRE_THAT(eval_to_table(r, "tsv"), Contains("image->text\t4\t50\t75\t100\t65\n"));
  REQUIRE_THAT(eval_to_table(r, "text"), Contains("overall"));
  REQUIRE_THROWS_AS(eval_to_table(r, "xml"), UsageError);
}

TEST_CASE("a repeated text_id is an error naming both lines, or skipped, or read as evaluation.py reads it",
          "[metrics][hostile]") {
  // The fixture's last line repeats a text_id with other images.
  const std::string path = eval_data("quant/texts.jsonl");
  std::string msg;
  try {
    read_ground_truth(path);
  } catch (const DataError& e) {
    msg = e.what();
  }
  REQUIRE_THAT(msg, Contains(path + ":101: text_id ") && Contains("appears again (first on line 11)") &&
                        Contains("--on-error skip") && Contains("--cnclip-duplicates"));
  ReadReport rep;
  GoldOptions skip;
  skip.skip = &rep;
  GroundTruth first = read_ground_truth(path, skip);
  REQUIRE(first.text_ids.size() == 100);
  REQUIRE(rep.skipped == 1);
  REQUIRE(rep.kept == 100);
  REQUIRE(rep.reasons.at("duplicate text_id") == 1);
  // The earlier line is kept: not the later line's single image.
  REQUIRE(first.text_to_images.at(first.text_ids[10]) != std::vector<int64_t>{1001977});
  GoldOptions cnclip;
  cnclip.repeated_text_id_replaces = true;
  REQUIRE(read_ground_truth(path, cnclip).text_to_images.at(first.text_ids[10]) == std::vector<int64_t>{1001977});
}

TEST_CASE("--on-error skip in gold texts and prediction files: counted per reason, the rest read", "[metrics][hostile]") {
  const std::string ok1 = "{\"text_id\": 1, \"text\": \"a\", \"image_ids\": [5]}\n";
  const std::string ok2 = "{\"text_id\": 2, \"text\": \"b\", \"image_ids\": [6]}\n";
  const std::string texts = temp_file(ok1 + "{\"text_id\": 3,\n" + "[1]\n" + "{\"text_id\": \"x\", \"image_ids\": [5]}\n" + ok2 + ok1);
  ReadReport rep;
  GoldOptions skip;
  skip.skip = &rep;
  GroundTruth g = read_ground_truth(texts, skip);
  CHECK(g.text_ids == std::vector<int64_t>{1, 2});
  CHECK(rep.skipped == 4);
  CHECK(rep.kept == 2);
  CHECK(rep.reasons.at("invalid JSON") == 1);
  CHECK(rep.reasons.at("not a JSON object") == 1);
  CHECK(rep.reasons.at("bad field") == 1);
  CHECK(rep.reasons.at("duplicate text_id") == 1);
  REQUIRE(rep.problems.size() == 4);
  CHECK_THAT(rep.problems[0], Contains(":2: not valid JSON"));
  CHECK_THAT(rep.problems[3], Contains(":6: text_id 1 appears again (first on line 1)"));
  std::remove(texts.c_str());

  // Predictions: the bad line is left out; its query then has no prediction, a miss when asked for.
  const std::string preds = temp_file(std::string("{\"text_id\": 1, \"image_ids\": [5, 2, 3, 4, 6, 7, 8, 9, 10, 11]}\n") +
                                      "{\"text_id\": 2, \"image_ids\": [6, 7]}\n");
  CHECK_THROWS_AS(read_predictions(preds), DataError);
  ReadReport prep;
  Predictions p = read_predictions(preds, 10, &prep);
  CHECK(p.queries == std::vector<int64_t>{1});
  CHECK(prep.skipped == 1);
  CHECK_THROWS_AS(compute_recall(g.text_ids, g.text_to_images, p.ranked, "preds"), DataError);
  Recall r = compute_recall(g.text_ids, g.text_to_images, p.ranked, "preds", /*missing_are_misses=*/true);
  CHECK(r.queries == 2);
  CHECK(r.hits1 == 1);
  CHECK(r.r1 == 50.0);
  std::remove(preds.c_str());
}
