// clip-serve's HTTP API, end to end over loopback: a Server started in-process on a free port with the
// fixture model and a store built from the fixture images, driven by httplib::Client.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <cmath>
#include <future>
#include <thread>

#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/image/image.h"
#include "clip/retrieval/query.h"
#include "clip/serve/serve.h"
#include "clip/retrieval/store.h"
#include "util.h"

using namespace clip;
using json = nlohmann::json;

namespace {

struct Fixture {
  std::unique_ptr<Encoder> enc;
  FeatureSet store;
  std::unique_ptr<ImageTsv> tsv;

  Fixture() {
    ModelOptions mo;
    mo.checkpoint = testutil::fixture("checkpoints/vit_bert.pt");
    mo.vision_model = testutil::fixture("configs/ViT-Tiny-P32.json");
    mo.text_model = testutil::fixture("configs/RBT-Tiny-H64-L2.json");
    mo.vocab = testutil::fixture("vocab.txt");
    RuntimeOptions ro;
    enc = std::make_unique<Encoder>(mo, ro);
    tsv = std::make_unique<ImageTsv>(testutil::fixture("images.tsv"));
    const int r = enc->resolution();
    const int64_t n = static_cast<int64_t>(tsv->size());
    at::Tensor px = at::empty({n, 3, r, r}, at::kFloat);
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < n; ++i) {
      auto b = tsv->bytes(i);
      enc->preprocess_image(b.data(), b.size(), px[i].data_ptr<float>());
      ids.push_back(tsv->id(i));
    }
    at::Tensor f = enc->encode_pixels(px).contiguous();
    StoreMeta meta;
    meta.kind = "image";
    meta.sources.push_back(source_file_info(testutil::fixture("images.tsv")));
    store = make_feature_set(ids, f.data_ptr<float>(), f.size(1), StoreDtype::f32, meta);
  }
};

Fixture& fx() {
  static Fixture f;
  return f;
}

struct Running {
  std::unique_ptr<Server> server;
  std::unique_ptr<httplib::Client> cli;
  explicit Running(ServeOptions o = {}) {
    o.host = "127.0.0.1";
    o.port = 0;
    server = std::make_unique<Server>(*fx().enc, fx().store, o);
    server->start();
    cli = std::make_unique<httplib::Client>("127.0.0.1", server->port());
    cli->set_read_timeout(30, 0);
  }
};

json post_json(httplib::Client& c, const std::string& path, const std::string& body, int expect_status) {
  auto r = c.Post(path.c_str(), body, "application/json");
  REQUIRE(r);
  INFO(path << " " << body << " -> " << r->status << " " << r->body);
  CHECK(r->status == expect_status);
  CHECK(r->get_header_value("Content-Type").find("application/json") == 0);
  return json::parse(r->body);
}

// A 4xx answer with {"error": "..."} whose message contains `needle`.
void expect_error(const httplib::Result& r, int status, const std::string& needle) {
  REQUIRE(r);
  INFO(r->status << " " << r->body);
  CHECK(r->status == status);
  json j = json::parse(r->body);
  REQUIRE(j.contains("error"));
  CHECK(j["error"].get<std::string>().find(needle) != std::string::npos);
}

void check_results(const json& j, size_t n) {
  REQUIRE(j["results"].is_array());
  REQUIRE(j["results"].size() == n);
  for (size_t i = 0; i < n; ++i) {
    const auto& r = j["results"][i];
    CHECK(r["rank"].get<int>() == static_cast<int>(i + 1));
    CHECK(fx().store.find(r["id"].get<int64_t>()) >= 0);
    if (i > 0) CHECK(r["score"].get<float>() <= j["results"][i - 1]["score"].get<float>());
  }
  CHECK(j["took_ms"].get<double>() >= 0.0);
}

std::string image_bytes(size_t i) {
  auto b = fx().tsv->bytes(i);
  return std::string(b.begin(), b.end());
}

}  // namespace

TEST_CASE("health and the page", "[serve]") {
  Running s;
  auto r = s.cli->Get("/api/health");
  REQUIRE(r);
  CHECK(r->status == 200);
  json h = json::parse(r->body);
  CHECK(h["status"] == "ok");
  CHECK(h["version"] == CLIP_VERSION);
  CHECK(h["model"].get<std::string>().find("ViT-Tiny-P32") != std::string::npos);
  CHECK(h["store"]["size"] == fx().store.size());
  CHECK(h["store"]["dim"] == 32);
  CHECK(h["images"] == 7);
  CHECK(h["limits"]["max_k"] == 100);

  auto page = s.cli->Get("/");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK(page->get_header_value("Content-Type").find("text/html") == 0);
  CHECK(page->body.find("文本搜图") != std::string::npos);
  CHECK(page->body.find("图片搜图") != std::string::npos);
  for (const char* p : {"/app.js", "/style.css", "/index.html"}) {
    auto a = s.cli->Get(p);
    REQUIRE(a);
    CHECK(a->status == 200);
    const WebAsset* w = find_web_asset(p);
    REQUIRE(w);
    CHECK(a->body == std::string(reinterpret_cast<const char*>(w->data), w->size));
  }
  CHECK(s.cli->Get("/app.js")->body.find("/api/search/text") != std::string::npos);
}

TEST_CASE("text search answers what search_texts answers", "[serve]") {
  Running s;
  const std::string q = "一只金毛犬在草地上奔跑";
  json j = post_json(*s.cli, "/api/search/text", json{{"text", q}, {"k", 3}}.dump(), 200);
  CHECK(j["query"] == q);
  CHECK(j["k"] == 3);
  check_results(j, 3);
  auto ref = search_texts(*fx().enc, fx().store, {q}, 3).at(0);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(j["results"][i]["id"].get<int64_t>() == ref[i].id);
    CHECK(j["results"][i]["score"].get<float>() == Approx(ref[i].score).margin(1e-5));
  }
  // No k: the default (10), capped by the store's 7 rows.
  check_results(post_json(*s.cli, "/api/search/text", json{{"text", q}}.dump(), 200), 7);
  // k at the upper limit is accepted.
  check_results(post_json(*s.cli, "/api/search/text", json{{"text", q}, {"k", 100}}.dump(), 200), 7);
}

TEST_CASE("image search finds the image itself first (multipart, base64, data URL)", "[serve]") {
  Running s;
  for (size_t i : {size_t(0), size_t(3)}) {
    const std::string bytes = image_bytes(i);
    const int64_t id = fx().tsv->id(i);
    httplib::MultipartFormDataItems items = {{"image", bytes, "query.jpg", "image/jpeg"}, {"k", "5", "", ""}};
    auto r = s.cli->Post("/api/search/image", items);
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == 200);
    json j = json::parse(r->body);
    check_results(j, 5);
    CHECK(j["query"] == "query.jpg");
    CHECK(j["results"][0]["id"].get<int64_t>() == id);
    CHECK(j["results"][0]["score"].get<float>() == Approx(1.0f).margin(1e-4));

    const std::string b64 = base64_encode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    json j2 = post_json(*s.cli, "/api/search/image", json{{"image", b64}, {"k", 2}}.dump(), 200);
    check_results(j2, 2);
    CHECK(j2["results"][0]["id"] == id);
    json j3 = post_json(*s.cli, "/api/search/image", json{{"image", "data:image/jpeg;base64," + b64}}.dump(), 200);
    check_results(j3, 7);
    CHECK(j3["results"][0]["id"] == id);
  }
  CHECK(s.server->stats().image_queries == 6);
}

TEST_CASE("images and thumbnails", "[serve]") {
  Running s;
  const int64_t id = fx().tsv->id(0);
  auto r = s.cli->Get(("/api/image/" + std::to_string(id)).c_str());
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body == image_bytes(0));
  CHECK(r->get_header_value("Content-Type").rfind("image/", 0) == 0);

  const Image orig = decode_image(reinterpret_cast<const uint8_t*>(r->body.data()), r->body.size());
  for (auto [query, side] : {std::pair<std::string, int>{"?thumb=1", 160}, {"?size=32", 32}}) {
    auto t = s.cli->Get(("/api/image/" + std::to_string(id) + query).c_str());
    REQUIRE(t);
    CHECK(t->status == 200);
    CHECK(t->get_header_value("Content-Type") == "image/jpeg");
    Image th = decode_image(reinterpret_cast<const uint8_t*>(t->body.data()), t->body.size());
    CHECK(std::max(th.width, th.height) == std::min(side, std::max(orig.width, orig.height)));
    // The aspect ratio is kept.
    CHECK(double(th.width) / th.height == Approx(double(orig.width) / orig.height).epsilon(0.05));
  }
  // Cached: the same bytes again.
  auto a = s.cli->Get(("/api/image/" + std::to_string(id) + "?size=32").c_str());
  auto b = s.cli->Get(("/api/image/" + std::to_string(id) + "?size=32").c_str());
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->body == b->body);
}

TEST_CASE("bad requests get a 4xx JSON error and the server keeps serving", "[serve]") {
  ServeOptions o;
  const std::string big = image_bytes(0);
  o.max_upload_bytes = big.size() - 1;  // image 0 is just over the limit
  o.max_image_side = 64;                // every fixture image is larger (224 or more) on some side
  Running s(o);
  auto& c = *s.cli;
  auto text = [&](const std::string& body) { return c.Post("/api/search/text", body, "application/json"); };

  expect_error(text(R"({"text": ""})"), 400, "empty");
  expect_error(text(R"({"text": "   "})"), 400, "empty");
  expect_error(text(R"({"k": 5})"), 400, "no text");
  expect_error(text(R"({"text": 42})"), 400, "text must be a string");
  expect_error(text("not json"), 400, "JSON");
  expect_error(text("[1, 2]"), 400, "JSON object");
  expect_error(text(R"({"text": "猫", "k": 0})"), 400, "k must be an integer from 1 to 100");
  expect_error(text(R"({"text": "猫", "k": 101})"), 400, "got 101");
  expect_error(text(R"({"text": "猫", "k": "5"})"), 400, "k must be");
  expect_error(text(R"({"text": "猫", "k": 2.5})"), 400, "k must be");
  expect_error(text(json{{"text", std::string(2000, 'a')}}.dump()), 413, "limit is 1024");

  // Images: undecodable, oversized file, oversized dimensions, bad base64, missing field, bad k.
  httplib::MultipartFormDataItems junk = {{"image", "this is not an image at all", "x.jpg", "image/jpeg"}};
  expect_error(c.Post("/api/search/image", junk), 400, "not a readable image");
  httplib::MultipartFormDataItems huge = {{"image", big, "big.jpg", "image/jpeg"}};
  expect_error(c.Post("/api/search/image", huge), 413, "limit is " + std::to_string(big.size() - 1));
  const std::string small = image_bytes(1);
  REQUIRE(small.size() < big.size());
  httplib::MultipartFormDataItems wide = {{"image", small, "wide.jpg", "image/jpeg"}};
  expect_error(c.Post("/api/search/image", wide), 413, "limit is 64 on each side");
  httplib::MultipartFormDataItems none = {{"file", small, "x.jpg", "image/jpeg"}};
  expect_error(c.Post("/api/search/image", none), 400, "no image");
  httplib::MultipartFormDataItems badk = {{"image", small, "x.jpg", "image/jpeg"}, {"k", "ten", "", ""}};
  expect_error(c.Post("/api/search/image", badk), 400, "got 'ten'");
  expect_error(c.Post("/api/search/image", R"({"image": "abcde"})", "application/json"), 400, "base64");
  expect_error(c.Post("/api/search/image", R"({"image": ""})", "application/json"), 400, "empty");
  expect_error(c.Post("/api/search/image", R"({"k": 3})", "application/json"), 400, "no image");
  expect_error(c.Post("/api/search/image", "", "application/json"), 400, "multipart");
  // A body far over the limit is refused before it is read, still as JSON.
  expect_error(c.Post("/api/search/image", std::string(1 << 20, 'x'), "application/json"), 413, "too large");

  // Images: unknown id, non-integer id, bad size.
  expect_error(c.Get("/api/image/999999"), 404, "no image with id 999999");
  expect_error(c.Get("/api/image/abc"), 400, "must be an integer");
  expect_error(c.Get(("/api/image/" + std::to_string(fx().tsv->id(0)) + "?size=5").c_str()), 400, "size must be");
  expect_error(c.Get("/api/nothing"), 404, "no such endpoint");

  // Still serving, and correctly.
  json j = post_json(c, "/api/search/text", json{{"text", "一只金毛犬"}, {"k", 2}}.dump(), 200);
  check_results(j, 2);
}

TEST_CASE("concurrent text queries are batched and each gets its own answer", "[serve]") {
  ServeOptions o;
  o.batch_window_ms = 100;  // wide, so the queries below land in few batches even on a loaded machine
  o.http_threads = 16;
  Running s(o);
  std::vector<std::string> texts;
  {
    std::ifstream in(testutil::fixture("texts.jsonl"));
    std::string line;
    while (std::getline(in, line))
      if (!line.empty()) texts.push_back(json::parse(line)["text"].get<std::string>());
  }
  REQUIRE(texts.size() >= 12);
  const auto ref = search_texts(*fx().enc, fx().store, texts, 4);
  std::vector<std::future<json>> fut;
  std::atomic<int> ready{0};
  for (size_t i = 0; i < 12; ++i)
    fut.push_back(std::async(std::launch::async, [&, i] {
      httplib::Client c("127.0.0.1", s.server->port());
      c.set_read_timeout(60, 0);
      ready++;
      while (ready < 12) std::this_thread::yield();
      auto r = c.Post("/api/search/text", json{{"text", texts[i]}, {"k", 4}}.dump(), "application/json");
      if (!r || r->status != 200) return json{{"failed", r ? r->body : "no answer"}};
      return json::parse(r->body);
    }));
  for (size_t i = 0; i < fut.size(); ++i) {
    json j = fut[i].get();
    INFO(j.dump());
    REQUIRE(!j.contains("failed"));
    CHECK(j["query"] == texts[i]);
    check_results(j, 4);
    for (size_t h = 0; h < 4; ++h) {
      CHECK(j["results"][h]["id"].get<int64_t>() == ref[i][h].id);
      CHECK(j["results"][h]["score"].get<float>() == Approx(ref[i][h].score).margin(1e-5));
    }
  }
  const ServeStats st = s.server->stats();
  CHECK(st.text_queries == 12);
  CHECK(st.text_batches < 12);
  CHECK(st.max_batch_seen > 1);
}

TEST_CASE("stop ends serving promptly; bind errors are usage errors", "[serve]") {
  ServeOptions o;
  auto r = std::make_unique<Running>(o);
  const int port = r->server->port();
  CHECK(port > 0);
  REQUIRE(r->cli->Get("/api/health"));
  const auto t0 = std::chrono::steady_clock::now();
  r->server->stop();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(2, 0);
  CHECK(!c.Get("/api/health"));

  // The same port taken by another server: a UsageError naming the address.
  Running other;
  ServeOptions clash;
  clash.port = other.server->port();
  Server s2(*fx().enc, fx().store, clash);
  CHECK_THROWS_WITH(s2.bind(), Catch::Contains("127.0.0.1:" + std::to_string(clash.port)));
}

TEST_CASE("hostile uploads cannot block the server: refused fast, decoded under a deadline", "[serve][hostile]") {
  ServeOptions o;
  o.http_threads = 4;
  Running s(o);
  auto& c = *s.cli;
  c.set_read_timeout(10, 0);
  // Ten CVE-2021-42715 HDR uploads at once (more than the HTTP threads): each is refused quickly
  // and /api/health keeps answering.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<int>> up;
  for (int i = 0; i < 10; ++i)
    up.push_back(std::async(std::launch::async, [&] {
      httplib::Client cc("127.0.0.1", s.server->port());
      cc.set_read_timeout(10, 0);
      httplib::MultipartFormDataItems items = {{"image", testutil::hdr_bomb(), "bomb.hdr", "image/vnd.radiance"}};
      auto r = cc.Post("/api/search/image", items);
      if (!r) return -1;
      if (r->body.find("Radiance HDR") == std::string::npos) return -2;
      return r->status;
    }));
  for (auto& f : up) CHECK(f.get() == 400);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  auto h = c.Get("/api/health");
  REQUIRE(h);
  CHECK(h->status == 200);

  // A decode that outlives its deadline is abandoned with a 503; the server still answers.
  ServeOptions slow;
  slow.decode_timeout_ms = 1;
  Running s2(slow);
  Image big;
  big.mode = PixelMode::RGB;
  big.width = big.height = 4000;
  big.pixels.resize(size_t(4000) * 4000 * 3);
  for (size_t i = 0; i < big.pixels.size(); ++i) big.pixels[i] = static_cast<uint8_t>((i / 3) % 4000 / 16 + i % 3);
  const auto jpg = encode_jpeg(big, 90);
  REQUIRE(jpg.size() < slow.max_upload_bytes);
  httplib::MultipartFormDataItems items = {{"image", std::string(jpg.begin(), jpg.end()), "big.jpg", "image/jpeg"}};
  expect_error(s2.cli->Post("/api/search/image", items), 503, "took longer than 1 ms");
  auto h2 = s2.cli->Get("/api/health");
  REQUIRE(h2);
  CHECK(h2->status == 200);
  CHECK(json::parse(h2->body)["limits"]["decode_timeout_ms"].get<int>() == 1);
  const auto t1 = std::chrono::steady_clock::now();
  s2.server->stop();
  CHECK(std::chrono::steady_clock::now() - t1 < std::chrono::seconds(5));
}
