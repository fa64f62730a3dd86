// bench_decode: images/s of base64 + image decoding + cn_clip eval preprocessing, for each --decode
// mode side by side on the same files, through the ordered BatchPipeline with 1 thread and with
// every core, against a plain loop; then how far `fast` is from `exact`: pixel differences of the
// preprocessed 8-bit image and the cosine similarity of ViT image features.
//
//   build/bin/bench_decode [--data data/shapes-zh] [--split train] [--large 400] [--jpegs DIR] [--images TSV]
//                          [--decode exact,fast] [--min-seconds 2] [--cosine-images 32]
//                          [--checkpoint CKPT | --vision-model ViT-B-16] [--augment]
//
// Inputs: the embedded demo split (80x80 JPEGs, preprocessed to 64x64, the demo model's input),
// synthetic 500x375 photo-like JPEGs at quality 90 (the typical Flickr30k size, preprocessed to the
// model resolution, 224) and, with --jpegs, every *.jpg/*.jpeg of a folder, with --images the rows
// of an images TSV (both preprocessed to 224).
// Prints Markdown tables on stdout: wall-clock images/s and process CPU time per image (the latter
// shows the pipeline's overhead even on a busy machine); then, per input of model-sized photos,
// the mean and largest absolute difference of the preprocessed RGB bytes (R x R, 0-255), and the
// mean and smallest cosine similarity of the L2-normalised image features of `fast` to `exact`.
// Without --checkpoint the features come from a ViT with cn_clip's random initialisation (seed 0);
// a line then also gives the mean cosine of two *different* images' exact features, the scale
// against which such a model's cosines must be read. With --augment also clip-finetune --use-augment's
// per-image work (exact decode, cn_clip's augmentation, float CHW): each stage's time on one thread,
// the pipeline's images/s, and each AutoAugment operation alone.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <dirent.h>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/base/pipeline.h"
#include "clip/base/runtime.h"
#include "clip/cli/cli.h"
#include "clip/data/augment.h"
#include "clip/data/dataset.h"
#include "clip/image/image.h"
#include "clip/model/config.h"
#include "clip/model/loader.h"
#include "clip/model/model.h"

namespace {

using Clock = std::chrono::steady_clock;

// A photo-like image: smooth colour fields, a few hard-edged shapes and fine noise, so that the JPEG
// has about the entropy of a real photo (q90 of 500x375: ~50-60 KB) rather than of a flat test card.
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
  const double fx = 0.01 + (seed % 7) * 0.003, fy = 0.013 + (seed % 5) * 0.002;
  struct Disc {
    double x, y, r;
    int c[3];
  };
  std::vector<Disc> discs;
  for (int k = 0; k < 6; ++k)
    discs.push_back({double(rnd() % w), double(rnd() % h), 15.0 + rnd() % 70,
                     {int(rnd() % 256), int(rnd() % 256), int(rnd() % 256)}});
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double v[3] = {128 + 90 * std::sin(x * fx + y * 0.004 + seed), 128 + 80 * std::cos(y * fy - x * 0.003),
                     128 + 70 * std::sin((x + y) * 0.02 + seed * 0.5)};
      if (((x / 60) + (y / 45) + seed) % 4 == 0)
        for (double& c : v) c += 40;
      for (const auto& d : discs)
        if ((x - d.x) * (x - d.x) + (y - d.y) * (y - d.y) < d.r * d.r)
          for (int c = 0; c < 3; ++c) v[c] = 0.3 * v[c] + 0.7 * d.c[c];
      for (int c = 0; c < 3; ++c) {
        const double n = double(int(rnd() % 25) - 12);
        im.pixels[(size_t(y) * w + x) * 3 + c] = uint8_t(std::min(255.0, std::max(0.0, v[c] + n)));
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

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<std::string> jpegs_in(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) throw clip::UsageError("--jpegs: cannot open folder '" + dir + "'");
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    std::string lower = n;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if ((lower.size() > 4 && lower.compare(lower.size() - 4, 4, ".jpg") == 0) ||
        (lower.size() > 5 && lower.compare(lower.size() - 5, 5, ".jpeg") == 0))
      out.push_back(dir + "/" + n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  clip::maybe_reexec_for_blas(argc, argv);
  clip::tune_malloc();
  return clip::run_main("bench_decode", argc, argv, [](int argc, char** argv) -> int {
    CLI::App app{"Decode + preprocess throughput (images/s) per --decode mode, and fast's distance to exact"};
    std::string data = "data/shapes-zh", split = "train", jpeg_dir, modes_arg = "exact,fast";
    int large = 400, batch = 32, cosine_images = 32, threads = 0;
    double min_seconds = 2.0;
    clip::ModelOptions mo;
    mo.vision_model = "ViT-B-16";
    app.add_option("--data", data, "Dataset folder (Flickr30k-CN layout); '' to leave it out")->capture_default_str();
    app.add_option("--split", split, "Split to read")->capture_default_str();
    app.add_option("--large", large, "Number of synthetic 500x375 JPEGs (0: none)")->capture_default_str();
    app.add_option("--jpegs", jpeg_dir, "Also a folder of real JPEGs (*.jpg, *.jpeg), preprocessed to 224");
    std::string images_tsv;
    app.add_option("--images", images_tsv,
                   "Also an images TSV (e.g. bench/bench_index_python.py make-data's), preprocessed to 224");
    app.add_option("--decode", modes_arg, "Decode modes to compare, comma-separated: exact, fast")->capture_default_str();
    app.add_option("--batch-size", batch, "Pipeline batch size")->capture_default_str();
    app.add_option("--threads,-j", threads, "Pipeline threads of the many-thread rows (0 = all cores)")->capture_default_str();
    app.add_option("--min-seconds", min_seconds, "Minimum time per measurement")->capture_default_str();
    app.add_option("--cosine-images", cosine_images,
                   "Images per input whose features are compared (0: no model, pixel differences only)")
        ->capture_default_str();
    app.add_option("--checkpoint,-c", mo.checkpoint, "A real checkpoint for the feature cosines (its vision tower)");
    app.add_option("--vision-model", mo.vision_model, "Vision tower (random weights, cn_clip's initialisation, seed 0) "
                   "when no --checkpoint is given")->capture_default_str();
    bool augment = false;
    app.add_flag("--augment", augment,
                 "Also clip-finetune's training images (--use-augment: exact decode, cn_clip's augmentation, float CHW): "
                 "images/s and where one thread's time goes");
    CLIP_PARSE(app, argc, argv);
    clip::set_threads(threads);

    std::vector<clip::DecodeMode> modes;
    for (const auto& m : split_list(modes_arg)) {
      if (m == "exact") modes.push_back(clip::DecodeMode::exact);
      else if (m == "fast") modes.push_back(clip::DecodeMode::fast);
      else throw clip::UsageError("--decode: unknown mode '" + m + "' (exact, fast)");
    }
    const int all = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
    struct Input {
      std::string name;
      size_t count;
      int resolution;
      std::function<std::vector<uint8_t>(size_t)> bytes;  // encoded file of item i
    };
    std::vector<Input> inputs;

    clip::ReadReport report;
    std::unique_ptr<clip::ImageTsv> tsv;
    if (!data.empty()) {
      tsv = std::make_unique<clip::ImageTsv>(clip::split_images_path(data, split), report, true);
      inputs.push_back({fmt::format("{} {} (80x80 JPEG -> 64)", data, split), tsv->size(), 64,
                        [&](size_t i) { return tsv->bytes(i); }});
    }
    std::vector<std::vector<uint8_t>> synth;
    if (large > 0) {
      for (int k = 0; k < std::min(large, 64); ++k)
        synth.push_back(clip::encode_jpeg(synthetic_photo(500, 375, uint32_t(k)), 90));
      size_t total = 0;
      for (auto& j : synth) total += j.size();
      inputs.push_back({fmt::format("synthetic 500x375 JPEG q90 ({} distinct, mean {:.1f} KB) -> 224", synth.size(),
                                    double(total) / synth.size() / 1024.0),
                        size_t(large), 224, [&](size_t i) { return synth[i % synth.size()]; }});
    }
    std::vector<std::vector<uint8_t>> real;
    if (!jpeg_dir.empty()) {
      size_t total = 0;
      for (const auto& p : jpegs_in(jpeg_dir)) {
        std::string s = clip::read_file(p);
        real.emplace_back(s.begin(), s.end());
        total += s.size();
      }
      if (real.empty()) throw clip::UsageError("--jpegs: no *.jpg or *.jpeg in '" + jpeg_dir + "'");
      const clip::Image first = clip::decode_image(real[0].data(), real[0].size());
      inputs.push_back({fmt::format("{} ({} JPEGs, first {}x{}, mean {:.1f} KB) -> 224", jpeg_dir, real.size(),
                                    first.width, first.height, double(total) / real.size() / 1024.0),
                        real.size(), 224, [&](size_t i) { return real[i]; }});
    }

    std::unique_ptr<clip::ImageTsv> extra;
    if (!images_tsv.empty()) {
      extra = std::make_unique<clip::ImageTsv>(images_tsv, report, true);
      if (extra->size() == 0) throw clip::UsageError("--images: no rows in '" + images_tsv + "'");
      const auto b0 = extra->bytes(0);
      const clip::Image first = clip::decode_image(b0.data(), b0.size());
      inputs.push_back({fmt::format("{} ({} images, first {}x{}, {:.1f} KB) -> 224", images_tsv, extra->size(), first.width,
                                    first.height, double(b0.size()) / 1024.0),
                        extra->size(), 224, [&](size_t i) { return extra->bytes(i); }});
    }

    clip::out("| input | decode | mode | threads | images/s | CPU ms/image |\n|---|---|---|---|---|---|\n");
    for (const auto& in : inputs) {
      const size_t floats = size_t(3) * in.resolution * in.resolution;
      // Alternate the modes per row so that machine drift hits them alike.
      std::vector<int> thread_counts = {1};
      if (all > 1) thread_counts.push_back(all);
      for (int row = 0; row <= int(thread_counts.size()); ++row)
        for (clip::DecodeMode mode : modes) {
          auto work = [&](size_t i, float* out) {
            const auto b = in.bytes(i);
            clip::ImageOptions io;
            io.decode = mode;
            clip::preprocess_eval_bytes(b.data(), b.size(), in.resolution, io, out);
          };
          Result r;
          std::string kind;
          int t = 1;
          if (row == 0) {
            std::vector<float> one(floats);
            r = measure(in.count, min_seconds, [&](size_t n) {
              for (size_t i = 0; i < n; ++i) work(i, one.data());
            });
            kind = "plain loop";
          } else {
            t = thread_counts[size_t(row - 1)];
            r = measure(in.count, min_seconds, [&](size_t n) {
              clip::BatchPipeline pipe(n, size_t(batch), t, work, floats);
              for (clip::BatchPipeline::Batch b; pipe.next(b);) {
              }
            });
            kind = "BatchPipeline";
          }
          clip::out(fmt::format("| {} | {} | {} | {} | {:.0f} | {:.3f} |\n", in.name, clip::decode_mode_name(mode), kind,
                                t, r.images_per_s, r.cpu_ms_per_image));
        }
    }

    // ------------------------------------------------------------------ training images
    // clip-finetune --use-augment's per-image work (the BatchPipeline item of Trainer::train_epoch):
    // exact decode, cn_clip's augmentation (seed 0, epoch 0, the item's index), float CHW; the
    // stages timed one by one on one thread, then the whole item through the pipeline.
    if (augment) {
      clip::out("\nTraining images (--use-augment), one thread, ms/image per stage, and the pipeline:\n\n| input | "
                "decode | crop + resize | flip + RGB | AutoAugment | float CHW | sum | threads | images/s |\n"
                "|---|---|---|---|---|---|---|---|---|\n");
      for (const auto& in : inputs) {
        clip::AugmentConfig cfg;
        cfg.resolution = in.resolution;
        const size_t floats = size_t(3) * in.resolution * in.resolution;
        const size_t n = std::min<size_t>(in.count, 400);
        double st[5] = {0, 0, 0, 0, 0};
        std::vector<float> one(floats);
        size_t done = 0;
        const auto t_all = Clock::now();
        auto lap = [](Clock::time_point& t) {
          const auto now = Clock::now();
          const double s = std::chrono::duration<double>(now - t).count();
          t = now;
          return s;
        };
        do {
          for (size_t i = 0; i < n; ++i, ++done) {
            auto t = Clock::now();
            const auto b = in.bytes(i);
            const clip::Image im = clip::decode_image(b.data(), b.size());
            st[0] += lap(t);
            const clip::AugmentPlan plan = clip::plan_augment(im.width, im.height, cfg, 0, 0, i);
            clip::Image x = clip::resize_bicubic(clip::crop(im, plan.crop_x, plan.crop_y, plan.crop_w, plan.crop_h),
                                                 cfg.resolution, cfg.resolution);
            st[1] += lap(t);
            if (plan.flip) x = clip::aug::flip_left_right(x);
            x = clip::convert_rgb(x);
            st[2] += lap(t);
            for (const clip::AugStep& s : plan.steps) x = clip::aug::apply_step(x, s);
            st[3] += lap(t);
            clip::to_chw_normalized(x, one.data());
            st[4] += lap(t);
          }
        } while (std::chrono::duration<double>(Clock::now() - t_all).count() < min_seconds);
        double sum = 0;
        for (double& v : st) sum += v *= 1000.0 / double(done);
        for (int t : {1, all}) {
          const Result r = measure(in.count, min_seconds, [&](size_t m) {
            clip::BatchPipeline pipe(
                m, size_t(batch), t,
                [&](size_t i, float* out) {
                  const auto b = in.bytes(i);
                  clip::augment_to_chw(clip::decode_image(b.data(), b.size()), cfg, 0, 0, i, out);
                },
                floats);
            for (clip::BatchPipeline::Batch b; pipe.next(b);) {
            }
          });
          clip::out(fmt::format("| {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {} | {:.0f} |\n", in.name, st[0],
                                st[1], st[2], st[3], st[4], sum, t, r.images_per_s));
          if (all == 1) break;
        }
      }
      // Each AutoAugment operation alone on model-sized images (the first input's crops), one thread.
      if (!inputs.empty()) {
        const Input& in = inputs.back();
        clip::AugmentConfig cfg;
        cfg.resolution = in.resolution;
        std::vector<clip::Image> xs;
        for (size_t i = 0; i < std::min<size_t>(in.count, 32); ++i) {
          const auto b = in.bytes(i);
          const clip::Image im = clip::decode_image(b.data(), b.size());
          xs.push_back(clip::resize_bicubic(im, cfg.resolution, cfg.resolution));
        }
        clip::out(fmt::format("\nAutoAugment's operations alone ({} images of {}x{}), one thread:\n\n| operation | argument | "
                              "ms/call |\n|---|---|---|\n", xs.size(), cfg.resolution, cfg.resolution));
        using Op = clip::AugOp;
        const std::pair<Op, double> ops[] = {{Op::PosterizeOriginal, 5}, {Op::Rotate, 15}, {Op::Solarize, 128},
                                             {Op::AutoContrast, 0},      {Op::Equalize, 0},  {Op::Color, 1.5},
                                             {Op::Contrast, 1.5},        {Op::Sharpness, 1.5}, {Op::Invert, 0},
                                             {Op::ShearX, 0.2}};
        for (const auto& [op, arg] : ops) {
          const Result r = measure(xs.size(), min_seconds / 4, [&](size_t m) {
            for (size_t i = 0; i < m; ++i) (void)clip::aug::apply_step(xs[i], clip::AugStep{op, arg});
          });
          clip::out(fmt::format("| {} | {} | {:.3f} |\n", clip::aug_op_name(op), arg, 1000.0 / r.images_per_s));
        }
      }
    }

    // ------------------------------------------------------------------ the resize alone
    // Pillow's bicubic squash of the decoded images, one thread: Pillow's own loops
    // (resize_bicubic_by_rows) against resize_bicubic (column-wise horizontal pass, AVX2 where the
    // CPU has it), alternated, with a byte comparison of every result.
    clip::out("\nThe resize alone (exact decode done beforehand, one thread):\n\n| input | resize | ms/image | "
              "speed-up | images whose bytes differ |\n|---|---|---|---|---|\n");
    for (const auto& in : inputs) {
      const size_t n = std::min<size_t>(in.count, 200);
      std::vector<clip::Image> decoded;
      for (size_t i = 0; i < n; ++i) {
        const auto b = in.bytes(i);
        decoded.push_back(clip::decode_image(b.data(), b.size()));
      }
      size_t differ = 0;
      for (const auto& im : decoded)
        differ += clip::resize_bicubic(im, in.resolution, in.resolution).pixels !=
                  clip::resize_bicubic_by_rows(im, in.resolution, in.resolution).pixels;
      double best_rows = 1e30, best_cols = 1e30;
      for (int rep = 0; rep < 3; ++rep)
        for (bool by_rows : {true, false}) {
          const Result r = measure(n, min_seconds / 3, [&](size_t m) {
            for (size_t i = 0; i < m; ++i) {
              const clip::Image& im = decoded[i % n];
              (void)(by_rows ? clip::resize_bicubic_by_rows(im, in.resolution, in.resolution)
                             : clip::resize_bicubic(im, in.resolution, in.resolution));
            }
          });
          double& best = by_rows ? best_rows : best_cols;
          best = std::min(best, 1000.0 / r.images_per_s);
        }
      clip::out(fmt::format("| {} | Pillow's loops (resize_bicubic_by_rows) | {:.3f} | | |\n", in.name, best_rows));
      clip::out(fmt::format("| {} | column-wise, AVX2 (resize_bicubic) | {:.3f} | {:.2f}x | {} of {} |\n", in.name, best_cols,
                            best_rows / best_cols, differ, n));
    }

    // ------------------------------------------------------------------ fast against exact
    if (std::find(modes.begin(), modes.end(), clip::DecodeMode::fast) == modes.end()) return 0;
    clip::ClipModel model{nullptr};
    std::string model_note;
    if (cosine_images > 0) {
      if (!mo.checkpoint.empty()) {
        mo.towers = clip::Towers::vision;
        clip::ModelSource src = clip::resolve_model(mo, /*need_vocab=*/false);
        model = clip::build_model(src, clip::Towers::vision);
        model_note = fmt::format("{} from {}", src.config.vision.name, mo.checkpoint);
      } else {
        clip::ModelConfig cfg;
        cfg.vision = clip::vision_config(mo.vision_model);
        model = clip::ClipModel(cfg, clip::Towers::vision);
        model->initialize_parameters(0);
        model_note = fmt::format("{}, random weights (cn_clip's initialisation, seed 0)", cfg.vision.name);
      }
      model->eval();
    }
    clip::out(fmt::format("\nfast against exact ({}):\n\n| input | images | mean abs diff (0-255) | max abs diff | "
                          "feature cosine mean | min | exact features of different images: mean cosine |\n"
                          "|---|---|---|---|---|---|---|\n",
                          model ? model_note : "pixels only"));
    for (const auto& in : inputs) {
      const bool use_model = model && in.resolution == model->config().vision.image_resolution;
      const int R = in.resolution;
      const size_t n = std::min(in.count, use_model ? size_t(cosine_images) : size_t(2000));
      double abs_sum = 0;
      int abs_max = 0;
      auto px_exact = at::empty({int64_t(n), 3, R, R}), px_fast = at::empty({int64_t(n), 3, R, R});
      for (size_t i = 0; i < n; ++i) {
        const auto b = in.bytes(i);
        const clip::Image ex = clip::convert_rgb(clip::resize_bicubic(clip::decode_image(b.data(), b.size()), R, R));
        const clip::Image fa = clip::convert_rgb(
            clip::resize_bicubic(clip::decode_image(b.data(), b.size(), clip::DecodeMode::fast, R), R, R));
        for (size_t k = 0; k < ex.pixels.size(); ++k) {
          const int d = std::abs(int(ex.pixels[k]) - int(fa.pixels[k]));
          abs_sum += d;
          abs_max = std::max(abs_max, d);
        }
        clip::to_chw_normalized(ex, px_exact[int64_t(i)].data_ptr<float>());
        clip::to_chw_normalized(fa, px_fast[int64_t(i)].data_ptr<float>());
      }
      const double mad = abs_sum / double(n * size_t(3) * R * R);
      std::string cos_mean = "-", cos_min = "-", cos_other = "-";
      if (use_model) {
        c10::InferenceMode guard;
        std::vector<at::Tensor> fe, ff;
        for (int64_t s = 0; s < int64_t(n); s += 8) {
          const int64_t e = std::min<int64_t>(int64_t(n), s + 8);
          fe.push_back(model->encode_image(px_exact.slice(0, s, e)));
          ff.push_back(model->encode_image(px_fast.slice(0, s, e)));
        }
        auto a = at::cat(fe), b = at::cat(ff);
        a = a / a.norm(2, -1, true);
        b = b / b.norm(2, -1, true);
        const auto c = (a * b).sum(-1).to(at::kDouble);
        cos_mean = fmt::format("{:.6f}", c.mean().item<double>());
        cos_min = fmt::format("{:.6f}", c.min().item<double>());
        if (n > 1) cos_other = fmt::format("{:.4f}", (a * a.roll(1, 0)).sum(-1).to(at::kDouble).mean().item<double>());
      }
      clip::out(fmt::format("| {} | {} | {:.3f} | {} | {} | {} | {} |\n", in.name, n, mad, abs_max, cos_mean, cos_min,
                            cos_other));
    }
    return 0;
  });
}
