// StepGraph: the training step captured once as a CUDA graph and replayed (train.h).
#include <ATen/ATen.h>

#include <fmt/format.h>

#include <memory>
#include <optional>
#include <string>

#include "clip/base/log.h"
#include "clip/model/model.h"
#include "clip/train/dist.h"
#include "clip/train/train.h"
#include "clip/train/train_internal.h"

#if defined(CLIP_HAVE_CUDA_GRAPH) && TORCH_VERSION_MAJOR >= 2
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define CLIP_STEP_GRAPH 1
#endif

namespace clip {

std::string StepGraph::unsupported(ClipModel& model, const AdamW& optimizer, const std::vector<TrainBatch>& batches,
                                   const StepOptions& options) {
#ifndef CLIP_STEP_GRAPH
  (void)model, (void)optimizer, (void)batches, (void)options;
  return "this build's LibTorch has no CUDA graphs (CUDA builds of LibTorch 2.x)";
#else
  if (!model->logit_scale().is_cuda()) return "the model is not on a CUDA device";
  if (!optimizer.options().fused) return "the optimizer is not the fused one (--precision fp32)";
  if (batches.size() != 1) return "several batches per step (--accum-freq)";
  if (options.dist && options.dist->size() > 1) return "several processes";
  if (model->grad_checkpointing()) return "gradient checkpointing";
  if (options.compute_grad_norm) return "the gradient norm is read every step";
  if (!options.poison) return "the step's values are read back every step";
  return {};
#endif
}

#ifdef CLIP_STEP_GRAPH

struct StepGraph::Impl {
  int warmup = 2;
  int eager = 0;                // ordinary steps run on the side stream so far
  bool failed = false;          // a capture failed: ordinary steps from then on
  int64_t replays = 0;
  std::optional<c10::cuda::CUDAStream> side;
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor pixels, ids;       // the captured inputs
  at::Tensor pending;           // the captured step's StepStats::pending
};

StepGraph::StepGraph(int warmup) : impl_(std::make_unique<Impl>()) { impl_->warmup = warmup < 1 ? 1 : warmup; }
StepGraph::~StepGraph() = default;
bool StepGraph::captured() const { return impl_->graph != nullptr; }
int64_t StepGraph::replays() const { return impl_->replays; }

StepStats StepGraph::step(ClipModel& model, AdamW& optimizer, const TrainBatch& batch, const StepOptions& options) {
  Impl& g = *impl_;
  const bool same = g.pixels.defined() && batch.pixels.sizes() == g.pixels.sizes() &&
                    batch.pixels.scalar_type() == g.pixels.scalar_type() && batch.ids.sizes() == g.ids.sizes() &&
                    batch.ids.scalar_type() == g.ids.scalar_type();
  if (g.failed || (g.graph && !same)) return detail::step_body(model, optimizer, {batch}, options);
  if (!g.pixels.defined() || !same) {
    g.pixels = batch.pixels.clone();
    g.ids = batch.ids.clone();
  } else {
    g.pixels.copy_(batch.pixels, /*non_blocking=*/true);
    g.ids.copy_(batch.ids, /*non_blocking=*/true);
  }
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  if (g.graph) {
    g.graph->replay();
    ++g.replays;
    StepStats st;
    st.pending = g.pending.clone();  // the graph overwrites its output at the next launch
    return st;
  }
  // Warm-up and capture run on a side stream (a capture cannot use the default one), ordered after
  // and before the main stream's work by events.
  if (!g.side) g.side = c10::cuda::getStreamFromPool(false, main.device_index());
  at::cuda::CUDAEvent before;
  before.record(main);
  before.block(*g.side);
  StepStats st;
  bool capturing = false;
  {
    c10::cuda::CUDAStreamGuard guard(*g.side);
    const std::vector<TrainBatch> in{TrainBatch{g.pixels, g.ids}};
    if (g.eager < g.warmup) {
      st = detail::step_body(model, optimizer, in, options);
      ++g.eager;
    } else {
      capturing = true;
      auto graph = std::make_unique<at::cuda::CUDAGraph>();
      try {
        // Thread-local: the trainer's staging thread may allocate page-locked memory meanwhile.
        graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
        try {
          st = detail::step_body(model, optimizer, in, options);
        } catch (...) {
          try {
            graph->capture_end();
          } catch (...) {
          }
          throw;
        }
        graph->capture_end();
        g.pending = st.pending;
        g.graph = std::move(graph);
      } catch (const std::exception& e) {
        g.failed = true;
        log_warn("the training step could not be captured as a CUDA graph ({}); the steps go on without one",
                 std::string(e.what()).substr(0, 400));
      }
    }
  }
  at::cuda::CUDAEvent after;
  after.record(*g.side);
  after.block(main);
  if (!capturing) {
    // Made on the side stream, read on the main one later: a copy made here, after the wait.
    if (st.pending.defined()) st.pending = st.pending.clone();
    return st;
  }
  if (g.failed) return detail::step_body(model, optimizer, {batch}, options);  // nothing of the capture ran
  // The warm-up's cached blocks are not reused by the graph, whose memory is its own pool.
  c10::cuda::CUDACachingAllocator::emptyCache();
  g.graph->replay();  // the capture recorded the step without running it: this is the step
  ++g.replays;
  StepStats out;
  out.pending = g.pending.clone();
  return out;
}

#else

struct StepGraph::Impl {};
StepGraph::StepGraph(int) : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;
bool StepGraph::captured() const { return false; }
int64_t StepGraph::replays() const { return 0; }
StepStats StepGraph::step(ClipModel& model, AdamW& optimizer, const TrainBatch& batch, const StepOptions& options) {
  return detail::step_body(model, optimizer, {batch}, options);
}

#endif

}  // namespace clip
