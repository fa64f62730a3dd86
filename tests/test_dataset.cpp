#include <catch2/catch.hpp>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "clip/data/dataset.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/text/tokenizer.h"
#include "util.h"

using namespace clip;

namespace {

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// The message of the DataError thrown by f (fails the test when nothing is thrown).
template <typename F>
std::string data_error(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  FAIL("expected a DataError");
  return {};
}

// True when some problem mentions all the given fragments.
bool reported(const ReadReport& r, std::initializer_list<std::string> parts) {
  for (const auto& p : r.problems) {
    bool all = true;
    for (const auto& s : parts) all = all && contains(p, s);
    if (all) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("ImageTsv: offset index gives the same records as a sequential read", "[dataset]") {
  testutil::TempDir dir{"data"};
  std::mt19937 rng(7);
  std::vector<std::pair<int64_t, std::string>> expect;
  std::string content;
  const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int i = 0; i < 700; ++i) {
    int64_t id = 1000000 + int64_t(rng() % 5000000) * 3 + i;  // unsorted, unique (i breaks ties)
    std::string payload(4 * (1 + rng() % 300), 'A');
    for (auto& c : payload) c = alphabet[rng() % 64];
    if (rng() % 3 == 0) payload.replace(payload.size() - 2, 2, "==");
    expect.emplace_back(id, payload);
    content += std::to_string(id) + "\t" + payload + (i % 5 == 0 ? "\r\n" : "\n");  // mixed CRLF / LF
  }
  content += "\n\r\n";  // trailing blank lines are tolerated
  std::string path = dir.write("imgs.tsv", content);

  ReadReport report;
  ImageTsv tsv(path, report, /*strict=*/true);
  REQUIRE(report.clean());
  REQUIRE(report.kept == expect.size());
  REQUIRE(tsv.size() == expect.size());
  REQUIRE(tsv.path() == path);

  // Random order against the sequential truth.
  std::vector<size_t> order(expect.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (size_t i : order) {
    REQUIRE(tsv.id(i) == expect[i].first);
    REQUIRE(tsv.base64(i) == expect[i].second);
    REQUIRE(tsv.line(i) == i + 1);
    auto f = tsv.find(expect[i].first);
    REQUIRE(f);
    REQUIRE(*f == i);
  }
  REQUIRE_FALSE(tsv.find(-5));
  REQUIRE_FALSE(tsv.find(999));
  REQUIRE(contains(tsv.where(3), path + ":4 (image_id " + std::to_string(expect[3].first) + ")"));

  // Moving keeps the map alive and the views valid.
  ImageTsv moved = std::move(tsv);
  REQUIRE(moved.size() == expect.size());
  REQUIRE(moved.base64(699) == expect[699].second);

  // No final newline, spaces around the id, a byte-order mark.
  std::string p2 = dir.write("b.tsv", "\xEF\xBB\xBF 12 \tQUJD\n-3\tQUJDRA==");
  ImageTsv t2(p2, report, true);
  REQUIRE(t2.size() == 2);
  REQUIRE(t2.id(0) == 12);
  REQUIRE(t2.id(1) == -3);
  REQUIRE(t2.base64(1) == "QUJDRA==");

  // An empty file is an empty table.
  ImageTsv t3(dir.write("empty.tsv", ""), report, true);
  REQUIRE(t3.size() == 0);
  REQUIRE_THROWS_AS(ImageTsv(dir.path + "/missing.tsv", report, false), IoError);
}

TEST_CASE("ImageTsv: each bad line is reported with file and line, skipped or fatal", "[dataset]") {
  testutil::TempDir dir{"data"};
  std::string content =
      "1\tQUJD\n"             // 1 ok
      "2 QUJD\n"              // 2 no tab
      "3\tQUJD\textra\n"      // 3 three fields
      "x7\tQUJD\n"            // 4 non-integer id
      "99999999999999999999\tQUJD\n"  // 5 out of range
      "1\tREVG\n"             // 6 duplicate of line 1
      "8\t\n"                 // 7 empty payload
      "\n"                    // 8 blank line inside the file
      "9\tQUJ\r\n"            // 9 length not a multiple of 4
      "10\tR0hJ\r\n"          // 10 ok (CRLF)
      "\n";
  std::string path = dir.write("bad.tsv", content);
  ReadReport report;
  ImageTsv tsv(path, report, false);
  REQUIRE(tsv.size() == 2);
  REQUIRE(tsv.id(0) == 1);
  REQUIRE(tsv.base64(0) == "QUJD");  // the first of the duplicates is kept
  REQUIRE(tsv.id(1) == 10);
  REQUIRE(tsv.base64(1) == "R0hJ");  // no '\r'
  REQUIRE(tsv.line(1) == 10);
  REQUIRE(report.skipped == 8);
  REQUIRE(report.kept == 2);
  REQUIRE(reported(report, {path + ":2:", "no tab"}));
  REQUIRE(reported(report, {path + ":3:", "2 tab-separated fields", "found 3"}));
  REQUIRE(reported(report, {path + ":4:", "'x7' is not an integer"}));
  REQUIRE(reported(report, {path + ":5:", "not an integer"}));
  REQUIRE(reported(report, {path + ":6:", "duplicate image_id 1", "line 1"}));
  REQUIRE(reported(report, {path + ":7:", "empty base64"}));
  REQUIRE(reported(report, {path + ":8:", "blank line"}));
  REQUIRE(reported(report, {path + ":9:", "multiple of 4"}));
  report.summarize("test");  // a warning on stderr, must not throw

  // Strict: the first problem (line 2) is fatal and says how to relax it.
  ReadReport r2;
  std::string msg = data_error([&] { ImageTsv t(path, r2, true); });
  REQUIRE(contains(msg, path + ":2:"));
  REQUIRE(contains(msg, "--strict"));

  // Strict duplicate detection on an otherwise clean file.
  std::string dup = dir.write("dup.tsv", "5\tQUJD\n6\tQUJD\n5\tQUJD\n");
  msg = data_error([&] { ImageTsv t(dup, r2, true); });
  REQUIRE(contains(msg, dup + ":3: duplicate image_id 5 (first seen on line 1)"));
}

TEST_CASE("ImageTsv::bytes decodes the payload and names the line of a bad one", "[dataset]") {
  testutil::TempDir dir{"data"};
  std::string good = base64_encode(reinterpret_cast<const uint8_t*>("hello, world"), 12);
  std::string path = dir.write("i.tsv", "4\t" + good + "\n5\tQ===\n");
  ReadReport report;
  ImageTsv tsv(path, report, true);
  auto b = tsv.bytes(0);
  REQUIRE(std::string(b.begin(), b.end()) == "hello, world");
  std::string msg = data_error([&] { tsv.bytes(1); });
  REQUIRE(contains(msg, path + ":2 (image_id 5)"));
  // Valid base64 of something that is not an image: the decoder's error, with the location.
  msg = data_error([&] { tsv.decode(0); });
  REQUIRE(contains(msg, path + ":1 (image_id 4): "));
}

TEST_CASE("read_texts: records, CRLF, and every kind of bad line", "[dataset]") {
  testutil::TempDir dir{"data"};
  std::string imgs = dir.write("imgs.tsv", "100\tQUJD\n101\tQUJD\n102\tQUJD\n");
  ReadReport ir;
  ImageTsv tsv(imgs, ir, true);

  std::string good =
      "{\"text_id\": 1, \"text\": \"一只“红色”的猫\", \"image_ids\": [100]}\r\n"
      "\r\n"
      "{\"image_ids\": [101, 102], \"text\": \"Two Dogs\", \"text_id\": 2, \"extra\": true}\n"
      "{\"text_id\": 3, \"text\": \"无标注\", \"image_ids\": []}";
  std::string gpath = dir.write("good.jsonl", good);
  ReadReport r;
  auto texts = read_texts(gpath, r, true, &tsv);
  REQUIRE(r.clean());
  REQUIRE(texts.size() == 3);
  REQUIRE(texts[0].text_id == 1);
  REQUIRE(texts[0].text == "一只“红色”的猫");  // raw: preprocessing is the consumer's job
  REQUIRE(texts[0].image_ids == std::vector<int64_t>{100});
  REQUIRE(texts[0].line == 1);
  REQUIRE(texts[1].text == "Two Dogs");
  REQUIRE(texts[1].line == 3);
  REQUIRE(texts[2].image_ids.empty());
  auto pairs = make_pairs(texts, tsv);
  REQUIRE(pairs == std::vector<std::pair<size_t, size_t>>{{0, 0}, {1, 1}, {1, 2}});

  std::string bad =
      "{\"text_id\": 10, \"text\": \"好\", \"image_ids\": [100]}\n"     // 1 ok
      "{\"text_id\": 11, \"text\": \"坏\xff\", \"image_ids\": [100]}\n"  // 2 invalid UTF-8
      "{\"text_id\": 12, \"text\": \"x\", \"image_ids\": [100]\n"        // 3 invalid JSON
      "{\"text_id\": \"13\", \"text\": \"x\", \"image_ids\": [100]}\n"   // 4 string id
      "{\"text_id\": 1.5, \"text\": \"x\", \"image_ids\": [100]}\n"      // 5 float id
      "{\"text_id\": 10, \"text\": \"重复\", \"image_ids\": [100]}\n"    // 6 duplicate text_id
      "{\"text_id\": 16, \"text\": \"  \", \"image_ids\": [100]}\n"      // 7 empty text
      "{\"text_id\": 17, \"text\": \"x\", \"image_ids\": [555]}\n"       // 8 unknown image
      "{\"text_id\": 18, \"text\": \"x\", \"image_ids\": [\"100\"]}\n"   // 9 non-integer image id
      "{\"text_id\": 19, \"text\": \"x\"}\n"                             // 10 no image_ids
      "[1, 2]\n"                                                         // 11 not an object
      "{\"text_id\": 21, \"text\": 5, \"image_ids\": [100]}\n"           // 12 text not a string
      "{\"text_id\": 22, \"text\": \"x\", \"image_ids\": [101, 101]}\n"  // 13 repeated image id
      "{\"text_id\": 23, \"text\": \"ok\", \"image_ids\": [102]}\r\n";   // 14 ok
  std::string bpath = dir.write("bad.jsonl", bad);
  ReadReport br;
  texts = read_texts(bpath, br, false, &tsv);
  REQUIRE(texts.size() == 2);
  REQUIRE(texts[0].text_id == 10);
  REQUIRE(texts[0].text == "好");
  REQUIRE(texts[1].text_id == 23);
  REQUIRE(texts[1].line == 14);
  REQUIRE(br.skipped == 12);
  REQUIRE(br.kept == 2);
  REQUIRE(reported(br, {bpath + ":2:", "invalid UTF-8"}));
  REQUIRE(reported(br, {bpath + ":3:", "invalid JSON"}));
  REQUIRE(reported(br, {bpath + ":4:", "\"text_id\" must be an integer"}));
  REQUIRE(reported(br, {bpath + ":5:", "\"text_id\" must be an integer"}));
  REQUIRE(reported(br, {bpath + ":6:", "duplicate text_id 10", "line 1"}));
  REQUIRE(reported(br, {bpath + ":7:", "text_id 16: empty text"}));
  REQUIRE(reported(br, {bpath + ":8:", "image_id 555 is not in " + imgs}));
  REQUIRE(reported(br, {bpath + ":9:", "not an integer"}));
  REQUIRE(reported(br, {bpath + ":10:", "missing key \"image_ids\""}));
  REQUIRE(reported(br, {bpath + ":11:", "expected a JSON object"}));
  REQUIRE(reported(br, {bpath + ":12:", "\"text\" must be a string"}));
  REQUIRE(reported(br, {bpath + ":13:", "listed twice"}));

  // Without the image check, the unknown image id is accepted.
  ReadReport nr;
  texts = read_texts(bpath, nr, false, nullptr);
  REQUIRE(nr.skipped == 11);
  REQUIRE(std::any_of(texts.begin(), texts.end(), [](const TextRecord& t) { return t.text_id == 17; }));

  // Strict: the first bad line is fatal.
  ReadReport sr;
  std::string msg = data_error([&] { read_texts(bpath, sr, true, &tsv); });
  REQUIRE(contains(msg, bpath + ":2: invalid UTF-8"));
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < bad.size();) {
    size_t nl = bad.find('\n', pos);
    lines.push_back(bad.substr(pos, nl + 1 - pos));
    pos = nl + 1;
  }
  REQUIRE(lines.size() == 14);
  for (auto [line, want] : std::vector<std::pair<int, std::string>>{{7, ":2: text_id 16: empty text"},
                                                                    {8, ":2: text_id 17: image_id 555 is not in"}}) {
    std::string one = dir.write("one.jsonl", lines[0] + lines[size_t(line - 1)]);
    msg = data_error([&] { read_texts(one, sr, true, &tsv); });
    REQUIRE(contains(msg, one + want));
  }
}

TEST_CASE("read_texts: JSON that parses but cannot be held (a number overflowing) is a bad line", "[dataset]") {
  testutil::TempDir dir{"data"};
  // nlohmann's parser throws out_of_range, not parse_error, for this number (a fuzzing finding).
  const std::string path = dir.write("big.jsonl",
                                     "{\"text_id\": 1, \"text\": \"x\", \"image_ids\": [1E11111111111111111111111]}\n"
                                     "{\"text_id\": 2, \"text\": \"y\", \"image_ids\": []}\n");
  ReadReport r;
  const std::vector<TextRecord> texts = read_texts(path, r, false, nullptr);
  REQUIRE(texts.size() == 1);
  CHECK(texts[0].text_id == 2);
  CHECK(r.skipped == 1);
  CHECK(reported(r, {path + ":1:", "invalid JSON", "number overflow"}));
  ReadReport sr;
  CHECK(contains(data_error([&] { read_texts(path, sr, true, nullptr); }), path + ":1: invalid JSON"));
}

TEST_CASE("UTF-8 validation", "[dataset]") {
  REQUIRE(find_invalid_utf8("abc 中文 😀") == std::string::npos);
  REQUIRE(find_invalid_utf8("ab\x80") == 2);           // stray continuation
  REQUIRE(find_invalid_utf8("\xC0\xAF") == 0);         // overlong
  REQUIRE(find_invalid_utf8("x\xE4\xB8") == 1);        // truncated
  REQUIRE(find_invalid_utf8("\xED\xA0\x80") == 0);     // surrogate
  REQUIRE(find_invalid_utf8("\xF4\x90\x80\x80") == 0);  // > U+10FFFF
  REQUIRE(find_invalid_utf8("\xE0\x80\x80") == 0);     // overlong 3-byte
}

TEST_CASE("open_split reads and cross-checks a split folder", "[dataset]") {
  testutil::TempDir dir{"data"};
  dir.write("valid_imgs.tsv", "1\tQUJD\n2\tQUJD\n");
  dir.write("valid_texts.jsonl",
            "{\"text_id\": 1, \"text\": \"a\", \"image_ids\": [1, 2]}\n"
            "{\"text_id\": 2, \"text\": \"b\", \"image_ids\": [3]}\n");
  auto s = open_split(dir.path, "valid", false);
  REQUIRE(s.images->size() == 2);
  REQUIRE(s.texts.size() == 1);
  REQUIRE(s.pairs.size() == 2);
  REQUIRE(s.report.skipped == 1);
  REQUIRE(s.report.kept == 3);  // 2 images + 1 text
  REQUIRE_THROWS_AS(open_split(dir.path, "valid", true), DataError);
  std::string msg = data_error([&] { open_split(dir.path, "test", false); });
  REQUIRE(contains(msg, dir.path + "/test_imgs.tsv' not found"));
  REQUIRE(split_texts_path("d", "train") == "d/train_texts.jsonl");
}

// ------------------------------------------------------------------------------------------------
// The embedded demo dataset data/shapes-zh.

namespace {
std::string demo_dir() { return testutil::source_dir() + "/data/shapes-zh"; }
const char* kDemoFiles[] = {"train_imgs.tsv", "train_texts.jsonl", "valid_imgs.tsv", "valid_texts.jsonl",
                            "test_imgs.tsv",  "test_texts.jsonl",  "vocab.txt",      "ViT-Demo.json",
                            "RBT-Demo.json"};
}  // namespace

TEST_CASE("demo data: splits, ids and the vocabulary", "[dataset][demo]") {
  const std::vector<std::pair<std::string, size_t>> splits = {{"train", 2000}, {"valid", 200}, {"test", 200}};
  std::set<int64_t> image_ids, text_ids;
  std::set<std::string> chars;  // every caption character, as UTF-8
  size_t total_bytes = 0;
  for (const char* f : kDemoFiles) {
    MappedFile m(demo_dir() + "/" + f);
    total_bytes += m.size();
  }
  REQUIRE(total_bytes < 10u * 1000 * 1000);
  for (const auto& [split, n] : splits) {
    CAPTURE(split);
    DatasetSplit s = open_split(demo_dir(), split, /*strict=*/true);  // every text's image exists
    REQUIRE(s.images->size() == n);
    REQUIRE(s.texts.size() == 5 * n);
    REQUIRE(s.pairs.size() == 5 * n);
    std::vector<int> per_image(n, 0);
    for (const auto& t : s.texts) {
      REQUIRE(t.image_ids.size() == 1);
      REQUIRE(text_ids.insert(t.text_id).second);
      ++per_image[*s.images->find(t.image_ids[0])];
      for (size_t i = 0; i < t.text.size();) {
        auto c = static_cast<unsigned char>(t.text[i]);
        size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        chars.insert(t.text.substr(i, len));
        i += len;
      }
    }
    REQUIRE(std::all_of(per_image.begin(), per_image.end(), [](int k) { return k == 5; }));
    for (size_t i = 0; i < s.images->size(); ++i) REQUIRE(image_ids.insert(s.images->id(i)).second);
    // A few images decode to 80x80 RGB.
    for (size_t i : {size_t(0), n / 2, n - 1}) {
      auto bytes = s.images->bytes(i);
      REQUIRE(bytes.size() > 2);
      REQUIRE(bytes[0] == 0xFF);  // JPEG SOI
      REQUIRE(bytes[1] == 0xD8);
      Image im = s.images->decode(i);
      REQUIRE(im.width == 80);
      REQUIRE(im.height == 80);
      REQUIRE(im.mode == PixelMode::RGB);
    }
  }

  // vocab.txt: BERT-Chinese special-token layout, then every caption character.
  std::vector<std::string> vocab;
  {
    std::ifstream in(demo_dir() + "/vocab.txt");
    for (std::string line; std::getline(in, line);) vocab.push_back(line);
  }
  REQUIRE(vocab.size() > 104);
  REQUIRE(vocab[0] == "[PAD]");
  REQUIRE(vocab[1] == "[unused1]");
  REQUIRE(vocab[99] == "[unused99]");
  REQUIRE(vocab[100] == "[UNK]");
  REQUIRE(vocab[101] == "[CLS]");
  REQUIRE(vocab[102] == "[SEP]");
  REQUIRE(vocab[103] == "[MASK]");
  std::set<std::string> tokens(vocab.begin(), vocab.end());
  REQUIRE(tokens.size() == vocab.size());  // no duplicates
  for (const auto& c : chars) {
    CAPTURE(c);
    REQUIRE(tokens.count(c) == 1);
  }

  // Through cn_clip's tokenizer and dataset preprocessing: no caption hits [UNK] or gets truncated.
  Tokenizer tok = Tokenizer::load(demo_dir() + "/vocab.txt");
  REQUIRE(tok.vocab_size() == int64_t(vocab.size()));
  size_t checked = 0;
  for (const char* split : {"train", "valid", "test"}) {
    ReadReport r;
    for (const auto& t : read_texts(split_texts_path(demo_dir(), split), r, true)) {
      auto ids = tok.token_ids(preprocess_text(t.text));
      CAPTURE(t.text);
      REQUIRE(!ids.empty());
      REQUIRE(std::find(ids.begin(), ids.end(), tok.unk_id()) == ids.end());
      REQUIRE(ids.size() <= 50);
      ++checked;
    }
  }
  REQUIRE(checked == 12000);

  // The tiny model's configs: cn_clip's schema, vocab_size matching vocab.txt.
  auto rbt = nlohmann::json::parse(read_file(demo_dir() + "/RBT-Demo.json"));
  auto vit = nlohmann::json::parse(read_file(demo_dir() + "/ViT-Demo.json"));
  REQUIRE(rbt.at("vocab_size").get<size_t>() == vocab.size());
  REQUIRE(rbt.at("text_max_position_embeddings").get<int>() >= 52);
  REQUIRE(rbt.at("text_hidden_size").get<int>() % rbt.at("text_num_attention_heads").get<int>() == 0);
  REQUIRE(vit.at("image_resolution").get<int>() % vit.at("vision_patch_size").get<int>() == 0);
  REQUIRE(vit.at("vision_width").get<int>() % vit.at("vision_head_width").get<int>() == 0);
}

TEST_CASE("demo data: the generator reproduces data/shapes-zh byte for byte", "[dataset][demo]") {
  std::string gen = testutil::bin_dir() + "/make-demo-data";
  REQUIRE(file_exists(gen));
  testutil::TempDir dir{"data"};
  int rc = std::system(("'" + gen + "' --out '" + dir.path + "/shapes-zh' --scenes '" + dir.path + "/scenes.jsonl' 2>'" +
                        dir.path + "/log.txt'")
                           .c_str());
  REQUIRE(rc == 0);
  for (const char* f : kDemoFiles) {
    CAPTURE(f);
    std::string fresh = read_file(dir.path + "/shapes-zh/" + f);
    std::string committed = read_file(demo_dir() + "/" + f);
    REQUIRE(fresh.size() == committed.size());
    REQUIRE(fresh == committed);
  }
  // Nothing else was written (no stray temporary files).
  size_t entries = 0;
  if (DIR* d = opendir((dir.path + "/shapes-zh").c_str())) {
    while (auto* e = readdir(d))
      if (e->d_name[0] != '.') ++entries;
    closedir(d);
  }
  REQUIRE(entries == std::size(kDemoFiles));

  // --scenes: one line per image, in id order; every caption names its image's background colour
  // and the colour of each shape group.
  std::map<int64_t, nlohmann::json> scenes;
  {
    std::ifstream in(dir.path + "/scenes.jsonl");
    int64_t expect = 100001;
    for (std::string line; std::getline(in, line); ++expect) {
      auto j = nlohmann::json::parse(line);
      REQUIRE(j.at("image_id").get<int64_t>() == expect);
      REQUIRE(!j.at("groups").empty());
      scenes[expect] = j;
    }
  }
  REQUIRE(scenes.size() == 2400);
  REQUIRE(scenes.at(102201).at("split") == "test");
  size_t captions = 0;
  for (const char* split : {"train", "valid", "test"}) {
    ReadReport r;
    for (const auto& t : read_texts(split_texts_path(demo_dir(), split), r, true)) {
      const auto& sc = scenes.at(t.image_ids.at(0));
      CAPTURE(t.text);
      REQUIRE(contains(t.text, sc.at("background").get<std::string>()));
      for (const auto& g : sc.at("groups")) REQUIRE(contains(t.text, g.at("color").get<std::string>()));
      ++captions;
    }
  }
  REQUIRE(captions == 12000);

  // The captions single out their images: in the test split a model that read every caption
  // perfectly would rank the right image first for nearly all of them (the generator's report).
  std::string log = read_file(dir.path + "/log.txt");
  auto pos = log.find("test: ");
  REQUIRE(pos != std::string::npos);
  auto at = log.find("Recall@1 ", pos);
  REQUIRE(at != std::string::npos);
  double t2i = std::stod(log.substr(at + 9));
  double i2t = std::stod(log.substr(log.find("/ ", at) + 2));
  CHECK(t2i >= 95.0);
  CHECK(i2t >= 95.0);
}

TEST_CASE("one error policy: stop at the first bad line by default, skip counts per reason", "[dataset][policy]") {
  testutil::TempDir dir{"data"};
  std::string tsv = dir.write("i.tsv", std::string("1\tQUJD\n2 QUJD\n3\tQU") + '\0' + "D\n4\tQUJ\n5\tQUJD\n6 x\n");
  // The one-argument constructor is the default policy: the first problem stops.
  std::string msg = data_error([&] { ImageTsv t(tsv); });
  REQUIRE(contains(msg, tsv + ":2:"));
  REQUIRE(contains(msg, "--on-error skip"));
  ReadReport r;
  ImageTsv t(tsv, r, /*strict=*/false);
  REQUIRE(t.size() == 2);
  REQUIRE(r.skipped == 4);
  REQUIRE(r.reasons.at("no tab") == 2);
  REQUIRE(r.reasons.at("NUL byte") == 1);
  REQUIRE(r.reasons.at("bad base64 length") == 1);
  REQUIRE(reported(r, {tsv + ":3:", "NUL byte at column 5"}));

  std::string js = dir.write("t.jsonl", std::string("{\"text_id\": 1, \"text\": \"a\", \"image_ids\": []}\n") +
                                            "{\"text_id\": 2, \"text\": \"\", \"image_ids\": []}\n" +
                                            std::string("{\"text_id\": 3, \"text\": \"b") + '\0' + "\", \"image_ids\": []}\n" +
                                            "{\"text_id\": 1, \"text\": \"c\", \"image_ids\": []}\n" +
                                            "{\"text_id\": 99999999999999999999, \"text\": \"d\", \"image_ids\": []}\n");
  ReadReport r2;
  msg = data_error([&] { read_texts(js, r2, true); });
  REQUIRE(contains(msg, js + ":2: text_id 2: empty text"));
  ReadReport r3;
  auto texts = read_texts(js, r3, false);
  REQUIRE(texts.size() == 1);
  REQUIRE(r3.reasons.at("empty text") == 1);
  REQUIRE(r3.reasons.at("duplicate id") == 1);
  REQUIRE(r3.skipped == 4);
  ReadReport all;
  all.merge(r);
  all.merge(r3);
  REQUIRE(all.reasons.at("empty text") == 1);
  REQUIRE(all.reasons.at("no tab") == 2);

  // --strict and --on-error skip contradict each other; --strict alone is the default.
  DataOptions d;
  REQUIRE_FALSE(d.skip_bad());
  d.on_error = "skip";
  REQUIRE(d.skip_bad());
  d.strict = true;
  REQUIRE_THROWS_AS(d.resolve(false, false), UsageError);
}
