// One cn_clip optimisation step on a model (train.py: get_loss + backward + AdamW + clamp).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <fmt/format.h>

#include <cmath>

#include "clip/base/error.h"
#include "clip/model/model.h"
#include "clip/train/dist.h"
#include "clip/train/train.h"
#include "clip/train/train_internal.h"

namespace clip {

void clamp_logit_scale(ClipModel& model) {
  at::NoGradGuard ng;
  auto& s = model->logit_scale();
  s.clamp_(0.0, kLogitScaleMax);
}

namespace {

void check_finite(double loss, int64_t micro) {
  if (!std::isfinite(loss))
    throw TrainingError(fmt::format("the loss became {}{}; the weights of the last good step are kept. Lower --lr "
                                    "or raise --warmup (with --precision amp, also try fp32)",
                                    loss, micro >= 0 ? fmt::format(" (micro-batch {})", micro) : std::string()));
}

void accuracy(const ContrastiveLoss& l, StepStats& st) {
  at::NoGradGuard ng;
  at::Tensor logits = l.logits_per_image.detach();
  int64_t n = logits.size(0);
  at::Tensor gt = at::arange(n, at::TensorOptions(at::kLong).device(logits.device()));
  st.i2t_acc = (logits.argmax(-1) == gt).sum().item<double>() / n;
  st.t2i_acc = (logits.t().argmax(-1) == gt).sum().item<double>() / n;
}

}  // namespace

StepStats train_step(ClipModel& model, AdamW& optimizer, const std::vector<TrainBatch>& batches, double lr,
                     const StepOptions& options) {
  if (batches.empty()) throw UsageError("train_step: no batch");
  StepStats st;
  optimizer.set_lr(lr);
  optimizer.zero_grad();
  at::Device device = model->logit_scale().device();
  DistGroup* dist = options.dist;
  // Every rank's rows of a feature matrix (only this rank's keep their autograd path).
  auto global = [dist](const at::Tensor& local) { return dist ? dist->all_gather_rows(local) : local; };
  if (batches.size() == 1) {
    ContrastiveLoss l;
    {
      detail::AutocastScope ac(options.autocast, device);
      auto [img, txt, scale] = model->forward(batches[0].pixels, batches[0].ids);
      l = contrastive_loss(global(img.to(at::kFloat)), global(txt.to(at::kFloat)), scale.to(at::kFloat));
    }
    st.loss = l.loss.item<double>();
    check_finite(st.loss, -1);
    accuracy(l, st);
    l.loss.backward();
  } else {
    // Feature caching (cn_clip --accum-freq): every micro-batch's features without gradients first ...
    std::vector<at::Tensor> cached_img, cached_txt;
    {
      at::NoGradGuard ng;
      detail::AutocastScope ac(options.autocast, device);
      for (const auto& b : batches) {
        auto [img, txt, scale] = model->forward(b.pixels, b.ids);
        cached_img.push_back(img.to(at::kFloat));
        cached_txt.push_back(txt.to(at::kFloat));
      }
    }
    // ... then each micro-batch again with gradients, its fresh features in place of the cached ones.
    for (size_t j = 0; j < batches.size(); ++j) {
      ContrastiveLoss l;
      {
        detail::AutocastScope ac(options.autocast, device);
        auto [img, txt, scale] = model->forward(batches[j].pixels, batches[j].ids);
        std::vector<at::Tensor> all_img = cached_img, all_txt = cached_txt;
        all_img[j] = img.to(at::kFloat);
        all_txt[j] = txt.to(at::kFloat);
        // Distributed: [rank 0's micro-batches..., rank 1's ...]: the global set in another row order,
        // which the loss does not depend on (images and texts are permuted alike).
        l = contrastive_loss(global(at::cat(all_img)), global(at::cat(all_txt)), scale.to(at::kFloat));
      }
      st.loss = l.loss.item<double>();
      check_finite(st.loss, static_cast<int64_t>(j));
      accuracy(l, st);
      l.loss.backward();
    }
  }
  if (dist && dist->size() > 1) {
    // Each rank's gradient is the global loss's through its own rows: their sum is the
    // single-process gradient. logit_scale enters every rank's loss directly, so each rank already
    // holds its full gradient: average that one.
    std::vector<at::Tensor> grads;
    for (const auto& p : optimizer.params())
      if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
    dist->all_reduce_sum(grads);
    at::Tensor g = model->logit_scale().grad();
    if (g.defined()) {
      at::NoGradGuard ng;
      g.div_(dist->size());
    }
  }
  if (options.compute_grad_norm) {
    std::vector<at::Tensor> ps;
    for (const auto& p : optimizer.params()) ps.push_back(p.tensor);
    st.grad_l2 = detail::grad_global_l2(ps);
  }
  optimizer.step();
  clamp_logit_scale(model);
  st.logit_scale = model->logit_scale().item<double>();
  return st;
}

}  // namespace clip
