// Encoder throughput of the full-size ViT-B-16 + RoBERTa-wwm-ext-base-chinese model with random
// weights: images/s and texts/s in float32 and bfloat16. bench_encoders_python.py measures the same
// architecture in plain PyTorch; run_encoders.sh runs both side by side.
//
//   bench_encoders [--threads N] [--image-batch N] [--text-batch N] [--iters N] [--warmup N]
//                  [--dtypes fp32,bf16,fp16] [--towers image,text] [--device cuda] [--attention auto]
//                  [--kernels plain|training]
// On CUDA each timed batch ends when its features are back on the host; --attention restricts the
// fused attention kernels (torch_compat.h); --kernels training runs the forms clip-finetune uses on
// CUDA (ClipModelImpl::set_low_precision_kernels: QuickGELU as silu, LayerNorm in the activation dtype).
// Prints one line per measurement:
//   bench impl=cpp tower=image dtype=fp32 batch=8 iters=3 median_ms=.. min_ms=.. items_per_s=..
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "clip/model/config.h"
#include "clip/model/model.h"
#include "clip/model/torch_compat.h"
#include "clip/base/runtime.h"

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) if (!item.empty()) out.push_back(item);
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Deterministic token ids shared with the Python script: [CLS] + 12..41 tokens + [SEP], zero padded.
at::Tensor bench_ids(int64_t n, int64_t ctx) {
  auto ids = at::zeros({n, ctx}, at::kLong);
  auto* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t len = 12 + (7 * i) % 30;
    p[i * ctx] = 101;
    for (int64_t j = 1; j <= len; ++j) p[i * ctx + j] = 672 + (i * 131 + j * 17) % 20000;
    p[i * ctx + len + 1] = 102;
  }
  return ids;
}

struct Timing {
  double median_ms, min_ms;
};

Timing time_it(int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

}  // namespace

int main(int argc, char** argv) {
  clip::maybe_reexec_for_blas(argc, argv);
  clip::tune_malloc();
  int threads = 2, image_batch = 8, text_batch = 16, iters = 3, warmup = 1;
  std::vector<std::string> dtypes{"fp32", "bf16"}, towers{"image", "text"};
  std::string device_name = "cpu", attention = "auto", kernels = "plain";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_encoders: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--image-batch") image_batch = std::atoi(next().c_str());
    else if (a == "--text-batch") text_batch = std::atoi(next().c_str());
    else if (a == "--iters") iters = std::max(1, std::atoi(next().c_str()));
    else if (a == "--warmup") warmup = std::max(0, std::atoi(next().c_str()));
    else if (a == "--dtypes") dtypes = split(next());
    else if (a == "--towers") towers = split(next());
    else if (a == "--device") device_name = next();
    else if (a == "--attention") attention = next();
    else if (a == "--kernels") kernels = next();
    else {
      std::fprintf(stderr, "usage: bench_encoders [--threads N] [--image-batch N] [--text-batch N] [--iters N] [--warmup N] "
                           "[--dtypes fp32,bf16,fp16] [--towers image,text] [--device cpu|cuda] [--attention auto] "
                           "[--kernels plain|training]\n");
      return 2;
    }
  }
  threads = clip::set_threads(threads);
  if (!clip::compat::set_attention_backend(attention)) {
    std::fprintf(stderr, "bench_encoders: --attention %s is not available in this LibTorch\n", attention.c_str());
    return 2;
  }
  const at::Device device(device_name);
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  std::fprintf(stderr, "bench_encoders: threads=%d blas_core=%s OPENBLAS_CORETYPE=%s\n", threads, clip::blas_core_name().c_str(),
               core ? core : "(unset)");

  clip::ModelConfig cfg{clip::vision_config("ViT-B-16"), clip::text_config("RoBERTa-wwm-ext-base-chinese")};
  clip::ClipModel model(cfg);
  model->initialize_parameters(0);
  model->eval();
  model->to(device);
  if (kernels == "training") model->set_low_precision_kernels(true);
  else if (kernels != "plain") {
    std::fprintf(stderr, "bench_encoders: --kernels is plain or training, not %s\n", kernels.c_str());
    return 2;
  }
  const int64_t res = cfg.vision.image_resolution;
  auto pixels = at::randn({image_batch, 3, res, res}, at::TensorOptions().dtype(at::kFloat)).to(device);
  auto ids = bench_ids(text_batch, 52).to(device);

  for (const auto& dt : dtypes) {
    at::ScalarType st = at::kFloat;
    if (dt == "bf16") st = at::kBFloat16;
    else if (dt == "fp16") st = at::kHalf;
    else if (dt != "fp32") {
      std::fprintf(stderr, "bench_encoders: unknown dtype %s (fp32, bf16, fp16)\n", dt.c_str());
      return 2;
    }
    model->to(st);
    const at::Tensor px = pixels.to(st);
    c10::InferenceMode guard;
    auto report = [&](const char* tower, int batch, Timing t) {
      std::printf("bench impl=cpp tower=%s dtype=%s device=%s attention=%s kernels=%s batch=%d iters=%d threads=%d median_ms=%.2f "
                  "min_ms=%.2f items_per_s=%.2f\n", tower, dt.c_str(), device.str().c_str(), attention.c_str(), kernels.c_str(), batch, iters,
                  threads, t.median_ms, t.min_ms, batch * 1000.0 / t.median_ms);
      std::fflush(stdout);
    };
    if (has(towers, "image")) report("image", image_batch, time_it(warmup, iters, [&] { model->encode_image(px).to(at::kCPU); }));
    if (has(towers, "text")) report("text", text_batch, time_it(warmup, iters, [&] { model->encode_text(ids).to(at::kCPU); }));
  }
  return 0;
}
