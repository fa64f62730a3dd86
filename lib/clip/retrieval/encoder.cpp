#include "clip/retrieval/encoder.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <future>
#include <mutex>

#include "clip/model/config.h"
#include "clip/model/loader.h"
#include "clip/base/digest_cache.h"
#include "clip/base/error.h"
#include "clip/base/sha256.h"
#include "clip/base/fileio.h"
#include "clip/image/image.h"
#include "clip/base/log.h"
#include "clip/base/runtime.h"
#include "clip/base/timing.h"
#include "clip/model/model.h"
#include "clip/model/tensor_torch.h"
#include "clip/model/torch_compat.h"
#include "clip/text/tokenizer.h"

namespace clip {

struct Encoder::State {
  ClipModel model{nullptr};
  std::optional<Checkpoint> checkpoint;  // the mapped file the weights point into
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  bool amp = false;  // bf16 autocast around the forward (a wrapped training model)
  at::Tensor norm_table;  // [3, 256] float32 on `device`: ToTensor + Normalize of each byte value
  ModelConfig config;     // of the checkpoint (set before the model is built: the hash thread reads it)
  // weights_hash: Encoder::weights_hash_ is set under hash_mu; hash_job is start_weights_hash's
  // thread until its result is taken.
  std::atomic<double> hash_s{0};
  std::atomic<bool> hash_cached{false};  // weights_hash came from the digest cache
  std::mutex hash_mu;
  // CUDA: CUDA's start, the warm-up on a stand-in model, the weights' move to the device and the
  // normalisation table, on a thread started by the constructor, so that building the model, opening
  // the input and the first decodes overlap them; every member that touches the device waits for it
  // first (ready()).
  std::shared_future<void> device_job;
  std::atomic<double> ready_wait_s{0};
  // The device thread's phases in seconds (CUDA): each written by that thread before its job ends,
  // read after ready() (the future orders the two).
  DevicePhases phases;
  // CUDA: fulfilled by the constructor once the model is built; the device thread uploads it then.
  std::promise<void> built;
  std::future<std::string> hash_job;  // declared last: destroyed (waited for) first

  ~State() {
    // A constructor that failed never fulfilled `built`: dropping the promise ends the device thread's
    // wait (with broken_promise), which is then waited for before the state it uses goes.
    { std::promise<void> drop = std::move(built); }
    if (device_job.valid()) device_job.wait();
  }

  // The device thread's warm-up: one batch of `batch` through each tower of a stand-in model (the
  // same modules, their weights unfilled on the device: ClipModelImpl::allocate_on), so that CUDA's
  // lazy loading of kernels and the libraries' set-up happen while the real model is still being
  // built on the host, instead of after its upload or in the first real batch. Each whole tower runs
  // on a thread of its own, beside the halves of its first layer on threads of theirs
  // (ClipModelImpl::warm_up_parts): the kernels' first use overlaps across threads. Texts go through
  // at the context length (the longest-first order makes that the first batch's width); images as
  // 8-bit pixels normalised as real ones, with --decode device also one Flickr30k-sized image through
  // the device's squash. The values are meaningless and dropped.
  // `meanwhile` runs on the calling thread while the warm-up's threads work (the upload of the real
  // weights); they are joined before its error, if any, is rethrown.
  void warm_up(const ModelConfig& cfg, Towers towers, int batch, bool squash, int64_t context_length,
               const std::function<void()>& meanwhile) {
    ClipModel m{nullptr};
    {
      ParamFillScope fill(ParamFill::uninitialised);  // at::empty on the host: no page is touched
      m = ClipModel(cfg, towers);
    }
    m->allocate_on(device, dtype);
    m->eval();
    if (dtype != at::kFloat) m->set_low_precision_kernels(true);
    const auto t0 = SteadyClock::now();
    const bool images = towers != Towers::text, texts = towers != Towers::vision;
    std::vector<std::function<at::Tensor()>> jobs = m->warm_up_parts(images ? batch : 0, texts ? batch : 0, context_length);
    auto normalized_sum = [](const at::Tensor& f32) { return (f32 / f32.norm(2, -1, true)).sum(); };
    if (images) {
      jobs.push_back([&] {
        const int64_t r = cfg.vision.image_resolution;
        const auto u8 = at::TensorOptions(at::kByte).device(device);
        if (squash) squash_bicubic_u8({at::zeros({375, 500, 3}, u8)}, r, device);
        at::Tensor x = normalize_pixels_u8(at::zeros({batch, 3, r, r}, u8), norm_table).to(dtype);
        at::Tensor f = normalized_sum(m->encode_image(x).to(at::kFloat));
        f.item<float>();
        phases.warm_images_s = seconds_since(t0);
        return f;
      });
    }
    if (texts) {
      // Only the context length: warming every width a trimmed batch could have (then 8, 16, ..., 52)
      // cost more than the first batches of other widths then saved (clip-index on 20,000 texts: 1.90 s
      // against 1.73 s; docs/benchmarks.md).
      jobs.push_back([&] {
        at::Tensor ids = at::ones({batch, context_length}, at::TensorOptions(at::kLong).device(device));
        at::Tensor f = normalized_sum(m->encode_text(ids).to(at::kFloat));
        f.item<float>();
        phases.warm_texts_s = seconds_since(t0);
        return f;
      });
    }
    std::vector<std::future<void>> running;
    for (auto& job : jobs)
      running.push_back(std::async(std::launch::async, [&job] {
        at::NoGradGuard ng;  // per thread
        job().item<float>();
      }));
    std::exception_ptr err;
    try {
      meanwhile();
    } catch (...) {
      err = std::current_exception();
    }
    for (auto& r : running) r.wait();
    if (err) std::rethrow_exception(err);
    for (auto& r : running) r.get();  // the first error, once every thread is done with `m`
  }

  void to_device() {
    model->to(device, dtype);
    model->eval();
    // fp16/bf16 on a GPU: the fused forms (ClipModelImpl::set_low_precision_kernels), about 1.5x the
    // ViT-B-16 images/s (docs/benchmarks.md); the CPU and float32 keep cn_clip's operations.
    if (device.is_cuda() && dtype != at::kFloat) model->set_low_precision_kernels(true);
    if (device.is_cuda()) request_quick_exit();
    if (!norm_table.defined()) make_norm_table();
  }

  void make_norm_table() { norm_table = normalize_table_on(device); }
};

namespace {

at::ScalarType parse_precision(const std::string& p, const at::Device& dev) {
  if (p == "fp32") return at::kFloat;
  if (p == "bf16" || p == "amp") return at::kBFloat16;
  if (p == "fp16") {
    if (!dev.is_cuda()) throw UsageError("--precision fp16 needs --device cuda; on the CPU use bf16");
    return at::kHalf;
  }
  throw UsageError("unknown --precision '" + p + "'");
}

}  // namespace

Encoder::Encoder(const ModelOptions& mo, const RuntimeOptions& ro, const ImageOptions& io, bool hash_in_background,
                 int warm_batch)
    : st_(std::make_unique<State>()), image_(io) {
  context_length_ = mo.context_length;
  batch_size_ = ro.batch_size;
  checkpoint_path_ = mo.checkpoint;
  st_->device = parse_device(ro.device);
  st_->dtype = parse_precision(ro.precision, st_->device);
  // CUDA's start (the context, the allocator, cuBLAS and a matrix product's kernels) on a thread from
  // here, while the checkpoint is mapped and the model built; the upload follows it. With a warm-up
  // the device thread starts CUDA itself and its warm-up threads set up cuBLAS, at once.
  std::shared_future<double> start;  // its seconds
  if (st_->device.is_cuda() && warm_batch <= 0)
    start = std::async(std::launch::async, [d = st_->device] {
                        // float32: every card multiplies it (the cuBLAS handle serves every dtype)
                        const auto t0 = SteadyClock::now();
                        const at::Tensor a = at::ones({64, 64}, at::TensorOptions(at::kFloat).device(d));
                        at::mm(a, a).sum().item<float>();
                        return seconds_since(t0);
                      }).share();
  ModelSource src = resolve_model(mo);
  // The weights hash starts as soon as the checkpoint is mapped, while the model is built from it.
  st_->config = src.config;
  st_->checkpoint = src.checkpoint;  // shares the mapped files and tensors
  if (hash_in_background) start_weights_hash();
  if (st_->device.is_cuda()) {
    // The device thread, from CUDA's start on: the warm-up on a stand-in model while the model is
    // built here, then the upload once it is.
    std::shared_future<void> built = st_->built.get_future().share();
    const bool squash = io.decode == DecodeMode::device;
    st_->device_job = std::async(std::launch::async, [s = st_.get(), start, built, cfg = src.config, towers = mo.towers,
                                                      warm_batch, squash, ctx = context_length_] {
                        auto upload = [s, built] {
                          built.get();
                          const auto t0 = SteadyClock::now();
                          s->to_device();
                          s->phases.upload_s = seconds_since(t0);
                        };
                        if (warm_batch <= 0) {
                          s->phases.init_s = start.get();
                          upload();
                          return;
                        }
                        // The warm-up's threads start right after CUDA (the context, prestarted by the
                        // tool where it could: cli/early_start.h); the weights are uploaded beside them.
                        const auto t0 = SteadyClock::now();
                        s->make_norm_table();
                        s->phases.init_s = seconds_since(t0);
                        s->warm_up(cfg, towers, warm_batch, squash, ctx, upload);
                      }).share();
  }
  st_->model = build_model(src, mo.towers, WeightUse::share);
  if (!src.checkpoint) weights_hash_ = clip::weights_hash(st_->model);
  src.checkpoint.reset();
  tokenizer_ = std::make_shared<const Tokenizer>(Tokenizer::load(src.vocab_path));
  log_debug("vocab {} loaded", src.vocab_path);
  check_vocab_fits(*tokenizer_, src.config.text);
  if (st_->device.is_cuda()) st_->built.set_value();
  else st_->to_device();
  const Towers t = mo.towers;
  log_info("model {} ({}{}), {} on {}", src.config.name(), st_->checkpoint ? st_->checkpoint->format : "no checkpoint",
           t == Towers::both ? "" : t == Towers::text ? ", text tower only" : ", vision tower only", ro.precision,
           st_->device.str());
}

Encoder::Encoder(ClipModel model, std::shared_ptr<const Tokenizer> tokenizer, int context_length, int batch_size,
                 bool amp)
    : st_(std::make_unique<State>()), tokenizer_(std::move(tokenizer)), context_length_(context_length),
      batch_size_(batch_size) {
  st_->model = std::move(model);
  for (const auto& p : st_->model->parameters()) {
    st_->device = p.device();
    break;
  }
  st_->amp = amp;
  st_->make_norm_table();
}

void Encoder::ready() const {
  if (!st_->device_job.valid()) return;
  const auto t0 = SteadyClock::now();
  std::shared_future<void> job = st_->device_job;  // a copy per caller (clip-serve's threads)
  job.get();                                      // rethrows the thread's error (every caller sees it)
  st_->ready_wait_s = st_->ready_wait_s + seconds_since(t0);
}

double Encoder::load_wait_seconds() const { return st_->ready_wait_s; }

DevicePhases Encoder::device_phases() const {
  ready();
  return st_->phases;
}

Encoder::~Encoder() {
  // The device thread uses this object's state: let it finish (its error is dropped here).
  if (st_->device_job.valid()) st_->device_job.wait();
  // The hash thread reads the checkpoint this object owns: let it finish (its error, if any, is
  // dropped: nobody asked for the hash).
  std::lock_guard<std::mutex> lk(st_->hash_mu);
  if (st_->hash_job.valid()) st_->hash_job.wait();
}

ClipModel& Encoder::model() {
  ready();
  return st_->model;
}
Towers Encoder::towers() const { return st_->model->towers(); }

// Reads only what no other member function changes (the config, the mapped checkpoint), so it may
// run on start_weights_hash's thread while this encoder encodes.
std::string Encoder::compute_weights_hash() const {
  const auto t0 = SteadyClock::now();
  std::string h;
  if (st_->checkpoint) {
    // From the checkpoint's stored values: the same digest as the float32 model with both towers
    // right after loading, whatever towers, device and precision this encoder uses. Kept in the
    // digest cache (digest_cache.h) under the mapped files' identities, this version and the config.
    std::vector<FileIdentity> files;
    bool known = true;
    for (const auto& m : st_->checkpoint->maps) {
      if (!m) continue;
      FileIdentity id;
      known = m->identity(id) && known;
      files.push_back(id);
    }
    const std::string config = model_config_json(st_->config);
    const DigestKey key(fmt::format("weights_hash/{} clip-cpp {} config {}", kWeightsHashScheme, CLIP_VERSION,
                                    sha256_hex(config.data(), config.size())),
                        files);
    std::optional<std::string> cached = known ? key.lookup() : std::nullopt;
    if (cached && cached->size() == 16) {
      st_->checkpoint->check_intact();  // the cached digest is the mapped weights' only while they are intact
      h = *cached;
      st_->hash_cached = true;
    } else {
      h = clip::weights_hash(st_->config, st_->checkpoint->state_dict);
      st_->checkpoint->check_intact();
      if (known) key.store(h);
    }
  } else {
    h = clip::weights_hash(st_->model);
  }
  st_->hash_s = seconds_since(t0);
  return h;
}

const std::string& Encoder::weights_hash() const {
  std::lock_guard<std::mutex> lk(st_->hash_mu);
  if (weights_hash_.empty()) {
    if (st_->hash_job.valid()) {
      std::future<std::string> job = std::move(st_->hash_job);
      weights_hash_ = job.get();  // rethrows the thread's error
    } else {
      weights_hash_ = compute_weights_hash();
    }
  }
  return weights_hash_;
}

void Encoder::start_weights_hash() const {
  std::lock_guard<std::mutex> lk(st_->hash_mu);
  if (!weights_hash_.empty() || st_->hash_job.valid() || !st_->checkpoint) return;
  st_->hash_job = std::async(std::launch::async, [this] { return compute_weights_hash(); });
}

double Encoder::weights_hash_seconds() const { return st_->hash_s; }
bool Encoder::weights_hash_cached() const { return st_->hash_cached; }
const ModelConfig& Encoder::config() const { return st_->model->config(); }
int Encoder::resolution() const { return config().vision.image_resolution; }
int Encoder::embed_dim() const { return config().embed_dim(); }

at::Tensor Encoder::encode_ids(const at::Tensor& ids) { return features_to_cpu(encode_ids_async(ids)); }

at::Tensor Encoder::stage_ids(const at::Tensor& ids) const {
  if (!st_->device.is_cuda()) return ids;
  ready();
  return stage_for_upload(ids, at::kLong);
}

at::Tensor Encoder::encode_ids_async(const at::Tensor& ids) {
  ready();
  at::NoGradGuard ng;
  // A text or two: one thread (a thread team costs more than it saves on so small a pass).
  const int small_threads = st_->device.is_cpu() && ids.dim() == 2 ? threads_for_positions(ids.size(0) * ids.size(1)) : 0;
  if (small_threads == 0) tune_malloc();  // a batch of some size: keep freed activation memory for the next
  ScopedThreads small(small_threads);
  compat::Autocast ac(st_->amp, st_->device);
  // Asynchronous only from page-locked memory (stage_ids); a pageable tensor is copied at once.
  auto f = st_->model->encode_text(ids.to(st_->device, /*non_blocking=*/ids.device().is_cpu() && ids.is_pinned()));
  f = f.to(at::kFloat);
  return f / f.norm(2, -1, true);
}

at::Tensor Encoder::tokenize(const std::vector<std::string>& texts, bool preprocess) const {
  const int64_t n = static_cast<int64_t>(texts.size());
  auto ids = at::zeros({n, context_length_}, at::kLong);
  int64_t* p = ids.data_ptr<int64_t>();
  // Each row depends on its text only (the tokenizer is immutable): the same ids on any thread count.
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      tokenizer_->encode_into(preprocess ? preprocess_text(texts[i]) : texts[i], context_length_, p + i * context_length_);
  });
  return ids;
}

at::Tensor Encoder::encode_texts(const std::vector<std::string>& texts, bool preprocess) {
  const int64_t n = static_cast<int64_t>(texts.size());
  at::Tensor ids = tokenize(texts, preprocess);
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < n; s += batch_size_) out.push_back(encode_ids(ids.slice(0, s, std::min(n, s + batch_size_))));
  if (out.empty()) return at::empty({0, embed_dim()}, at::kFloat);
  return at::cat(out, 0);
}

at::Tensor Encoder::encode_pixels(const at::Tensor& pixels) {
  ready();
  tune_malloc();
  at::NoGradGuard ng;
  compat::Autocast ac(st_->amp, st_->device);
  auto f = st_->model->encode_image(pixels.to(st_->device, st_->dtype));
  f = f.to(at::kFloat);
  f = f / f.norm(2, -1, true);
  f = f.to(at::kCPU).contiguous();
  if (st_->checkpoint) st_->checkpoint->check_intact();
  return f;
}

void Encoder::preprocess_image(const uint8_t* data, size_t n, float* out) const {
  preprocess_eval_bytes(data, n, resolution(), image_, out);
}

void Encoder::preprocess_image_u8(const uint8_t* data, size_t n, uint8_t* out) const {
  preprocess_eval_bytes_u8(data, n, resolution(), image_, out);
}

at::Tensor Encoder::normalize_pixels(const at::Tensor& u8) const {
  ready();
  return normalize_pixels_u8(u8, st_->norm_table);
}

bool Encoder::on_cuda() const { return st_->device.is_cuda(); }
at::Device Encoder::device() const { return st_->device; }

at::Tensor Encoder::stage_pixels(const at::Tensor& pixels) const {
  if (!st_->device.is_cuda()) return pixels;
  ready();
  // 8-bit pixels as they are; float32 in the model's dtype (fp16/bf16: half the bytes), the
  // rounding the device would apply.
  return stage_for_upload(pixels, pixels.scalar_type() == at::kByte ? at::kByte : st_->dtype);
}

at::Tensor Encoder::encode_pixels_async(const at::Tensor& staged) {
  ready();
  tune_malloc();
  at::NoGradGuard ng;
  compat::Autocast ac(st_->amp, st_->device);
  at::Tensor x;
  if (staged.scalar_type() == at::kByte) {
    // Normalised in float32 on the device, then cast: what the float32 path gives.
    x = normalize_pixels(staged.to(st_->device, /*non_blocking=*/true)).to(st_->dtype);
  } else {
    x = staged.to(st_->device, st_->dtype, /*non_blocking=*/true);
  }
  auto f = st_->model->encode_image(x);
  f = f.to(at::kFloat);
  return f / f.norm(2, -1, true);
}

HostCopy Encoder::fetch_features(const at::Tensor& f) const { return HostCopy(f); }

at::Tensor Encoder::features_to_cpu(HostCopy& copy) const {
  at::Tensor c = copy.get();
  if (st_->checkpoint) st_->checkpoint->check_intact();
  return c;
}

at::Tensor Encoder::features_to_cpu(const at::Tensor& f) const {
  at::Tensor c = f.to(at::kCPU).contiguous();
  if (st_->checkpoint) st_->checkpoint->check_intact();
  return c;
}

nlohmann::json Encoder::preprocess_meta() const {
  nlohmann::json m = {
      {"model", config().name()},
      {"resolution", resolution()},
      {"mean", {kClipMean[0], kClipMean[1], kClipMean[2]}},
      {"std", {kClipStd[0], kClipStd[1], kClipStd[2]}},
      {"interpolation", "bicubic (Pillow, squash, resize before RGB)"},
      {"context_length", context_length_},
      {"vocab_sha256", tokenizer_->vocab_sha256()},
  };
  // Recorded only when not the default, so that stores of the exact path keep their metadata as before.
  if (image_.decode != DecodeMode::exact) m["decode"] = decode_mode_name(image_.decode);
  if (image_.exif_transpose) m["exif_transpose"] = true;
  return m;
}

}  // namespace clip
