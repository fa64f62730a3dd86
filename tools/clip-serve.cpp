// clip-serve: the search page and JSON API over one feature store (lib/clip/serve/serve.h).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "clip/cli/cli.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/collection.h"
#include "clip/retrieval/store.h"
#include "clip/base/log.h"
#include "clip/retrieval/query.h"
#include "clip/serve/serve.h"

using namespace clip;

static int body(int argc, char** argv) {
  CLI::App app{"Serve a search page and a JSON API over a feature store (loopback only unless --host says otherwise).\n"
               "  clip-serve --index test.img.clipfeat --port 7860   # then open http://127.0.0.1:7860/",
               "clip-serve"};
  ModelOptions mo;
  ImageOptions io;
  RuntimeOptions ro;
  ServeOptions so;
  std::vector<std::string> index;
  SearchOptions search_opt;
  double max_upload_mb = static_cast<double>(so.max_upload_bytes) / (1 << 20);
  add_model_options(app, mo, /*checkpoint_required=*/false);
  add_runtime_options(app, ro);
  add_image_options(app, io);
  add_search_options(app, index, search_opt, "Image feature store to search (its recorded checkpoint is used by default)");
  app.add_option("--images", so.images_tsv, "Images for thumbnails: TSV, photo folder, file list or LMDB (default: the store's source)");
  app.add_option("--host", so.host, "Address to listen on; anything but loopback exposes the server")->capture_default_str();
  app.add_option("--port", so.port, "Port (0 = any free port, printed at start)")->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--max-upload-mb", max_upload_mb, "Largest accepted image upload, MiB")->capture_default_str()->check(CLI::Range(0.001, 1024.0));
  app.add_option("--max-image-side", so.max_image_side, "Largest accepted uploaded image width/height, pixels")->capture_default_str()->check(CLI::Range(16, 65536));
  app.add_option("--decode-threads", so.decode_threads, "Threads decoding uploaded images")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--decode-timeout-ms", so.decode_timeout_ms, "Deadline of one upload's decode; slower ones are answered 503")->capture_default_str()->check(CLI::Range(1, 600000));
  app.add_option("--max-k", so.max_k, "Largest k a request may ask for")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--http-threads", so.http_threads, "Threads answering requests")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--batch-window-ms", so.batch_window_ms, "How long text queries are collected into one batch")->capture_default_str()->check(CLI::Range(0, 1000));
  app.add_option("--max-batch", so.max_batch, "Most text queries encoded together")->capture_default_str()->check(CLI::Range(1, 4096));
  add_version_flag(app);
  CLIP_PARSE(app, argc, argv);
  ro.apply();
  if (search_opt.device.empty()) search_opt.device = ro.device;  // the store is searched where the model runs
  so.max_upload_bytes = static_cast<size_t>(max_upload_mb * (1 << 20));

  // SIGINT/SIGTERM are taken by a watcher thread (blocked everywhere else), which stops the server cleanly.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  Collection coll = Collection::open(index, search_opt);
  const FeatureSet& store = coll.front();
  log_info("store {}: {} {} features in {} shard(s), dim {}; search: {}", index.front(), coll.size(), store.meta.kind,
           index.size(), store.dim, coll.method());
  fill_model_options_from_store(mo, store);
  fill_image_options_from_store(io, store);
  Encoder enc(mo, ro, io, /*hash_in_background=*/false, /*warm_batch=*/1);  // CUDA: the first query does not pay the kernels' loading
  Server server(enc, coll, so);
  const int port = server.bind();
  log_info("serving http://{}:{}/ (Ctrl-C stops)", so.host, port);

  std::atomic<bool> done{false};
  std::atomic<int> got{0};
  std::thread watcher([&] {
    const timespec tick{0, 200 * 1000 * 1000};
    while (!done) {
      const int s = sigtimedwait(&sigs, nullptr, &tick);
      if (s > 0) {
        got = s;
        server.stop();
        return;
      }
    }
  });
  server.listen();
  done = true;
  watcher.join();
  if (got) log_info("stopped ({})", got == SIGINT ? "SIGINT" : "SIGTERM");
  return kExitOk;
}

// CUDA's context started before LibTorch initialises (cli/early_start.h); no detached end: a server
// stays the process that was started.
CLIP_EARLY_START(clip::EarlyStart::cuda)

int main(int argc, char** argv) { return run_main("clip-serve", argc, argv, body); }
