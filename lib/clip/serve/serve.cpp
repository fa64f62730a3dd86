#include "clip/serve/serve.h"

#include <sys/socket.h>

#include <ATen/ATen.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "clip/data/dataset.h"
#include "clip/retrieval/encoder.h"
#include "clip/base/byteorder.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/search.h"

namespace clip {

namespace {

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// A request the client got wrong: answered with `status` and {"error": message}.
struct HttpError : std::runtime_error {
  int status;
  HttpError(int s, const std::string& m) : std::runtime_error(m), status(s) {}
};

void send_json(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json; charset=utf-8");
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Width and height from a PNG or JPEG header without decoding (so a decompression bomb is refused
// before any pixel buffer is allocated). False for other formats or a truncated header.
bool peek_dimensions(const uint8_t* p, size_t n, int& w, int& h) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (n >= 24 && std::equal(png_sig, png_sig + 8, p)) {
    w = static_cast<int>(std::min<uint32_t>(be32(p + 16), 1u << 30));
    h = static_cast<int>(std::min<uint32_t>(be32(p + 20), 1u << 30));
    return true;
  }
  if (n >= 4 && p[0] == 0xff && p[1] == 0xd8) {
    size_t i = 2;
    while (i + 9 < n) {
      if (p[i] != 0xff) return false;
      const uint8_t m = p[i + 1];
      if (m == 0xff) { ++i; continue; }
      if (m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7)) { i += 2; continue; }
      const size_t len = be16(p + i + 2);
      // SOF0..SOF15 except DHT (c4), JPG (c8) and DAC (cc) carry the frame size.
      if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) {
        h = be16(p + i + 5);
        w = be16(p + i + 7);
        return true;
      }
      i += 2 + len;
    }
  }
  return false;
}

const char* sniff_image_type(const std::vector<uint8_t>& b) {
  if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8) return "image/jpeg";
  if (b.size() >= 8 && b[0] == 0x89 && b[1] == 'P') return "image/png";
  if (b.size() >= 6 && b[0] == 'G' && b[1] == 'I' && b[2] == 'F') return "image/gif";
  if (b.size() >= 2 && b[0] == 'B' && b[1] == 'M') return "image/bmp";
  return "application/octet-stream";
}

// "k" from a JSON body or form field: an integer in [1, max_k]; `fallback` when absent.
int parse_k(const json* v, const std::string* s, int fallback, int max_k) {
  const std::string range = "k must be an integer from 1 to " + std::to_string(max_k);
  long long k = fallback;
  if (v) {
    if (v->is_null()) return fallback;
    if (!v->is_number_integer() && !v->is_number_unsigned()) throw HttpError(400, range + ", got " + v->dump());
    k = v->get<long long>();
  } else if (s) {
    size_t used = 0;
    try {
      k = std::stoll(*s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != s->size()) throw HttpError(400, range + ", got '" + *s + "'");
  }
  if (k < 1 || k > max_k) throw HttpError(400, range + ", got " + std::to_string(k));
  return static_cast<int>(k);
}

json results_json(const std::string& query, int k, const std::vector<Hit>& hits, double took_ms, const IdNames* names) {
  json r = json::array();
  for (size_t i = 0; i < hits.size(); ++i)
    r.push_back({{"rank", i + 1}, {"id", id_to_json(hits[i].id, names)}, {"score", hits[i].score}});
  return {{"query", query}, {"k", k}, {"results", std::move(r)}, {"took_ms", took_ms}};
}

// Decodes and preprocesses uploaded images on its own threads. The state is shared with the
// (detached) threads, so a stuck decode can neither block a request past its deadline nor stop():
// stop() only tells the threads to leave once their current job is done.
class DecodePool {
 public:
  struct Job {
    std::vector<uint8_t> bytes;
    std::promise<Image> done;
  };
  // io/min_side: the encoder's image options and resolution (decode_image(data, n, io, min_side)).
  DecodePool(int threads, size_t max_queue, const ImageOptions& io, int min_side) : st_(std::make_shared<State>()) {
    st_->max_queue = std::max<size_t>(1, max_queue);
    st_->io = io;
    st_->min_side = min_side;
    for (int i = 0; i < std::max(1, threads); ++i) std::thread([st = st_] { run(st); }).detach();
  }
  ~DecodePool() { stop(); }
  // Queues a decode; HttpError 503 when the queue is full or the pool stopped.
  std::future<Image> submit(std::vector<uint8_t> bytes) {
    auto job = std::make_shared<Job>();
    job->bytes = std::move(bytes);
    auto fut = job->done.get_future();
    {
      std::lock_guard<std::mutex> lk(st_->mu);
      if (st_->stop) throw HttpError(503, "the server is shutting down");
      if (st_->queue.size() >= st_->max_queue)
        throw HttpError(503, "too many images are being decoded; try again shortly");
      st_->queue.push_back(job);
    }
    st_->cv.notify_one();
    return fut;
  }
  void stop() {
    std::deque<std::shared_ptr<Job>> left;
    {
      std::lock_guard<std::mutex> lk(st_->mu);
      st_->stop = true;
      left.swap(st_->queue);
    }
    st_->cv.notify_all();
    for (auto& j : left)
      j->done.set_exception(std::make_exception_ptr(HttpError(503, "the server is shutting down")));
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Job>> queue;
    size_t max_queue = 16;
    bool stop = false;
    ImageOptions io;
    int min_side = 0;
  };
  static void run(std::shared_ptr<State> st) {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(st->mu);
        st->cv.wait(lk, [&] { return st->stop || !st->queue.empty(); });
        if (st->stop) return;
        job = st->queue.front();
        st->queue.pop_front();
      }
      try {
        job->done.set_value(decode_image(job->bytes.data(), job->bytes.size(), st->io, st->min_side));
      } catch (...) {
        job->done.set_exception(std::current_exception());
      }
    }
  }
  std::shared_ptr<State> st_;
};

struct TextJob {
  std::string text;
  int k;
  std::promise<std::vector<Hit>> done;
};

}  // namespace

struct Server::Impl {
  Encoder& enc;
  std::unique_ptr<Collection> owned;  // when constructed from one FeatureSet
  const Collection& coll;             // what queries search (shards, approximate index)
  const FeatureSet& store;            // the first shard: kind, source images, info
  ServeOptions opt;
  httplib::Server http;
  std::unique_ptr<ImageSource> images;
  std::string images_note;  // why there are no images, for the 404 message
  json health;

  // Model lock: one forward pass at a time (the batcher's text batches and image queries).
  std::mutex model_mu;

  std::unique_ptr<DecodePool> decoder;

  // Micro-batching queue of text queries.
  std::mutex qmu;
  std::condition_variable qcv;
  std::deque<std::shared_ptr<TextJob>> queue;
  bool batcher_stop = false;
  std::thread batcher;

  // Thumbnail cache: (id, size) -> JPEG bytes, least recently used dropped first.
  std::mutex tmu;
  std::list<std::pair<std::pair<int64_t, int>, std::shared_ptr<const std::string>>> lru;
  std::map<std::pair<int64_t, int>, decltype(lru)::iterator> lru_index;

  mutable std::mutex smu;
  ServeStats st;

  std::atomic<bool> bound{false}, listen_started{false}, listening_done{false}, stopped{false};
  int bound_port = -1;
  std::thread listener;

  Impl(Encoder& e, std::unique_ptr<Collection> own, const Collection& c, ServeOptions o)
      : enc(e), owned(std::move(own)), coll(c), store(c.front()), opt(std::move(o)) {}

  // ---- text batching ----------------------------------------------------------------------------

  std::vector<Hit> submit_text(const std::string& text, int k) {
    auto job = std::make_shared<TextJob>();
    job->text = text;
    job->k = k;
    auto fut = job->done.get_future();
    {
      std::lock_guard<std::mutex> lk(qmu);
      if (batcher_stop) throw HttpError(503, "the server is shutting down");
      queue.push_back(job);
    }
    qcv.notify_all();
    return fut.get();
  }

  void batch_loop() {
    for (;;) {
      std::vector<std::shared_ptr<TextJob>> batch;
      {
        std::unique_lock<std::mutex> lk(qmu);
        qcv.wait(lk, [&] { return batcher_stop || !queue.empty(); });
        if (queue.empty()) return;  // stopping and drained
        // Collect what arrives within the window after the first query, up to max_batch.
        const auto deadline = Clock::now() + std::chrono::milliseconds(opt.batch_window_ms);
        while (!batcher_stop && queue.size() < static_cast<size_t>(opt.max_batch))
          if (qcv.wait_until(lk, deadline) == std::cv_status::timeout) break;
        const size_t n = std::min(queue.size(), static_cast<size_t>(std::max(1, opt.max_batch)));
        batch.assign(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
        queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
      }
      try {
        std::vector<std::string> texts;
        int kmax = 1;
        for (auto& j : batch) {
          texts.push_back(j->text);
          kmax = std::max(kmax, j->k);
        }
        at::Tensor f;
        {
          std::lock_guard<std::mutex> lk(model_mu);
          f = enc.encode_texts(texts, true);
        }
        auto hits = coll.search(f, kmax);
        {
          std::lock_guard<std::mutex> lk(smu);
          st.text_queries += batch.size();
          st.text_batches += 1;
          st.max_batch_seen = std::max<uint64_t>(st.max_batch_seen, batch.size());
        }
        for (size_t i = 0; i < batch.size(); ++i) {
          auto& h = hits[i];
          if (h.size() > static_cast<size_t>(batch[i]->k)) h.resize(batch[i]->k);
          batch[i]->done.set_value(std::move(h));
        }
      } catch (...) {
        for (auto& j : batch) j->done.set_exception(std::current_exception());
      }
    }
  }

  // ---- images -----------------------------------------------------------------------------------

  // Limits checked on the encoded bytes: size, and the dimensions in a PNG/JPEG header (so a
  // decompression bomb is refused before any pixel buffer is allocated).
  void check_upload(const std::vector<uint8_t>& bytes) {
    if (bytes.empty()) throw HttpError(400, "the uploaded image is empty");
    if (bytes.size() > opt.max_upload_bytes)
      throw HttpError(413, "the uploaded image has " + std::to_string(bytes.size()) + " bytes; the limit is " +
                               std::to_string(opt.max_upload_bytes) + " (--max-upload-mb)");
    int w = 0, h = 0;
    if (peek_dimensions(bytes.data(), bytes.size(), w, h)) check_side(w, h);
  }
  void check_side(int w, int h) const {
    if (w > opt.max_image_side || h > opt.max_image_side)
      throw HttpError(413, "the uploaded image is " + std::to_string(w) + "x" + std::to_string(h) +
                               " pixels; the limit is " + std::to_string(opt.max_image_side) +
                               " on each side (--max-image-side)");
    if (w <= 0 || h <= 0) throw HttpError(400, "the uploaded image has no pixels");
  }

  // Decodes on the pool and waits until the request's deadline.
  Image decode_upload(std::vector<uint8_t> bytes) {
    auto fut = decoder->submit(std::move(bytes));
    if (fut.wait_for(std::chrono::milliseconds(std::max(1, opt.decode_timeout_ms))) != std::future_status::ready)
      throw HttpError(503, "decoding the uploaded image took longer than " + std::to_string(opt.decode_timeout_ms) +
                               " ms (--decode-timeout-ms); the request was abandoned");
    try {
      return fut.get();
    } catch (const DataError& e) {
      throw HttpError(400, std::string("the uploaded file is not a readable image: ") + e.what());
    }
  }

  std::vector<Hit> search_image(std::vector<uint8_t> bytes, int k) {
    check_upload(bytes);
    Image im = decode_upload(std::move(bytes));
    check_side(im.width, im.height);
    const int r = enc.resolution();
    at::Tensor px = at::empty({1, 3, r, r}, at::kFloat);
    preprocess_eval(im, r, px.data_ptr<float>());
    at::Tensor f;
    {
      std::lock_guard<std::mutex> lk(model_mu);
      f = enc.encode_pixels(px);
    }
    {
      std::lock_guard<std::mutex> lk(smu);
      st.image_queries += 1;
    }
    return coll.search(f, k).at(0);
  }

  std::shared_ptr<const std::string> thumbnail(size_t index, int64_t id, int size) {
    const auto key = std::make_pair(id, size);
    {
      std::lock_guard<std::mutex> lk(tmu);
      auto it = lru_index.find(key);
      if (it != lru_index.end()) {
        lru.splice(lru.begin(), lru, it->second);
        return it->second->second;
      }
    }
    Image im = convert_rgb(images->decode_upright(index));
    const int side = std::max(im.width, im.height);
    if (side > size) {
      const int w = std::max(1, static_cast<int>(std::lround(double(im.width) * size / side)));
      const int h = std::max(1, static_cast<int>(std::lround(double(im.height) * size / side)));
      im = resize_bicubic(im, w, h);
    }
    auto jpg = encode_jpeg(im, 85);
    auto data = std::make_shared<const std::string>(jpg.begin(), jpg.end());
    std::lock_guard<std::mutex> lk(tmu);
    if (!lru_index.count(key)) {
      lru.emplace_front(key, data);
      lru_index[key] = lru.begin();
      while (lru.size() > std::max<size_t>(1, opt.thumb_cache)) {
        lru_index.erase(lru.back().first);
        lru.pop_back();
      }
    }
    return data;
  }

  // ---- routes -----------------------------------------------------------------------------------

  // Runs a handler, turning every failure into a JSON error: the client's mistakes (HttpError) with
  // their status, anything else as 500 with the message (and a log line).
  template <class F>
  httplib::Server::Handler wrap(F f) {
    return [this, f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const HttpError& e) {
        send_json(res, {{"error", e.what()}}, e.status);
      } catch (const std::exception& e) {
        log_error("{} {}: {}", req.method, req.path, e.what());
        send_json(res, {{"error", std::string("internal error: ") + e.what()}}, 500);
      }
    };
  }

  void setup_routes() {
    http.new_task_queue = [n = std::max(1, opt.http_threads)] { return new httplib::ThreadPool(n); };
    // Room for base64 (4/3) and multipart framing on top of the file limit; the exact limit is
    // checked on the decoded bytes so the answer can say which limit was hit.
    http.set_payload_max_length(opt.max_upload_bytes / 3 * 4 + (64u << 10));
    http.set_read_timeout(10, 0);
    // httplib writes a response's headers and body separately: with Nagle's algorithm on, the body
    // then waits for the client's delayed ACK (40 ms on Linux) on a keep-alive connection.
    http.set_tcp_nodelay(true);
    // SO_REUSEADDR (restart right after a stop) but not httplib's default SO_REUSEPORT, with which a
    // second server would silently share a port that is already taken.
    http.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string msg;
      if (res.status == 404) msg = "no such endpoint: " + req.method + " " + req.path;
      else if (res.status == 413) msg = "the request body is too large (see --max-upload-mb)";
      else if (res.status == 400) msg = "malformed HTTP request";
      else msg = "HTTP status " + std::to_string(res.status);
      send_json(res, {{"error", msg}}, res.status);
    });

    auto serve_asset = [](const std::string& path) {
      return [path](const httplib::Request&, httplib::Response& res) {
        const WebAsset* a = find_web_asset(path);
        if (!a) {
          send_json(res, {{"error", "no such page: " + path}}, 404);
          return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_content(reinterpret_cast<const char*>(a->data), a->size, a->content_type);
      };
    };
    http.Get("/", serve_asset("/index.html"));
    for (const auto& a : web_assets()) http.Get(a.path, serve_asset(a.path));

    http.Get("/api/health", wrap([this](const httplib::Request&, httplib::Response& res) {
      json h = health;
      ServeStats s;
      {
        std::lock_guard<std::mutex> lk(smu);
        s = st;
      }
      h["stats"] = {{"text_queries", s.text_queries}, {"text_batches", s.text_batches},
                    {"max_batch", s.max_batch_seen}, {"image_queries", s.image_queries}};
      send_json(res, h);
    }));

    http.Post("/api/search/text", wrap([this](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = Clock::now();
      json body;
      try {
        body = json::parse(req.body);
      } catch (const json::exception&) {
        throw HttpError(400, "the body must be JSON like {\"text\": \"...\", \"k\": 10}");
      }
      if (!body.is_object()) throw HttpError(400, "the body must be a JSON object like {\"text\": \"...\", \"k\": 10}");
      if (!body.contains("text") || body["text"].is_null()) throw HttpError(400, "no text: give {\"text\": \"...\"}");
      if (!body["text"].is_string()) throw HttpError(400, "text must be a string, got " + body["text"].dump());
      const std::string text = body["text"].get<std::string>();
      if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) throw HttpError(400, "the text is empty");
      if (text.size() > opt.max_text_bytes)
        throw HttpError(413, "the text has " + std::to_string(text.size()) + " bytes; the limit is " +
                                 std::to_string(opt.max_text_bytes));
      const int k = parse_k(body.contains("k") ? &body["k"] : nullptr, nullptr, opt.default_k, opt.max_k);
      auto hits = submit_text(text, k);
      send_json(res, results_json(text, k, hits, ms_since(t0), store.meta.names_or_null()));
    }));

    http.Post("/api/search/image", wrap([this](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = Clock::now();
      std::vector<uint8_t> bytes;
      std::string name = "upload";
      int k = opt.default_k;
      if (req.is_multipart_form_data()) {
        if (!req.has_file("image")) throw HttpError(400, "no image: send the file in a multipart field named 'image'");
        const auto f = req.get_file_value("image");
        bytes.assign(f.content.begin(), f.content.end());
        if (!f.filename.empty()) name = f.filename;
        if (req.has_file("k")) {
          const std::string ks = req.get_file_value("k").content;
          k = parse_k(nullptr, &ks, opt.default_k, opt.max_k);
        }
      } else {
        json body;
        try {
          body = json::parse(req.body);
        } catch (const json::exception&) {
          throw HttpError(400, "send the image as multipart/form-data (field 'image') or JSON {\"image\": base64, \"k\": 10}");
        }
        if (!body.is_object() || !body.contains("image") || !body["image"].is_string())
          throw HttpError(400, "no image: give {\"image\": \"<base64 or data: URL>\"}");
        std::string b64 = body["image"].get<std::string>();
        if (b64.rfind("data:", 0) == 0) {
          const size_t comma = b64.find(',');
          if (comma == std::string::npos) throw HttpError(400, "the image data: URL has no ',' before its payload");
          b64.erase(0, comma + 1);
        }
        if (b64.size() > opt.max_upload_bytes / 3 * 4 + 8)
          throw HttpError(413, "the uploaded image is larger than " + std::to_string(opt.max_upload_bytes) +
                                   " bytes (--max-upload-mb)");
        try {
          bytes = base64_decode(b64);
        } catch (const DataError& e) {
          throw HttpError(400, std::string("the image is not valid base64: ") + e.what());
        }
        if (body.contains("name") && body["name"].is_string()) name = body["name"].get<std::string>();
        k = parse_k(body.contains("k") ? &body["k"] : nullptr, nullptr, opt.default_k, opt.max_k);
      }
      auto hits = search_image(std::move(bytes), k);
      send_json(res, results_json(name, k, hits, ms_since(t0), store.meta.names_or_null()));
    }));

    http.Get(R"(/api/image/(.+))", wrap([this](const httplib::Request& req, httplib::Response& res) {
      // An integer id, or a photo's path inside its folder (a string id, base/ids.h).
      const std::string sid = req.matches[1];
      int64_t id = 0;
      size_t used = 0;
      try {
        id = std::stoll(sid, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      const bool is_int = used != 0 && used == sid.size();
      const bool has_names = images && images->size() > 0 && !images->name(0).empty();
      if (!is_int && !has_names) throw HttpError(400, "the image id must be an integer, got '" + sid + "'");
      if (!images) throw HttpError(404, "no images to serve: " + images_note);
      std::optional<size_t> idx;
      if (is_int) idx = images->find(id);
      if (!idx && has_names) {
        id = name_to_id(sid);
        idx = images->find(id);
      }
      if (!idx)
        throw HttpError(404, (is_int ? "no image with id " + sid : "no image with id '" + sid + "'") + " in " +
                                 images->path());
      int size = 0;
      if (req.has_param("size")) {
        const std::string s = req.get_param_value("size");
        size_t u = 0;
        try {
          size = std::stoi(s, &u);
        } catch (const std::exception&) {
          u = 0;
        }
        if (u == 0 || u != s.size() || size < 16 || size > 1024)
          throw HttpError(400, "size must be an integer from 16 to 1024, got '" + s + "'");
      } else if (req.has_param("thumb") && req.get_param_value("thumb") != "0") {
        size = opt.thumb_size;
      }
      res.set_header("Cache-Control", "max-age=3600");
      if (size > 0) {
        auto t = thumbnail(*idx, id, size);
        res.set_content(t->data(), t->size(), "image/jpeg");
      } else {
        auto b = images->bytes(*idx);
        res.set_content(reinterpret_cast<const char*>(b.data()), b.size(), sniff_image_type(b));
      }
    }));
  }

  void open_images() {
    std::string path = opt.images_tsv;
    if (path.empty()) {
      if (store.meta.kind != "image") {
        images_note = "the store holds " + store.meta.kind + " features; pass --images";
        return;
      }
      for (const auto& s : store.meta.sources)
        if (!s.path.empty() && file_exists(s.path)) {
          path = s.path;
          break;
        }
      if (path.empty()) {
        images_note = "the store's source images TSV is not there any more; pass --images";
        log_warn("{}: {}", store.path, images_note);
        return;
      }
    }
    ReadReport rep;
    images = clip::open_images(path, rep, false);  // an explicit --images that cannot be read is an error at start-up
    rep.summarize(path);
    log_info("images for thumbnails: {} ({} images)", path, images->size());
  }
};

Server::Server(Encoder& enc, const FeatureSet& fs, ServeOptions opt) : Server(enc, nullptr, fs, std::move(opt)) {}

Server::Server(Encoder& enc, const Collection& coll, ServeOptions opt) : Server(enc, &coll, coll.front(), std::move(opt)) {}

Server::Server(Encoder& enc, const Collection* coll, const FeatureSet& fs, ServeOptions opt) {
  std::unique_ptr<Collection> own;
  if (!coll) {
    own = std::make_unique<Collection>(fs);
    coll = own.get();
  }
  im_ = std::make_unique<Impl>(enc, std::move(own), *coll, std::move(opt));
  const FeatureSet& store = im_->store;
  auto& o = im_->opt;
  if (o.max_k < 1) throw UsageError("--max-k must be at least 1");
  if (o.default_k < 1 || o.default_k > o.max_k) o.default_k = std::min(10, o.max_k);
  if (o.max_batch < 1) throw UsageError("--max-batch must be at least 1");
  if (o.batch_window_ms < 0) throw UsageError("--batch-window-ms must not be negative");
  if (store.size() == 0) throw UsageError("the store " + store.path + " is empty: nothing to search");
  if (store.dim != enc.embed_dim())
    throw UsageError("the store " + store.path + " has " + std::to_string(store.dim) + "-dim features but the model's are " +
                     std::to_string(enc.embed_dim()) + "-dim; serve it with the checkpoint it was built with");
  for (const auto& sh : im_->coll.shards())
    if (sh.size()) sh.find(sh.ids.front());  // build the id indexes now, before threads share the stores
  im_->open_images();
  im_->health = {
      {"status", "ok"},
      {"version", CLIP_VERSION},
      {"model", enc.preprocess_meta().value("model", "")},
      {"checkpoint", enc.checkpoint_path().substr(enc.checkpoint_path().find_last_of('/') + 1)},
      {"weights_hash", enc.weights_hash()},
      {"embed_dim", enc.embed_dim()},
      {"store", {{"path", store.path}, {"size", im_->coll.size()}, {"dim", store.dim}, {"kind", store.meta.kind},
                 {"dtype", dtype_name(store.dtype)}, {"shards", im_->coll.shards().size()}, {"search", im_->coll.method()}}},
      {"images", im_->images ? im_->images->size() : 0},
      {"limits", {{"max_k", o.max_k}, {"default_k", o.default_k}, {"max_upload_bytes", o.max_upload_bytes},
                  {"max_image_side", o.max_image_side}, {"max_text_bytes", o.max_text_bytes},
                  {"max_image_pixels", kMaxImagePixels}, {"decode_threads", o.decode_threads},
                  {"decode_timeout_ms", o.decode_timeout_ms}}},
  };
  if (o.decode_threads < 1) throw UsageError("--decode-threads must be at least 1");
  if (o.decode_timeout_ms < 1) throw UsageError("--decode-timeout-ms must be at least 1");
  im_->decoder = std::make_unique<DecodePool>(o.decode_threads, static_cast<size_t>(std::max(1, o.decode_queue)),
                                              enc.image_options(), enc.resolution());
  im_->setup_routes();
  im_->batcher = std::thread([this] { im_->batch_loop(); });
}

Server::~Server() {
  stop();
  if (im_->listener.joinable()) im_->listener.join();
}

int Server::bind() {
  if (im_->bound) return im_->bound_port;
  auto& o = im_->opt;
  if (o.port < 0 || o.port > 65535) throw UsageError("--port must be from 0 to 65535, got " + std::to_string(o.port));
  if (o.port == 0) {
    const int p = im_->http.bind_to_any_port(o.host);
    if (p < 0) throw UsageError("cannot listen on " + o.host + " (any port): is the address one of this machine's?");
    im_->bound_port = p;
  } else {
    if (!im_->http.bind_to_port(o.host, o.port))
      throw UsageError("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                       ": the port is in use or the address is not this machine's (try --port 0 for any free port)");
    im_->bound_port = o.port;
  }
  im_->bound = true;
  return im_->bound_port;
}

void Server::listen() {
  bind();
  im_->listen_started = true;
  if (!im_->stopped) im_->http.listen_after_bind();
  im_->listening_done = true;
}

void Server::start() {
  bind();
  // The socket already listens (connections wait in its backlog), so callers may connect at once.
  im_->listener = std::thread([this] { listen(); });
}

void Server::stop() {
  if (im_->stopped.exchange(true)) return;
  // httplib's stop() only acts once its accept loop runs: retry until listen() has returned.
  if (im_->listen_started) {
    while (!im_->listening_done) {
      im_->http.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  {
    std::lock_guard<std::mutex> lk(im_->qmu);
    im_->batcher_stop = true;
  }
  im_->qcv.notify_all();
  if (im_->batcher.joinable()) im_->batcher.join();
  if (im_->decoder) im_->decoder->stop();
}

int Server::port() const { return im_->bound_port; }

ServeStats Server::stats() const {
  std::lock_guard<std::mutex> lk(im_->smu);
  return im_->st;
}

}  // namespace clip
