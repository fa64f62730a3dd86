// The build's own CUDA kernels for the low-precision training forms (lib/clip/model/cuda, used by
// lp_linear and lp_layer_norm; lib/clip/train/cuda, the optimizer's packed update) against ATen's:
// gradients checked against a float64 reference, the update against PyTorch's fused AdamW, then
// timed, on the shapes of ViT-B-16 and RoBERTa-base at batch 128; and the squash of --decode device
// (lib/clip/model/cuda/squash.cu) against the CPU's exact resize, byte for byte, then timed.
//   bench_kernels [--dtype bf16|fp16] [--iters 20]
// Prints one "check" line per shape (max error relative to the reference, kernels and ATen) and one
// "bench" line per shape (ms per backward, kernels and ATen); exit 1 when a kernel's error exceeds
// twice ATen's plus one rounding of the output dtype, when the packed AdamW step differs from
// PyTorch's fused one by more than a float32 rounding, when a squashed byte differs from the CPU's,
// or the build has no kernels.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "clip/image/image.h"
#include "clip/model/model_parts.h"
#include "clip/model/tensor_torch.h"
#include "clip/train/train.h"

namespace {

double seconds_per_call(const std::function<void()>& f, int iters) {
  for (int i = 0; i < 3; ++i) f();
  at::zeros({1}, at::TensorOptions().device(at::kCUDA)).item<float>();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  at::zeros({1}, at::TensorOptions().device(at::kCUDA)).item<float>();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

// max |a - ref| / max |ref|
double rel_err(const at::Tensor& a, const at::Tensor& ref) {
  return (a.to(at::kDouble) - ref).abs().max().item<double>() / std::max(1e-30, ref.abs().max().item<double>());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Own CUDA kernels of the training step against ATen"};
  std::string dtype_name = "bf16";
  int iters = 20;
  app.add_option("--dtype", dtype_name)->capture_default_str()->check(CLI::IsMember({"bf16", "fp16"}));
  app.add_option("--iters", iters)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!clip::detail::lp_kernels_built()) {
    std::fprintf(stderr, "bench_kernels: this build has no own CUDA kernels (scripts/gpu_build.sh with nvcc)\n");
    return 2;
  }
  const at::ScalarType dt = dtype_name == "bf16" ? at::kBFloat16 : at::kHalf;
  const double ulp = dt == at::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
  const auto opt = at::TensorOptions().device(at::kCUDA).dtype(dt);
  at::manual_seed(0);
  bool ok = true;
  struct Shape {
    const char* what;
    int64_t rows, in, out;  // rows = batch x tokens
  };
  const std::vector<Shape> linears = {{"vit.qkv", 128 * 197, 768, 2304}, {"vit.fc", 128 * 197, 768, 3072},
                                      {"vit.proj", 128 * 197, 3072, 768}, {"bert.out", 128 * 52, 3072, 768}};
  for (const auto& s : linears) {
    at::Tensor x = at::randn({s.rows, s.in}, opt), w = at::randn({s.out, s.in}, opt) * 0.02, b = at::randn({s.out}, opt);
    at::Tensor g = at::randn({s.rows, s.out}, opt);
    auto run = [&](bool own) {
      clip::detail::set_lp_kernels(own ? clip::detail::LpKernels::all : clip::detail::LpKernels::none);
      at::Tensor xv = x.detach().requires_grad_(true), wv = w.detach().requires_grad_(true), bv = b.detach().requires_grad_(true);
      at::Tensor y = clip::detail::lp_linear(xv, wv, bv);
      y.backward(g);
      return std::vector<at::Tensor>{y.detach(), xv.grad(), wv.grad(), bv.grad()};
    };
    auto k = run(true), a = run(false);
    const at::Tensor ref_db = g.to(at::kDouble).sum(0);
    const double ek = rel_err(k[3], ref_db), ea = rel_err(a[3], ref_db);
    const double dx = rel_err(k[1], a[1].to(at::kDouble)), dw = rel_err(k[2], a[2].to(at::kDouble));
    const bool pass = ek <= 2 * ea + ulp && dx <= 4 * ulp && dw <= 4 * ulp && k[0].equal(a[0]);
    ok = ok && pass;
    std::printf("check linear=%s dtype=%s bias_grad_err_kernel=%.3g bias_grad_err_aten=%.3g dx_vs_aten=%.3g dw_vs_aten=%.3g %s\n",
                s.what, dtype_name.c_str(), ek, ea, dx, dw, pass ? "ok" : "FAIL");
    at::Tensor g2 = g.contiguous();
    auto time_bias = [&](bool own) {
      clip::detail::set_lp_kernels(own ? clip::detail::LpKernels::all : clip::detail::LpKernels::none);
      at::Tensor xv = x.detach().requires_grad_(false), wv = w.detach().requires_grad_(false), bv = b.detach().requires_grad_(true);
      return seconds_per_call([&] {
        at::Tensor y = clip::detail::lp_linear(xv, wv, bv);
        y.backward(g2);
        bv.mutable_grad() = at::Tensor();
      }, iters);
    };
    const double tk = time_bias(true), ta = time_bias(false);
    std::printf("bench linear=%s rows=%lld out=%lld forward_plus_bias_grad_ms kernel=%.4f aten=%.4f\n", s.what,
                (long long)s.rows, (long long)s.out, tk * 1e3, ta * 1e3);
  }
  for (int64_t rows : {int64_t{128 * 197}, int64_t{128 * 52}}) {
    const int64_t n = 768;
    at::Tensor x = at::randn({rows, n}, opt), w = 1 + 0.1 * at::randn({n}, opt), b = 0.1 * at::randn({n}, opt);
    at::Tensor g = at::randn({rows, n}, opt);
    auto run = [&](bool own) {
      clip::detail::set_lp_kernels(own ? clip::detail::LpKernels::all : clip::detail::LpKernels::none);
      at::Tensor xv = x.detach().requires_grad_(true), wv = w.detach().requires_grad_(true), bv = b.detach().requires_grad_(true);
      at::Tensor y = clip::detail::lp_layer_norm(xv, n, wv, bv, 1e-5);
      y.backward(g);
      return std::vector<at::Tensor>{y.detach(), xv.grad(), wv.grad(), bv.grad()};
    };
    auto k = run(true), a = run(false);
    const at::Tensor xd = x.to(at::kDouble);
    const at::Tensor mean = xd.mean(1, true), var = (xd - mean).pow(2).mean(1, true);
    const at::Tensor xhat = (xd - mean) / (var + 1e-5).sqrt();
    const at::Tensor gd = g.to(at::kDouble);
    const at::Tensor ref_dw = (gd * xhat).sum(0), ref_db = gd.sum(0);
    const at::Tensor wd = w.to(at::kDouble), gw = gd * wd;
    const at::Tensor ref_y = xhat * wd + b.to(at::kDouble);
    const at::Tensor ref_dx = (gw - gw.mean(1, true) - xhat * (gw * xhat).mean(1, true)) / (var + 1e-5).sqrt();
    const double ekw = rel_err(k[2], ref_dw), eaw = rel_err(a[2], ref_dw), ekb = rel_err(k[3], ref_db), eab = rel_err(a[3], ref_db);
    const double eky = rel_err(k[0], ref_y), eay = rel_err(a[0], ref_y), ekx = rel_err(k[1], ref_dx), eax = rel_err(a[1], ref_dx);
    const bool pass = ekw <= 2 * eaw + ulp && ekb <= 2 * eab + ulp && eky <= 2 * eay + ulp && ekx <= 2 * eax + ulp;
    ok = ok && pass;
    std::printf("check layernorm rows=%lld dtype=%s y_err_kernel=%.3g aten=%.3g dx_err_kernel=%.3g aten=%.3g "
                "weight_grad_err_kernel=%.3g aten=%.3g bias_grad_err_kernel=%.3g aten=%.3g %s\n",
                (long long)rows, dtype_name.c_str(), eky, eay, ekx, eax, ekw, eaw, ekb, eab, pass ? "ok" : "FAIL");
    auto time_ln = [&](bool own) {
      clip::detail::set_lp_kernels(own ? clip::detail::LpKernels::all : clip::detail::LpKernels::none);
      at::Tensor xv = x.detach().requires_grad_(true), wv = w.detach().requires_grad_(true), bv = b.detach().requires_grad_(true);
      return seconds_per_call([&] {
        at::Tensor y = clip::detail::lp_layer_norm(xv, n, wv, bv, 1e-5);
        y.backward(g);
        xv.mutable_grad() = at::Tensor();
        wv.mutable_grad() = at::Tensor();
        bv.mutable_grad() = at::Tensor();
      }, iters);
    };
    const double tk = time_ln(true), ta = time_ln(false);
    std::printf("bench layernorm rows=%lld forward_backward_ms kernel=%.4f aten=%.4f\n", (long long)rows, tk * 1e3, ta * 1e3);
  }
  // AdamW on ViT-B-16's twelve blocks (85M parameters, both groups) and a float32 island: the packed
  // update by the own kernel against PyTorch's fused AdamW over float32 gradient copies, three steps.
  {
    std::vector<std::pair<std::string, at::Tensor>> base;
    for (int b = 0; b < 12; ++b) {
      const std::string pre = "visual.transformer.resblocks." + std::to_string(b) + ".";
      for (auto [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
               {"attn.in_proj_weight", {2304, 768}}, {"attn.in_proj_bias", {2304}}, {"attn.out_proj.weight", {768, 768}},
               {"attn.out_proj.bias", {768}}, {"ln_1.weight", {768}}, {"ln_1.bias", {768}},
               {"mlp.c_fc.weight", {3072, 768}}, {"mlp.c_fc.bias", {3072}}, {"mlp.c_proj.weight", {768, 3072}},
               {"mlp.c_proj.bias", {768}}, {"ln_2.weight", {768}}, {"ln_2.bias", {768}}})
        base.emplace_back(pre + name, at::randn(shape, at::TensorOptions().device(at::kCUDA)) * 0.02);
    }
    std::vector<std::vector<at::Tensor>> grads(3);
    for (auto& step : grads)
      for (const auto& [name, t] : base) step.push_back(at::randn_like(t).mul_(1e-3).to(dt));
    auto make = [&](std::vector<at::Tensor>& params, at::Tensor& island) {
      std::vector<std::pair<std::string, at::Tensor>> named;
      for (const auto& [name, t] : base) {
        params.push_back(t.clone().requires_grad_(true));
        named.emplace_back(name, params.back());
      }
      island = at::full({}, 2.6592, at::TensorOptions().device(at::kCUDA)).requires_grad_(true);
      named.emplace_back("logit_scale", island);
      clip::AdamWOptions o;
      o.lr = 1e-3;
      o.fused = true;
      auto opt = std::make_unique<clip::AdamW>(named, o);
      opt->keep_master_weights();
      at::NoGradGuard ng;
      for (auto& p : params) p.set_data(p.detach().to(dt));
      return opt;
    };
    auto run_steps = [&](clip::AdamW& opt, std::vector<at::Tensor>& params, at::Tensor& island, bool own, int step) {
      clip::detail::set_lp_kernels(own ? clip::detail::LpKernels::all : clip::detail::LpKernels::none);
      for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = grads[step % 3][i].clone();
      island.mutable_grad() = at::full({}, 0.01, island.options());
      opt.step();
    };
    std::vector<at::Tensor> pk, pa;
    at::Tensor ik, ia;
    auto ok_opt = make(pk, ik), aten_opt = make(pa, ia);
    for (int s = 0; s < 3; ++s) {
      run_steps(*ok_opt, pk, ik, true, s);
      run_steps(*aten_opt, pa, ia, false, s);
    }
    double dmaster = 0, dm = 0, dv = 0;
    int64_t low_diff = 0;
    for (size_t i = 0; i < ok_opt->params().size(); ++i) {
      const auto &a = ok_opt->params()[i], &b = aten_opt->params()[i];
      dmaster = std::max(dmaster, rel_err(ok_opt->weight(i), aten_opt->weight(i).to(at::kDouble)));
      dm = std::max(dm, rel_err(a.exp_avg, b.exp_avg.to(at::kDouble)));
      dv = std::max(dv, rel_err(a.exp_avg_sq, b.exp_avg_sq.to(at::kDouble)));
      low_diff += a.tensor.ne(b.tensor).sum().item<int64_t>();
    }
    const bool pass = dmaster <= 2e-7 && dm <= 2e-7 && dv <= 2e-7 && ik.equal(ia);
    ok = ok && pass;
    std::printf("check adamw params=%zu steps=3 master_vs_fused=%.3g exp_avg=%.3g exp_avg_sq=%.3g low_values_differing=%lld %s\n",
                ok_opt->params().size(), dmaster, dm, dv, (long long)low_diff, pass ? "ok" : "FAIL");
    auto time_step = [&](clip::AdamW& opt, std::vector<at::Tensor>& params, at::Tensor& island, bool own) {
      int s = 0;
      return seconds_per_call([&] { run_steps(opt, params, island, own, s++); }, iters);
    };
    const double tk = time_step(*ok_opt, pk, ik, true), ta = time_step(*aten_opt, pa, ia, false);
    std::printf("bench adamw params=%zu elements=85M step_ms kernel=%.4f aten=%.4f (gradient clones included in both)\n",
                ok_opt->params().size(), tk * 1e3, ta * 1e3);
    clip::detail::set_lp_kernels(clip::detail::LpKernels::sums);
  }
  {
    // The squash: random 8-bit RGB images of several sizes (down, up, one side kept, mixed in one
    // batch) against resize_bicubic on the CPU, then a batch of 256 500x375 images timed.
    const int r = 224;
    const std::vector<std::pair<int, int>> sizes = {{500, 375}, {375, 500}, {640, 480}, {224, 224}, {100, 80},
                                                    {1000, 100}, {224, 500}, {500, 224}, {37, 1200}, {333, 500}};
    std::vector<at::Tensor> host, dev;
    at::Tensor expect = at::empty({static_cast<int64_t>(sizes.size() * 3), 3, r, r}, at::kByte);
    for (size_t i = 0; i < sizes.size() * 3; ++i) {
      const auto [w, h] = sizes[i % sizes.size()];
      at::Tensor t = at::randint(0, 256, {h, w, 3}, at::kByte);
      if (i >= sizes.size()) t = (at::arange(0, h * w * 3, at::kLong).view({h, w, 3}) * (static_cast<int64_t>(i) + 7) % 256).to(at::kByte);
      host.push_back(t);
      dev.push_back(t.to(at::kCUDA));
      clip::Image im;
      im.width = w;
      im.height = h;
      im.mode = clip::PixelMode::RGB;
      im.pixels.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
      const clip::Image out = clip::resize_bicubic(im, r, r);
      expect[static_cast<int64_t>(i)].copy_(
          at::from_blob(const_cast<uint8_t*>(out.pixels.data()), {r, r, 3}, at::kByte).permute({2, 0, 1}));
    }
    const at::Tensor got = clip::squash_bicubic_u8(dev, r, at::Device(at::kCUDA)).cpu();
    const at::Tensor got_host = clip::squash_bicubic_u8(host, r, at::Device(at::kCUDA)).cpu();
    const int64_t differ = got.ne(expect).sum().item<int64_t>() + got_host.ne(expect).sum().item<int64_t>();
    const bool pass = differ == 0;
    ok = ok && pass;
    std::printf("check squash images=%zu sizes=%zu bytes_differing_from_cpu=%lld %s\n", host.size(), sizes.size(),
                (long long)differ, pass ? "ok" : "FAIL");
    std::vector<at::Tensor> batch;
    const at::Tensor one = at::randint(0, 256, {375, 500, 3}, at::TensorOptions(at::kByte).device(at::kCUDA));
    for (int i = 0; i < 256; ++i) batch.push_back(one);
    const double ts = seconds_per_call([&] { clip::squash_bicubic_u8(batch, r, at::Device(at::kCUDA)); }, iters);
    std::printf("bench squash images=256 size=500x375 ms=%.3f images_per_s=%.0f\n", ts * 1e3, 256 / ts);
  }
  return ok ? 0 : 1;
}
