// Accuracy of clip-finetune's mixed precisions against its fp32 step (which matches cn_clip's), on
// one model and one batch of random data, on the device given:
//   0. optionally (--pretrain-steps N) the model is first trained in fp32 on other random batches,
//      to compare away from random initialisation, where the features are nearly equal;
//   1. one step's loss and gradients (lr 0, dropout off) of each precision against fp32's: the
//      loss's relative difference, the global relative L2 error of all gradients and the lowest
//      per-tensor cosine similarity;
//   2. a short training run (dropout off, same data every step): each step's loss and the final
//      weights against the fp32 run's.
// One line per precision, and exit status 1 when a figure is outside the stated tolerance:
//   check precision=bf16 ... loss_rel=.. grad_rel_l2=.. grad_min_cos=.. run_loss_rel_max=.. update_rel_l2=.. ok=1
//
//   bench_precision [--device cuda] [--batch 32] [--steps 10] [--precisions amp,bf16,amp-fp16]
//                   [--vision-model ViT-B-16] [--text-model RoBERTa-wwm-ext-base-chinese]
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.h"
#include "clip/base/runtime.h"
#include "clip/model/config.h"
#include "clip/model/model.h"
#include "clip/train/train.h"

namespace {

struct Run {
  std::vector<std::string> names;  // the optimizer's order
  double first_loss = 0;
  std::vector<at::Tensor> grads;   // float32, one per trainable tensor (undefined when none)
  std::vector<double> losses;      // the training run's
  std::vector<at::Tensor> weights; // float32 after the run
};

Run run_precision(const clip::ModelConfig& cfg, const std::vector<at::Tensor>& init, const std::string& precision,
                  const at::Device& device, const clip::TrainBatch& batch, int64_t steps, double lr) {
  clip::ClipModel model(cfg);
  {
    at::NoGradGuard ng;
    auto st = clip::model_state(model);
    for (size_t i = 0; i < st.size(); ++i) st[i].second.copy_(init[i]);
  }
  model->to(device);
  model->eval();  // dropout off: every precision sees the same function
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (auto& [name, t] : clip::model_state(model))
    if (t.requires_grad()) trainable.emplace_back(name, t);
  const clip::PrecisionPlan plan = clip::precision_plan(precision, device);
  clip::AdamWOptions ao{lr, 0.9, 0.98, 1e-6, 0.001};
  ao.fused = plan.fused_adamw;
  clip::AdamW opt(trainable, ao);
  if (plan.training_kernels) model->set_low_precision_kernels(true);
  if (plan.bf16_weights) clip::convert_to_bf16_training(model, opt);
  std::optional<clip::LossScaler> scaler;
  if (plan.loss_scaler) scaler.emplace(device);
  clip::StepOptions so;
  so.autocast = plan.autocast;
  so.autocast_dtype = plan.autocast_dtype;
  so.scaler = scaler ? &*scaler : nullptr;

  Run r;
  // lr 0: the step leaves the weights as they are (the decay is lr * wd) and the gradients in place.
  r.first_loss = clip::train_step(model, opt, {batch}, 0.0, so).loss;
  for (const auto& p : opt.params()) {
    r.names.push_back(p.name);
    const at::Tensor& g = p.tensor.grad();
    r.grads.push_back(g.defined() ? g.detach().to(at::kCPU, at::kFloat) : at::Tensor());
  }
  for (int64_t i = 0; i < steps; ++i) r.losses.push_back(clip::train_step(model, opt, {batch}, lr, so).loss);
  for (size_t i = 0; i < opt.params().size(); ++i) r.weights.push_back(opt.weight(i).detach().to(at::kCPU, at::kFloat));
  return r;
}

double rel_l2(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!ref[i].defined() || !a[i].defined()) continue;
    num += (a[i].to(at::kDouble) - ref[i].to(at::kDouble)).pow(2).sum().item<double>();
    den += ref[i].to(at::kDouble).pow(2).sum().item<double>();
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  clip::maybe_reexec_for_blas(argc, argv);
  CLI::App app{"Loss, gradients and a short run of each training precision against fp32", "bench_precision"};
  std::string device_name = "cuda", vision = "ViT-B-16", text = "RoBERTa-wwm-ext-base-chinese", list = "amp,bf16,amp-fp16";
  int64_t batch = 32, steps = 10, ctx = 52;
  double lr = 1e-5, pretrain_lr = 1e-4;
  int64_t pretrain_steps = 0;
  // Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); a forward and
  // backward through 24 blocks compounds it to about 1-3 % of the gradient's norm.
  double tol_loss = 0.01, tol_grad = 0.05, tol_cos = 0.99, tol_run = 0.02, tol_update = 0.1;
  app.add_option("--device", device_name)->capture_default_str();
  app.add_option("--batch", batch)->capture_default_str();
  app.add_option("--steps", steps, "steps of the short run")->capture_default_str();
  app.add_option("--lr", lr)->capture_default_str();
  app.add_option("--pretrain-steps", pretrain_steps, "fp32 steps on other random batches before the comparison")
      ->capture_default_str();
  app.add_option("--pretrain-lr", pretrain_lr)->capture_default_str();
  app.add_option("--precisions", list, "comma-separated, compared against fp32")->capture_default_str();
  app.add_option("--vision-model", vision)->capture_default_str();
  app.add_option("--text-model", text)->capture_default_str();
  app.add_option("--tol-loss", tol_loss)->capture_default_str();
  app.add_option("--tol-grad", tol_grad, "global relative L2 error of the gradients")->capture_default_str();
  app.add_option("--tol-cos", tol_cos, "lowest per-tensor gradient cosine")->capture_default_str();
  app.add_option("--tol-run", tol_run, "largest relative loss difference over the run")->capture_default_str();
  app.add_option("--tol-update", tol_update, "relative L2 distance of the run's weight updates")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const at::Device device(device_name);
  clip::ModelConfig cfg{clip::vision_config(vision), clip::text_config(text)};
  const int64_t R = cfg.vision.image_resolution;
  std::vector<at::Tensor> init;
  {
    // At random initialisation every feature is nearly the same and the gradients are mostly
    // cancellation: --pretrain-steps trains in fp32 on other random batches first.
    clip::ClipModel m(cfg);
    m->initialize_parameters(0);
    m->to(device);
    m->eval();
    std::vector<std::pair<std::string, at::Tensor>> trainable;
    for (auto& [name, t] : clip::model_state(m))
      if (t.requires_grad()) trainable.emplace_back(name, t);
    clip::AdamW opt(trainable, clip::AdamWOptions{pretrain_lr, 0.9, 0.98, 1e-6, 0.001});
    at::manual_seed(1);
    for (int64_t i = 0; i < pretrain_steps; ++i) {
      clip::TrainBatch pb{at::randn({batch, 3, R, R}).to(device),
                          clip::bench::bench_ids(batch, ctx, cfg.text.vocab_size).roll({i + 1}, {0}).to(device)};
      clip::train_step(m, opt, {pb}, pretrain_lr, clip::StepOptions{});
    }
    for (auto& [name, t] : clip::model_state(m)) init.push_back(t.detach().to(at::kCPU).clone());
  }
  at::manual_seed(0);
  clip::TrainBatch b{at::randn({batch, 3, R, R}).to(device),
                     clip::bench::bench_ids(batch, ctx, cfg.text.vocab_size).to(device)};

  const Run ref = run_precision(cfg, init, "fp32", device, b, steps, lr);
  // The fp32 run's weight updates, to measure the others' final weights against.
  std::vector<at::Tensor> init_trainable, ref_delta;
  {
    clip::ClipModel m(cfg);
    std::map<std::string, at::Tensor> by_name;
    auto st = clip::model_state(m);
    for (size_t i = 0; i < st.size(); ++i) by_name[st[i].first] = init[i];
    for (const auto& n : ref.names) init_trainable.push_back(by_name.at(n));
    for (size_t k = 0; k < ref.weights.size(); ++k) ref_delta.push_back(ref.weights[k] - init_trainable[k]);
  }
  bool all_ok = true;
  std::stringstream names(list);
  for (std::string p; std::getline(names, p, ',');) {
    const Run r = run_precision(cfg, init, p, device, b, steps, lr);
    const double loss_rel = std::abs(r.first_loss - ref.first_loss) / std::abs(ref.first_loss);
    const double grad_rel = rel_l2(r.grads, ref.grads);
    // Per-tensor cosine over the tensors that carry the gradient: those with at least 1 % of the
    // largest tensor's gradient norm (a near-zero gradient is rounding noise in any precision).
    double min_cos = 1.0, max_norm = 0;
    std::string worst;
    for (const auto& g : ref.grads)
      if (g.defined()) max_norm = std::max(max_norm, g.norm().item<double>());
    for (size_t i = 0; i < ref.grads.size(); ++i) {
      if (!ref.grads[i].defined() || !r.grads[i].defined()) continue;
      const double n = ref.grads[i].norm().item<double>();
      if (n < 0.01 * max_norm) continue;
      const double c = at::cosine_similarity(r.grads[i].flatten().to(at::kDouble), ref.grads[i].flatten().to(at::kDouble),
                                             0).item<double>();
      if (c < min_cos) {
        min_cos = c;
        worst = ref.names[i];
      }
    }
    double run_rel = 0;
    for (size_t i = 0; i < ref.losses.size(); ++i)
      run_rel = std::max(run_rel, std::abs(r.losses[i] - ref.losses[i]) / std::abs(ref.losses[i]));
    std::vector<at::Tensor> delta;
    for (size_t k = 0; k < r.weights.size(); ++k) delta.push_back(r.weights[k] - init_trainable[k]);
    const double w_rel = rel_l2(delta, ref_delta);
    // The weights' updates are compared, not the weights (after a few steps the updates are ~1e-4
    // of the weights): AdamW's first steps move every weight by about lr whatever the gradient's
    // size, so the update of a tensor whose gradient is near zero is mostly rounding noise.
    const bool ok = loss_rel <= tol_loss && grad_rel <= tol_grad && min_cos >= tol_cos && run_rel <= tol_run &&
                    w_rel <= tol_update;
    all_ok = all_ok && ok;
    std::printf("check precision=%s device=%s batch=%lld loss_rel=%.3g grad_rel_l2=%.3g grad_min_cos=%.5f "
                "grad_min_cos_tensor=%s run_steps=%lld run_loss_rel_max=%.3g update_rel_l2=%.3g ok=%d\n",
                p.c_str(), device_name.c_str(), (long long)batch, loss_rel, grad_rel, min_cos,
                worst.empty() ? "-" : worst.c_str(), (long long)steps,
                run_rel, w_rel, ok ? 1 : 0);
  }
  return all_ok ? 0 : 1;
}
