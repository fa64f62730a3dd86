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

// Top-1 accuracies of both directions as 0-dim float tensors on the logits' device (no sync).
std::pair<at::Tensor, at::Tensor> accuracy_t(const ContrastiveLoss& l) {
  at::NoGradGuard ng;
  at::Tensor logits = l.logits_per_image.detach();
  int64_t n = logits.size(0);
  at::Tensor gt = at::arange(n, at::TensorOptions(at::kLong).device(logits.device()));
  return {(logits.argmax(-1) == gt).sum().to(at::kFloat) / n, (logits.t().argmax(-1) == gt).sum().to(at::kFloat) / n};
}

// Deferred: flags a non-finite loss in *poison (sticky) without reading it back.
void flag_nonfinite(const at::Tensor& loss, at::Tensor& poison) {
  at::NoGradGuard ng;
  poison.copy_(at::maximum(poison, at::logical_not(at::isfinite(loss.detach())).to(at::kFloat).reshape({})));
}

void accuracy(const ContrastiveLoss& l, StepStats& st) {
  at::NoGradGuard ng;
  at::Tensor logits = l.logits_per_image.detach();
  int64_t n = logits.size(0);
  at::Tensor gt = at::arange(n, at::TensorOptions(at::kLong).device(logits.device()));
  st.i2t_acc = (logits.argmax(-1) == gt).sum().item<double>() / n;
  st.t2i_acc = (logits.t().argmax(-1) == gt).sum().item<double>() / n;
}

void backward(const at::Tensor& loss, const LossScaler* scaler) {
  if (scaler) (loss * scaler->scale.squeeze(0)).backward();
  else loss.backward();
}

}  // namespace

PrecisionPlan precision_plan(const std::string& precision, const at::Device& device) {
  PrecisionPlan p;
  if (precision == "fp32") return p;
  if (precision == "amp") {
    p.autocast = true;
  } else if (precision == "bf16") {
    p.bf16_weights = true;
  } else if (precision == "amp-fp16") {
    if (!device.is_cuda())
      throw UsageError("--precision amp-fp16 (fp16 autocast with a dynamic loss scale) needs --device cuda; on the "
                       "CPU use amp or bf16");
    p.autocast = true;
    p.autocast_dtype = at::kHalf;
    p.loss_scaler = true;
  } else {
    throw UsageError("--precision must be fp32, amp, bf16 or amp-fp16, not '" + precision + "'");
  }
  p.fused_adamw = device.is_cuda();
  p.training_kernels = device.is_cuda();
  if (device.is_cuda()) p.upload_dtype = p.autocast ? p.autocast_dtype : at::kBFloat16;
  return p;
}

std::map<std::string, at::Tensor> convert_to_bf16_training(ClipModel& model, AdamW& optimizer) {
  std::map<std::string, at::Tensor> fp32;
  optimizer.keep_master_weights();
  for (size_t i = 0; i < optimizer.params().size(); ++i) fp32[optimizer.params()[i].name] = optimizer.weight(i);
  for (auto& [name, t] : model_state(model))
    if (!fp32.count(name) && at::isFloatingType(t.scalar_type()) && !ClipModelImpl::keeps_float32(name))
      fp32[name] = t.detach().clone();
  model->to(at::kBFloat16);
  return fp32;
}

LossScaler::LossScaler(const at::Device& device, double initial_scale, int64_t good_steps)
    : scale(at::full({1}, initial_scale, at::TensorOptions(at::kFloat).device(device))),
      growth_tracker(at::full({1}, good_steps, at::TensorOptions(at::kInt).device(device))) {}

double LossScaler::value() const { return scale.item<double>(); }
int64_t LossScaler::good_steps() const { return growth_tracker.item<int64_t>(); }

StepStats train_step(ClipModel& model, AdamW& optimizer, const std::vector<TrainBatch>& batches, double lr,
                     const StepOptions& options) {
  if (batches.empty()) throw UsageError("train_step: no batch");
  optimizer.set_lr(lr);
  if (options.graph && StepGraph::unsupported(model, optimizer, batches, options).empty())
    return options.graph->step(model, optimizer, batches.front(), options);
  return detail::step_body(model, optimizer, batches, options);
}

namespace detail {

StepStats step_body(ClipModel& model, AdamW& optimizer, const std::vector<TrainBatch>& batches,
                    const StepOptions& options) {
  StepStats st;
  optimizer.zero_grad();
  at::Device device = model->logit_scale().device();
  DistGroup* dist = options.dist;
  const bool defer = options.poison != nullptr;
  at::Tensor loss_t;
  std::pair<at::Tensor, at::Tensor> acc_t;
  // Every rank's rows of a feature matrix (only this rank's keep their autograd path).
  auto global = [dist](const at::Tensor& local) { return dist ? dist->all_gather_rows(local) : local; };
  // The loss and accuracies of a forward with gradients (read back now, or kept on the device when
  // deferred), then its backward. micro: the micro-batch, for the error message (-1: one batch).
  auto record_and_backward = [&](const ContrastiveLoss& l, int64_t micro) {
    if (defer) {
      flag_nonfinite(l.loss, *options.poison);
      loss_t = l.loss.detach().to(at::kFloat);
      acc_t = accuracy_t(l);
    } else {
      st.loss = l.loss.item<double>();
      check_finite(st.loss, micro);
      accuracy(l, st);
    }
    backward(l.loss, options.scaler);
  };
  if (batches.size() == 1) {
    ContrastiveLoss l;
    {
      detail::AutocastScope ac(options.autocast, device, options.autocast_dtype);
      auto [img, txt, scale] = model->forward(batches[0].pixels, batches[0].ids);
      l = contrastive_loss(global(img.to(at::kFloat)), global(txt.to(at::kFloat)), scale.to(at::kFloat));
    }
    record_and_backward(l, -1);
  } else {
    // Feature caching (cn_clip --accum-freq): every micro-batch's features without gradients first ...
    std::vector<at::Tensor> cached_img, cached_txt;
    {
      at::NoGradGuard ng;
      detail::AutocastScope ac(options.autocast, device, options.autocast_dtype);
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
        detail::AutocastScope ac(options.autocast, device, options.autocast_dtype);
        auto [img, txt, scale] = model->forward(batches[j].pixels, batches[j].ids);
        std::vector<at::Tensor> all_img = cached_img, all_txt = cached_txt;
        all_img[j] = img.to(at::kFloat);
        all_txt[j] = txt.to(at::kFloat);
        // Distributed: [rank 0's micro-batches..., rank 1's ...]: the global set in another row order,
        // which the loss does not depend on (images and texts are permuted alike).
        l = contrastive_loss(global(at::cat(all_img)), global(at::cat(all_txt)), scale.to(at::kFloat));
      }
      record_and_backward(l, static_cast<int64_t>(j));
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
  at::Tensor found_inf;
  if (options.scaler) {
    // GradScaler.unscale_: grads *= 1/scale (computed in double, as torch does), inf/NaN flagged.
    at::NoGradGuard ng;
    std::vector<at::Tensor> grads;
    for (const auto& p : optimizer.params())
      if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
    found_inf = at::zeros({}, at::TensorOptions(at::kFloat).device(device));  // 0-dim, as GradScaler's
    at::Tensor inv = options.scaler->scale.to(at::kDouble).reciprocal().to(at::kFloat);
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv);
  }
  if (defer) found_inf = found_inf.defined() ? at::maximum(found_inf, *options.poison) : options.poison->clone();
  if (options.compute_grad_norm) {
    std::vector<at::Tensor> ps;
    for (const auto& p : optimizer.params()) ps.push_back(p.tensor);
    st.grad_l2 = detail::grad_global_l2(ps);
  }
  optimizer.step(found_inf);
  if (options.scaler) {
    LossScaler& sc = *options.scaler;
    at::_amp_update_scale_(sc.scale, sc.growth_tracker, found_inf, sc.growth, sc.backoff, sc.interval);
  }
  clamp_logit_scale(model);
  {
    // bf16 training: the master is what the next step updates, so it is clamped too.
    at::NoGradGuard ng;
    for (const auto& p : optimizer.params())
      if (p.master.defined() && p.tensor.is_same(model->logit_scale())) p.master.clamp_(0.0, kLogitScaleMax);
  }
  if (defer) {
    at::NoGradGuard ng;
    st.pending = at::stack({loss_t.reshape({}), acc_t.first, acc_t.second,
                            model->logit_scale().detach().to(at::kFloat).reshape({})});
  } else {
    st.logit_scale = model->logit_scale().item<double>();
  }
  return st;
}

}  // namespace detail

void check_loss(double loss) { check_finite(loss, -1); }

int64_t settle(std::vector<StepStats>& steps) {
  std::vector<at::Tensor> p;
  for (const auto& s : steps)
    if (s.pending.defined()) p.push_back(s.pending);
  if (p.empty()) return -1;
  const at::Tensor v = at::stack(p).to(at::kCPU, at::kDouble).contiguous();
  const double* d = v.data_ptr<double>();
  int64_t first_bad = -1, j = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    StepStats& s = steps[i];
    if (!s.pending.defined()) continue;
    s.loss = d[j * 4];
    s.i2t_acc = d[j * 4 + 1];
    s.t2i_acc = d[j * 4 + 2];
    s.logit_scale = d[j * 4 + 3];
    s.pending = at::Tensor();
    ++j;
    if (first_bad < 0 && !std::isfinite(s.loss)) first_bad = static_cast<int64_t>(i);
  }
  return first_bad;
}

}  // namespace clip
