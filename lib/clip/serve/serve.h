// clip-serve's core: an HTTP server (cpp-httplib) over one loaded Encoder and one feature store, with
// the search page (web/, embedded in the binary) and a JSON API:
//   GET  /                      the page (index.html, app.js, style.css)
//   POST /api/search/text       {"text": str, "k": int}                       -> results
//   POST /api/search/image      multipart (field "image", optional "k") or JSON {"image": base64 | data URL, "k"}
//   GET  /api/image/{id}        the stored image file; ?thumb=1 (or ?size=N) a JPEG thumbnail N px on its long side
//   GET  /api/health            {"status", "model", "store": {...}, "version", ...}
// Results carry clip-query's JSONL fields: {"query", "k", "results": [{"rank", "id", "score"}...], "took_ms"}.
// Every bad request is answered 4xx with {"error": "..."} naming the problem; the server keeps serving.
//
// Concurrency: httplib answers on a pool of threads. Uploaded images are decoded on a separate,
// bounded pool (decode_threads threads, decode_queue waiting jobs) and each request waits for its
// decode only until decode_timeout_ms: a slow or hostile upload can neither hold an HTTP thread
// past its deadline nor delay /api/health or stop(). Text queries are queued and a single batching
// thread encodes whatever arrived within `batch_window_ms` in one forward pass (micro-batching), then
// searches the store once for the batch. Image queries are encoded under the same model lock, so the
// model never runs two forward passes at once; store scans run outside the lock.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clip/retrieval/store.h"

namespace clip {

class Collection;
class Encoder;

struct ServeOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 7860;                  // 0 = any free port (see Server::port())
  std::string images_tsv;           // images for /api/image (default: the store's recorded source TSV)
  size_t max_upload_bytes = 8u << 20;  // an uploaded image file (decoded base64 included)
  int max_image_side = 4096;        // width and height of an uploaded image, in pixels
  size_t max_text_bytes = 1024;     // a text query, in UTF-8 bytes
  int max_k = 100;                  // k must lie in [1, max_k]
  int default_k = 10;
  int http_threads = 8;             // httplib worker threads
  int batch_window_ms = 3;          // how long the batcher waits for more text queries after the first
  int max_batch = 32;               // text queries encoded together at most
  int decode_threads = 2;           // threads decoding uploaded images (the decode pool)
  int decode_queue = 16;            // uploads waiting for a decode thread at most; more are answered 503
  int decode_timeout_ms = 10000;    // per-request deadline of an upload's decode; past it the answer is 503
  int thumb_size = 160;             // ?thumb=1 size; ?size=N accepts 16..1024
  size_t thumb_cache = 2048;        // thumbnails kept in memory
};

// Counters for /api/health and tests.
struct ServeStats {
  uint64_t text_queries = 0;   // text queries answered by the batcher
  uint64_t text_batches = 0;   // forward passes they took
  uint64_t max_batch_seen = 0;
  uint64_t image_queries = 0;
};

class Server {
 public:
  // Keeps references to `enc` and `store`: both must outlive the server. Opens the images TSV
  // (opt.images_tsv or the store's source) when it exists; without one /api/image answers 404.
  Server(Encoder& enc, const FeatureSet& store, ServeOptions opt);
  // Several shards and/or an approximate index (collection.h); `coll` must outlive the server.
  Server(Encoder& enc, const Collection& coll, ServeOptions opt);
  ~Server();  // stops and joins
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (UsageError naming the address when that fails) and returns the bound port.
  int bind();
  // Serves until stop(); binds first when bind() was not called.
  void listen();
  // bind() + listen() on a background thread; returns once the server accepts connections.
  void start();
  // Stops accepting, finishes the requests in flight, stops the batcher. Safe from any thread, idempotent.
  void stop();
  int port() const;
  ServeStats stats() const;

 private:
  Server(Encoder& enc, const Collection* coll, const FeatureSet& fs, ServeOptions opt);
  struct Impl;
  std::unique_ptr<Impl> im_;
};

// The page's files, embedded at build time from web/ ("index.html", "app.js", "style.css").
struct WebAsset {
  const char* path;          // "/index.html"
  const char* content_type;  // "text/html; charset=utf-8"
  const unsigned char* data;
  size_t size;
};
const WebAsset* find_web_asset(const std::string& path);  // nullptr when unknown
std::vector<WebAsset> web_assets();

}  // namespace clip
