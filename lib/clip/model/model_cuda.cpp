// Linear and LayerNorm with this build's CUDA kernels (cuda/colsum.cu: the weight gradients' column
// sums; cuda/layernorm.cu: LayerNorm's rows) instead of ATen's: used by the low-precision kernels in
// training.
// Builds without them (CPU LibTorch, no nvcc) take ATen's forms.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "clip/model/model_parts.h"
#include "clip/model/torch_compat.h"

#ifdef CLIP_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>
#include <vector>

#include "clip/base/error.h"
#include "clip/model/cuda/colsum.h"
#include "clip/model/cuda/layernorm.h"
#endif

namespace clip::detail {

namespace {
// CLIP_OWN_KERNELS=none|sums|all sets the starting choice for every tool (checks and benchmarks of the
// kernels through clip-finetune); unset or anything else: all.
LpKernels initial_kernels() {
  const char* v = std::getenv("CLIP_OWN_KERNELS");
  if (v == nullptr) return LpKernels::all;
  if (std::strcmp(v, "none") == 0 || std::strcmp(v, "off") == 0) return LpKernels::none;
  if (std::strcmp(v, "sums") == 0) return LpKernels::sums;
  return LpKernels::all;
}
std::atomic<LpKernels> g_kernels{initial_kernels()};
}  // namespace

void set_lp_kernels(LpKernels k) { g_kernels = k; }
LpKernels lp_kernels() { return g_kernels; }

#ifdef CLIP_HAVE_CUDA_KERNELS
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return cuda::kBFloat16;
    case at::kHalf: return cuda::kFloat16;
    case at::kFloat: return cuda::kFloat32;
    default: return -1;
  }
}

bool low_precision(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

void check(int err, const char* what) {
  if (err != 0)
    throw ModelError(std::string(what) + ": CUDA error " + cudaGetErrorString(static_cast<cudaError_t>(err)));
}

// [n, c] contiguous, kernel-friendly -> c sums in out_dtype.
at::Tensor column_sums(const at::Tensor& g2, at::ScalarType out_dtype) {
  const int64_t n = g2.size(0), c = g2.size(1);
  if (!cuda::colsum_supported(g2.data_ptr(), c)) return g2.sum(0, /*keepdim=*/false, at::kFloat).to(out_dtype);
  at::Tensor ws = at::empty({cuda::colsum_chunks(n, c) * c}, g2.options().dtype(at::kFloat));
  at::Tensor out = at::empty({c}, g2.options().dtype(out_dtype));
  check(cuda::colsum(g2.data_ptr(), kernel_dtype(g2.scalar_type()), n, c, ws.data_ptr<float>(), kernel_dtype(out_dtype),
                     out.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
        "bias gradient");
  return out;
}

// y = x W^T + b; backward: dx = g W, dW = g^T x (one matrix product each, as ATen's), db = column
// sums of g by the kernel.
struct LinearFn : torch::autograd::Function<LinearFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    ctx->save_for_backward({x, w});
    return at::linear(x, w, b);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t out = w.size(0), in = w.size(1);
    const at::Tensor g2 = grads[0].reshape({-1, out}).contiguous();
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = at::matmul(grads[0], w);
    if (ctx->needs_input_grad(1)) dw = g2.t().mm(x.reshape({-1, in}));
    if (ctx->needs_input_grad(2)) db = column_sums(g2, w.scalar_type());
    return {dx, dw, db};
  }
};

// LayerNorm over rows of 256-1024 columns (cuda/layernorm.cu): a warp per row forward; backward dx and
// the weight and bias gradients in one pass over g and x. Other widths and alignments: native_layer_norm
// forward; backward dx by ATen's kernel alone, dweight and dbias by one pass of the column kernel.
struct LayerNormFn : torch::autograd::Function<LayerNormFn> {
  static bool rows_kernel(const at::Tensor& a, const at::Tensor& w, const at::Tensor& b, int64_t n) {
    return g_kernels == LpKernels::all && cuda::layer_norm_rows_supported(n, a.data_ptr(), w.data_ptr()) &&
           cuda::layer_norm_rows_supported(n, b.data_ptr(), b.data_ptr());
  }
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            int64_t n, double eps) {
    at::Tensor y, mean, rstd;
    if (rows_kernel(x, w, b, n)) {
      const int64_t rows = x.numel() / n;
      std::vector<int64_t> stat_shape = x.sizes().vec();  // native_layer_norm's: [..., 1]
      stat_shape.back() = 1;
      y = at::empty_like(x, at::MemoryFormat::Contiguous);
      mean = at::empty(stat_shape, x.options().dtype(at::kFloat));
      rstd = at::empty(stat_shape, x.options().dtype(at::kFloat));
      check(cuda::layer_norm_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), kernel_dtype(x.scalar_type()), rows, n, eps,
                                     y.data_ptr(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                                     c10::cuda::getCurrentCUDAStream().stream()),
            "LayerNorm");
    } else {
      auto out = at::native_layer_norm(x, {n}, w, b, eps);
      y = std::get<0>(out);
      mean = std::get<1>(out);
      rstd = std::get<2>(out);
    }
    ctx->save_for_backward({x, w, b, mean, rstd});
    ctx->saved_data["n"] = n;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &b = saved[2], &mean = saved[3], &rstd = saved[4];
    const int64_t n = ctx->saved_data["n"].toInt();
    const at::Tensor g = grads[0].contiguous();
    const int64_t rows = x.numel() / n;
    at::Tensor dx, dw, db;
    if (rows_kernel(x, w, b, n) && cuda::layer_norm_rows_supported(n, g.data_ptr(), g.data_ptr()) &&
        mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat) {
      dx = at::empty_like(x, at::MemoryFormat::Contiguous);
      at::Tensor ws = at::empty({2 * cuda::layer_norm_backward_blocks(rows) * n}, g.options().dtype(at::kFloat));
      dw = at::empty({n}, w.options());
      db = at::empty({n}, b.options());
      check(cuda::layer_norm_backward(g.data_ptr(), x.data_ptr(), w.data_ptr(), kernel_dtype(x.scalar_type()),
                                      mean.contiguous().data_ptr<float>(), rstd.contiguous().data_ptr<float>(), rows, n,
                                      dx.data_ptr(), ws.data_ptr<float>(), kernel_dtype(w.scalar_type()), dw.data_ptr(),
                                      db.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
            "LayerNorm backward");
      return {ctx->needs_input_grad(0) ? dx : at::Tensor(), ctx->needs_input_grad(1) ? dw : at::Tensor(),
              ctx->needs_input_grad(2) ? db : at::Tensor(), at::Tensor(), at::Tensor()};
    }
    if (ctx->needs_input_grad(0))
      dx = std::get<0>(at::native_layer_norm_backward(g, x, {n}, mean, rstd, w, b, {true, false, false}));
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      if (cuda::colsum_supported(g.data_ptr(), n) && cuda::colsum_supported(x.data_ptr(), n) &&
          mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat) {
        at::Tensor ws = at::empty({2 * cuda::colsum_chunks(rows, n) * n}, g.options().dtype(at::kFloat));
        dw = at::empty({n}, w.options());
        db = at::empty({n}, b.options());
        check(cuda::layer_norm_weight_grads(g.data_ptr(), x.data_ptr(), kernel_dtype(x.scalar_type()),
                                            mean.contiguous().data_ptr<float>(), rstd.contiguous().data_ptr<float>(), rows, n,
                                            ws.data_ptr<float>(), kernel_dtype(w.scalar_type()), dw.data_ptr(), db.data_ptr(),
                                            c10::cuda::getCurrentCUDAStream().stream()),
              "LayerNorm weight gradients");
      } else {
        auto all = at::native_layer_norm_backward(g, x, {n}, mean, rstd, w, b, {false, true, true});
        dw = std::get<1>(all);
        db = std::get<2>(all);
      }
    }
    return {dx, dw, db, at::Tensor(), at::Tensor()};
  }
};

// The kernels' case: CUDA, gradients being recorded, bf16/fp16 activations with parameters of the same
// dtype and no autocast (which computes LayerNorm in float32 and casts the linear layers' inputs),
// contiguous input (the kernels read rows of consecutive values: a strided one, such as the ViT's
// ln_post on each sequence's class token, takes ATen's functions).
bool kernels_apply(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return g_kernels != LpKernels::none && at::GradMode::is_enabled() && x.is_cuda() && !compat::AutocastState::current().gpu &&
         low_precision(x.scalar_type()) && w.defined() && b.defined() && w.scalar_type() == x.scalar_type() &&
         b.scalar_type() == x.scalar_type() && x.is_contiguous() &&
         (x.requires_grad() || w.requires_grad() || b.requires_grad());
}

}  // namespace
#endif

at::Tensor lp_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
#ifdef CLIP_HAVE_CUDA_KERNELS
  if (kernels_apply(x, w, b)) return LinearFn::apply(x, w, b);
#endif
  return at::linear(x, w, b);
}

at::Tensor lp_layer_norm(const at::Tensor& x, int64_t n, const at::Tensor& w, const at::Tensor& b, double eps) {
#ifdef CLIP_HAVE_CUDA_KERNELS
  if (kernels_apply(x, w, b)) return LayerNormFn::apply(x, w, b, n, eps);
#endif
  return at::layer_norm(x, {n}, w, b, eps);
}

bool lp_kernels_built() {
#ifdef CLIP_HAVE_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

}  // namespace clip::detail
