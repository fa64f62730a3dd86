// bench_decode: images/s of base64 + JPEG decoding + cn_clip eval preprocessing, through the
// ordered BatchPipeline with 1 thread and with every core, against a plain loop.
//
//   build/bin/bench_decode [--data data/shapes-zh] [--split train] [--large 400] [--min-seconds 2]
//
// Two inputs: the embedded demo split (80x80 JPEGs, preprocessed to 64x64, the demo model's
// input) and synthetic 500x375 JPEGs (the typical Flickr30k size, preprocessed to 224x224).
// Prints a Markdown table on stdout: wall-clock images/s and process CPU time per image (the
// latter shows the pipeline's overhead even on a busy machine).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "clip/cli/cli.h"
#include "clip/data/dataset.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/base/pipeline.h"

namespace {

using Clock = std::chrono::steady_clock;

// A 500x375 photo-like image: smooth colour fields, edges and fine noise (so the JPEG has about
// the entropy of a real photo rather than of a flat test card).
clip::Image synthetic_photo(int w, int h, uint32_t seed) {
  clip::Image im;
  im.width = w;
  im.height = h;
  im.mode = clip::PixelMode::RGB;
  im.pixels.resize(size_t(w) * h * 3);
  uint32_t s = seed * 2654435761u + 1;
  auto rnd = [&] {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
  };
  double fx = 0.01 + (seed % 7) * 0.003, fy = 0.013 + (seed % 5) * 0.002;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double base[3] = {128 + 90 * std::sin(x * fx + y * 0.004 + seed), 128 + 80 * std::cos(y * fy - x * 0.003),
                        128 + 70 * std::sin((x + y) * 0.02 + seed * 0.5)};
      bool block = ((x / 60) + (y / 45) + seed) % 4 == 0;
      for (int c = 0; c < 3; ++c) {
        double v = base[c] + (block ? 40 : 0) + double(int(rnd() % 41) - 20);
        im.pixels[(size_t(y) * w + x) * 3 + c] = uint8_t(std::min(255.0, std::max(0.0, v)));
      }
    }
  return im;
}

struct Result {
  double images_per_s, cpu_ms_per_image;  // wall-clock rate; process CPU time (all threads) per image
};

// Runs the whole set repeatedly until min_seconds have passed.
Result measure(size_t n, double min_seconds, const std::function<void(size_t)>& pass) {
  size_t done = 0;
  auto t0 = Clock::now();
  std::clock_t c0 = std::clock();
  double el = 0;
  do {
    pass(n);
    done += n;
    el = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (el < min_seconds);
  double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
  return {double(done) / el, 1000.0 * cpu / double(done)};
}

}  // namespace

int main(int argc, char** argv) {
  return clip::run_main("bench_decode", argc, argv, [](int argc, char** argv) -> int {
    CLI::App app{"Decode + preprocess throughput (images/s)"};
    std::string data = "data/shapes-zh", split = "train";
    int large = 400, batch = 32;
    double min_seconds = 2.0;
    app.add_option("--data", data, "Dataset folder (Flickr30k-CN layout)")->capture_default_str();
    app.add_option("--split", split, "Split to read")->capture_default_str();
    app.add_option("--large", large, "Number of synthetic 500x375 JPEGs")->capture_default_str();
    app.add_option("--batch-size", batch, "Pipeline batch size")->capture_default_str();
    app.add_option("--min-seconds", min_seconds, "Minimum time per measurement")->capture_default_str();
    CLIP_PARSE(app, argc, argv);

    const int all = int(std::max(1u, std::thread::hardware_concurrency()));
    struct Input {
      std::string name;
      size_t count;
      int resolution;
      std::function<clip::Image(size_t)> decode;
    };
    std::vector<Input> inputs;

    clip::ReadReport report;
    clip::ImageTsv tsv(clip::split_images_path(data, split), report, true);
    inputs.push_back({fmt::format("{} {} (80x80 JPEG -> 64)", data, split), tsv.size(), 64, [&](size_t i) {
                        auto bytes = tsv.bytes(i);
                        return clip::decode_image(bytes.data(), bytes.size());
                      }});

    std::vector<std::vector<uint8_t>> jpegs;
    for (int k = 0; k < 8; ++k) jpegs.push_back(clip::encode_jpeg(synthetic_photo(500, 375, uint32_t(k)), 90));
    size_t avg = 0;
    for (auto& j : jpegs) avg += j.size() / jpegs.size();
    inputs.push_back({fmt::format("synthetic 500x375 JPEG q90 (~{} KB) -> 224", avg / 1024), size_t(large), 224,
                      [&](size_t i) {
                        const auto& j = jpegs[i % jpegs.size()];
                        return clip::decode_image(j.data(), j.size());
                      }});

    clip::out(fmt::format("| input | mode | threads | images/s | CPU ms/image |\n|---|---|---|---|---|\n"));
    for (const auto& in : inputs) {
      const size_t floats = size_t(3) * in.resolution * in.resolution;
      auto work = [&](size_t i, float* out) { clip::preprocess_eval(in.decode(i), in.resolution, out); };
      std::vector<float> one(floats);
      Result plain = measure(in.count, min_seconds, [&](size_t n) {
        for (size_t i = 0; i < n; ++i) work(i, one.data());
      });
      clip::out(fmt::format("| {} | plain loop | 1 | {:.0f} | {:.3f} |\n", in.name, plain.images_per_s,
                            plain.cpu_ms_per_image));
      std::vector<int> thread_counts = {1};
      if (all > 1) thread_counts.push_back(all);
      for (int t : thread_counts) {
        Result r = measure(in.count, min_seconds, [&](size_t n) {
          clip::BatchPipeline pipe(n, size_t(batch), t, work, floats);
          for (clip::BatchPipeline::Batch b; pipe.next(b);) {
          }
        });
        clip::out(
            fmt::format("| {} | BatchPipeline | {} | {:.0f} | {:.3f} |\n", in.name, t, r.images_per_s, r.cpu_ms_per_image));
      }
    }
    return 0;
  });
}
