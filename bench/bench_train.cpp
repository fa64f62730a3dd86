// Training throughput of clip-finetune's optimizer step (lib/clip/train/train_step.cpp: forward of both
// towers, symmetric InfoNCE, backward, cn_clip's AdamW groups, logit_scale clamp) on random weights
// and random inputs already on the device, so that data loading is not measured.
// bench_train_python.py measures the same step in Python cn_clip; run_train_gpu.sh runs both.
//
//   bench_train [--device cuda] [--batch 128] [--steps 20] [--warmup 5] [--precision fp32|amp]
//               [--vision-model ViT-B-16] [--text-model RoBERTa-wwm-ext-base-chinese] [--grad-checkpointing]
// Prints one line:
//   bench impl=cpp device=cuda precision=amp batch=128 steps=20 samples_per_s=.. step_ms=.. peak_alloc_mib=..
// (peak_* only in CUDA builds: the CUDA caching allocator's peak allocated and reserved bytes).
// --profile FILE (CUDA builds): after the timed steps, --profile-steps more steps are recorded by
// LibTorch's profiler (Kineto: CPU ops and CUDA kernels) into a Chrome trace; bench/profile_summary.py
// sums its GPU time by kind of kernel (matrix products, attention, element-wise, normalisation, optimizer).
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "clip/model/config.h"
#include "clip/model/model.h"
#include "clip/model/model_parts.h"
#include "clip/model/torch_compat.h"
#include "clip/base/runtime.h"
#include "clip/train/train.h"
#include "bench_common.h"

#ifdef CLIP_BENCH_CUDA_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#endif


namespace {

int run(int argc, char** argv) {
  clip::maybe_reexec_for_blas(argc, argv);
  clip::tune_malloc();
  CLI::App app{"Training step throughput (samples/s) of clip-finetune's step on random data", "bench_train"};
  std::string device_name = "cuda", precision = "fp32", vision = "ViT-B-16", text = "RoBERTa-wwm-ext-base-chinese";
  int64_t batch = 128, steps = 20, warmup = 5, ctx = 52;
  int threads = 0;
  bool grad_ckpt = false;
  app.add_option("--device", device_name)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--steps", steps, "timed optimizer steps")->capture_default_str();
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--precision", precision, "fp32, amp (bf16 autocast), bf16 (bf16 weights, float32 masters) or "
                 "amp-fp16 (fp16 autocast, dynamic loss scale), as clip-finetune")->capture_default_str()
      ->check(CLI::IsMember({"fp32", "amp", "bf16", "amp-fp16"}));
  app.add_option("--vision-model", vision)->capture_default_str();
  app.add_option("--text-model", text)->capture_default_str();
  app.add_option("--context-length", ctx)->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = all cores)")->capture_default_str();
  app.add_flag("--grad-checkpointing", grad_ckpt);
  std::string profile;
  int64_t profile_steps = 5;
  app.add_option("--profile", profile, "Record --profile-steps more steps into this Chrome trace (CUDA builds)");
  app.add_option("--profile-steps", profile_steps)->capture_default_str();
  bool print_losses = false;
  app.add_flag("--losses", print_losses, "Also print every timed step's loss (stderr), to compare runs step by step");
  bool sync_each_step_flag = false;
  app.add_flag("--sync-each-step", sync_each_step_flag, "Read the loss back after every step (no deferred statistics)");
  std::string cuda_graph = "on";
  app.add_option("--cuda-graph", cuda_graph,
                 "Replay the step as a CUDA graph where it can be (as clip-finetune does by default; off: --no-cuda-graph)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  std::string own_kernels = "all";
  app.add_option("--own-kernels", own_kernels,
                 "The build's own CUDA kernels where they apply: all (bias and LayerNorm weight gradients, "
                 "LayerNorm's rows, the packed AdamW update; as clip-finetune), sums (only the gradient sums), off (ATen's)")
      ->capture_default_str()
      ->check(CLI::IsMember({"sums", "all", "off"}));
  std::string sdpa = "auto";
  app.add_option("--attention", sdpa, "Fused attention kernels allowed on CUDA: auto, flash, efficient, cudnn, math")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!clip::compat::set_attention_backend(sdpa)) {
    std::fprintf(stderr, "bench_train: --attention %s is not available in this LibTorch\n", sdpa.c_str());
    return 2;
  }
  clip::set_threads(threads);
  clip::detail::set_lp_kernels(own_kernels == "all"    ? clip::detail::LpKernels::all
                                : own_kernels == "sums" ? clip::detail::LpKernels::sums
                                                        : clip::detail::LpKernels::none);

  const at::Device device(device_name);
  clip::ModelConfig cfg{clip::vision_config(vision), clip::text_config(text)};
  clip::ClipModel model(cfg);
  model->initialize_parameters(0);
  model->to(device);
  model->train();
  if (grad_ckpt) model->set_grad_checkpointing(true);
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (auto& [name, t] : clip::model_state(model))
    if (t.requires_grad()) trainable.emplace_back(name, t);
  const clip::PrecisionPlan plan = clip::precision_plan(precision, device);
  clip::AdamWOptions ao{5e-5, 0.9, 0.98, 1e-6, 0.001};
  ao.fused = plan.fused_adamw;
  clip::AdamW opt(trainable, ao);
  if (plan.bf16_weights) clip::convert_to_bf16_training(model, opt);
  if (plan.training_kernels) model->set_low_precision_kernels(true);
  std::optional<clip::LossScaler> scaler;
  if (plan.loss_scaler) scaler.emplace(device);

  const int64_t R = cfg.vision.image_resolution;
  at::manual_seed(0);
  clip::TrainBatch b{at::randn({batch, 3, R, R}).to(device), clip::bench::bench_ids(batch, ctx, cfg.text.vocab_size).to(device)};
  clip::StepOptions so;
  so.autocast = plan.autocast;
  so.autocast_dtype = plan.autocast_dtype;
  so.scaler = scaler ? &*scaler : nullptr;
  // As clip-finetune: with the fused optimizer (CUDA mixed precisions) the step's values stay on the
  // device (no sync per step); --sync-each-step reads them back every step, as before.
  const bool sync_each_step = sync_each_step_flag;
  at::Tensor poison;
  if (plan.fused_adamw) {
    poison = at::zeros({}, at::TensorOptions(at::kFloat).device(device));
    so.poison = &poison;
  }

  if (sync_each_step) so.poison = nullptr;
  clip::StepGraph graph;
  if (cuda_graph == "on") so.graph = &graph;
  for (int64_t i = 0; i < warmup; ++i) clip::train_step(model, opt, {b}, 5e-5, so);
#ifdef CLIP_BENCH_CUDA_STATS
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
  // The steps queue their work without waiting for it (the fused optimizer's values stay on the device):
  // a parameter read waits for the warm-up's last step before the clock starts, and another one for the
  // last timed step before it stops. Without the first, work of the warm-up still queued on the device
  // (two or three whole steps when they are graph replays, which the CPU queues at once) is timed.
  (void)trainable.front().second.sum().item<float>();
  std::vector<clip::StepStats> stats;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) stats.push_back(clip::train_step(model, opt, {b}, 5e-5, so));
  (void)trainable.front().second.sum().item<float>();
  clip::settle(stats);
  const double loss = stats.back().loss;
  if (print_losses) {
    std::string line = "losses";
    for (const clip::StepStats& st : stats) line += " " + std::to_string(st.loss);
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (!profile.empty()) {
#ifdef CLIP_BENCH_CUDA_STATS
    namespace prof = torch::profiler::impl;
    const prof::ProfilerConfig pc(prof::ProfilerState::KINETO);
    const std::set<prof::ActivityType> acts{prof::ActivityType::CPU, prof::ActivityType::CUDA};
    torch::autograd::profiler::prepareProfiler(pc, acts);
    torch::autograd::profiler::enableProfiler(pc, acts);
    for (int64_t i = 0; i < profile_steps; ++i) clip::train_step(model, opt, {b}, 5e-5, so);
    (void)trainable.front().second.sum().item<float>();
    torch::autograd::profiler::disableProfiler()->save(profile);
    std::fprintf(stderr, "profile of %lld steps: %s\n", (long long)profile_steps, profile.c_str());
#else
    std::fprintf(stderr, "--profile needs a CUDA build of LibTorch (scripts/gpu_build.sh)\n");
    return 2;
#endif
  }

  std::string mem;
#ifdef CLIP_BENCH_CUDA_STATS
  if (device.is_cuda()) {
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    mem = " peak_alloc_mib=" + std::to_string(st.allocated_bytes[0].peak >> 20) +
          " peak_reserved_mib=" + std::to_string(st.reserved_bytes[0].peak >> 20);
  }
#endif
  std::printf("bench impl=cpp device=%s precision=%s batch=%lld steps=%lld grad_ckpt=%d deferred=%d cuda_graph=%d "
              "own_kernels=%s samples_per_s=%.1f step_ms=%.1f last_loss=%.4f%s\n",
              device_name.c_str(), precision.c_str(), (long long)batch, (long long)steps, grad_ckpt ? 1 : 0,
              so.poison ? 1 : 0, graph.captured() ? 1 : 0,
              clip::detail::lp_kernels_built() ? own_kernels.c_str() : "off",
              batch * steps / s, 1000 * s / steps, loss, mem.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // E.g. --attention flash on the text tower, whose padding mask the flash kernel does not take.
    std::fprintf(stderr, "bench_train: %s\n", std::string(e.what()).substr(0, 400).c_str());
    return 1;
  }
}
