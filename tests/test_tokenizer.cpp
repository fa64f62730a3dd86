#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "clip/error.h"
#include "clip/sha256.h"
#include "clip/tokenizer.h"
#include "util.h"

using namespace clip;

static const Tokenizer& fixture_tokenizer() {
  static Tokenizer t = Tokenizer::load(testutil::fixture("vocab.txt"));
  return t;
}

TEST_CASE("tokens match cn_clip for every fixture text, both paths", "[tokenizer]") {
  const Tokenizer& tok = fixture_tokenizer();
  REQUIRE(tok.vocab_size() == 21128);
  REQUIRE(tok.vocab_sha256().rfind("45bbac6b", 0) == 0);
  std::ifstream texts(testutil::fixture("texts.jsonl")), expected(testutil::fixture("expected/tokens.jsonl"));
  std::string tline, eline;
  int n = 0;
  while (std::getline(texts, tline) && std::getline(expected, eline)) {
    auto t = nlohmann::json::parse(tline);
    auto e = nlohmann::json::parse(eline);
    REQUIRE(t["text_id"] == e["text_id"]);
    const std::string raw = t["text"];
    INFO("text_id " << t["text_id"]);
    CHECK(tok.tokenize(raw) == e["wordpieces"].get<std::vector<std::string>>());
    CHECK(tok.encode(raw, 52) == e["input_ids"].get<std::vector<int64_t>>());
    const std::string pre = preprocess_text(raw);
    CHECK(pre == e["preprocessed_text"].get<std::string>());
    CHECK(tok.tokenize(pre) == e["wordpieces_preprocessed"].get<std::vector<std::string>>());
    CHECK(tok.encode(pre, 52) == e["input_ids_preprocessed"].get<std::vector<int64_t>>());
    ++n;
  }
  REQUIRE(n == 12);
}

TEST_CASE("tokenizer worked examples from the reference", "[tokenizer]") {
  const Tokenizer& tok = fixture_tokenizer();
  auto ids = [&](const std::string& s) {
    auto v = tok.encode(s, 52);
    while (!v.empty() && v.back() == 0) v.pop_back();
    return v;
  };
  CHECK(ids("杰尼龟") == std::vector<int64_t>{101, 3345, 2225, 7991, 102});
  CHECK(ids("妙蛙种子") == std::vector<int64_t>{101, 1975, 6032, 4905, 2094, 102});
  CHECK(ids("iPhone14 Pro手机壳“新款”") ==
        std::vector<int64_t>{101, 8210, 8717, 8376, 2797, 3322, 1900, 100, 3173, 3621, 100, 102});
  CHECK(tok.tokenize("Café déjà vu!") == std::vector<std::string>{"cafe", "de", "##ja", "v", "##u", "!"});
  CHECK(ids("") == std::vector<int64_t>{101, 102});
  CHECK(tok.tokenize("2023年") == std::vector<std::string>{"202", "##3", "年"});
  // truncation keeps [CLS] and [SEP]: 50 content tokens at most
  std::string cats;
  for (int i = 0; i < 60; ++i) cats += "猫";
  auto v = tok.encode(cats, 52);
  REQUIRE(v.size() == 52);
  CHECK(v.front() == 101);
  CHECK(v[50] == 4344);
  CHECK(v[51] == 102);
  // special-token strings are plain text, emoji are [UNK], full-width Latin stays full-width
  CHECK(tok.tokenize("[CLS]") == std::vector<std::string>{"[", "cl", "##s", "]"});
  CHECK(tok.tokenize("😀") == std::vector<std::string>{"[UNK]"});
  auto fw = tok.tokenize("ＡＢＣ");
  REQUIRE(fw.size() == 3);
  CHECK(fw[0] == "ａ");
  // a word over 200 characters is one [UNK]
  CHECK(tok.tokenize(std::string(201, 'a')) == std::vector<std::string>{"[UNK]"});
  // invalid UTF-8 bytes are dropped like U+FFFD, the rest survives
  CHECK(tok.tokenize(std::string("猫\xff\xfe狗")) == std::vector<std::string>{"猫", "狗"});
  // context length is honoured
  CHECK(tok.encode("一只猫", 4) == std::vector<int64_t>{101, 671, 1372, 102});
}

TEST_CASE("vocab errors name the file and the remedy", "[tokenizer]") {
  try {
    Tokenizer::load("/nonexistent/vocab.txt");
    FAIL("no error");
  } catch (const ModelError& e) {
    CHECK(std::string(e.what()).find("/nonexistent/vocab.txt") != std::string::npos);
    CHECK(std::string(e.what()).find("--vocab") != std::string::npos);
  }
  REQUIRE_THROWS_AS(find_vocab("", "/nonexistent/model.pt"), ModelError);
  REQUIRE_THROWS_AS(find_vocab("/nonexistent/v.txt", testutil::fixture("vocab.txt")), ModelError);
  CHECK(find_vocab("", testutil::fixture("")) == testutil::fixture("vocab.txt"));
}

TEST_CASE("sha256 test vectors", "[sha256]") {
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string m(1000000, 'a');
  Sha256 s;
  for (size_t i = 0; i < m.size(); i += 777) s.update(m.data() + i, std::min<size_t>(777, m.size() - i));
  CHECK(s.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
