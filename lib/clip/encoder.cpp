#include "clip/encoder.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>

#include "clip/checkpoint.h"
#include "clip/convert.h"
#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/image.h"
#include "clip/log.h"
#include "clip/model.h"
#include "clip/tensor_torch.h"
#include "clip/tokenizer.h"

namespace clip {

struct Encoder::State {
  ClipModel model{nullptr};
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
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

Encoder::Encoder(const ModelOptions& mo, const RuntimeOptions& ro) : st_(std::make_unique<State>()) {
  context_length_ = mo.context_length;
  batch_size_ = ro.batch_size;
  checkpoint_path_ = mo.checkpoint;
  Checkpoint ck = load_checkpoint(mo.checkpoint);
  // Our own checkpoints record their config: use it for any tower not given explicitly.
  std::string vision = mo.vision_model, text = mo.text_model;
  if (ck.root && ck.root->kind == PyValue::Kind::dict) {
    if (PyPtr mc = ck.root->get("model_config"); mc && mc->kind == PyValue::Kind::string) {
      if (vision.empty()) vision = mc->s;
      if (text.empty()) text = mc->s;
    }
  }
  // Hugging Face folders: the config.json gives what shapes cannot (head counts).
  if (!ck.hf_config_json.empty() && (vision.empty() || text.empty())) {
    nlohmann::json hj = nlohmann::json::parse(ck.hf_config_json, nullptr, /*allow_exceptions=*/false);
    if (!hj.is_discarded() && hj.contains("vision_config") && hj.contains("text_config")) {
      const std::string cfg = model_config_json(model_config_from_hf(hj, path_basename(mo.checkpoint)));
      if (vision.empty()) vision = cfg;
      if (text.empty()) text = cfg;
    }
  }
  InferredConfig ic = resolve_config(ck.state_dict, vision, text);
  for (const auto& n : ic.notes) log_info("{}", n);
  if (ck.had_module_prefix) log_debug("stripped 'module.' from checkpoint keys");
  for (const auto& k : ck.dropped_keys) log_debug("ignored checkpoint key {}", k);
  st_->model = ClipModel(ic.config);
  load_weights(st_->model, ck.state_dict, /*strict=*/true);
  weights_hash_ = clip::weights_hash(st_->model);
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(find_vocab(mo.vocab, mo.checkpoint)));
  if (tokenizer_->vocab_size() > ic.config.text.vocab_size)
    throw ModelError("vocab " + tokenizer_->path() + " has " + std::to_string(tokenizer_->vocab_size()) +
                     " tokens but the text tower's embedding has " + std::to_string(ic.config.text.vocab_size) +
                     " rows; pass the vocab.txt the model was trained with (--vocab)");
  if (context_length_ > ic.config.text.max_position_embeddings)
    throw UsageError("--context-length " + std::to_string(context_length_) + " exceeds the text tower's " +
                     std::to_string(ic.config.text.max_position_embeddings) + " position embeddings");
  st_->device = parse_device(ro.device);
  st_->dtype = parse_precision(ro.precision, st_->device);
  st_->model->to(st_->device, st_->dtype);
  st_->model->eval();
  log_info("model {} ({} weights {}), {} on {}", ic.config.name(), ck.format, weights_hash_,
           ro.precision, st_->device.str());
}

Encoder::~Encoder() = default;

ClipModel& Encoder::model() { return st_->model; }
const ModelConfig& Encoder::config() const { return st_->model->config(); }
int Encoder::resolution() const { return config().vision.image_resolution; }
int Encoder::embed_dim() const { return config().embed_dim(); }

at::Tensor Encoder::encode_ids(const at::Tensor& ids) {
  at::NoGradGuard ng;
  auto f = st_->model->encode_text(ids.to(st_->device));
  f = f.to(at::kFloat);
  f = f / f.norm(2, -1, true);
  return f.to(at::kCPU).contiguous();
}

at::Tensor Encoder::encode_texts(const std::vector<std::string>& texts, bool preprocess) {
  const int64_t n = static_cast<int64_t>(texts.size());
  auto ids = at::zeros({n, context_length_}, at::kLong);
  int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    tokenizer_->encode_into(preprocess ? preprocess_text(texts[i]) : texts[i], context_length_, p + i * context_length_);
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < n; s += batch_size_) out.push_back(encode_ids(ids.slice(0, s, std::min(n, s + batch_size_))));
  if (out.empty()) return at::empty({0, embed_dim()}, at::kFloat);
  return at::cat(out, 0);
}

at::Tensor Encoder::encode_pixels(const at::Tensor& pixels) {
  at::NoGradGuard ng;
  auto f = st_->model->encode_image(pixels.to(st_->device, st_->dtype));
  f = f.to(at::kFloat);
  f = f / f.norm(2, -1, true);
  return f.to(at::kCPU).contiguous();
}

void Encoder::preprocess_image(const uint8_t* data, size_t n, float* out) const {
  Image im = decode_image(data, n);
  preprocess_eval(im, resolution(), out);
}

nlohmann::json Encoder::preprocess_meta() const {
  return {
      {"model", config().name()},
      {"resolution", resolution()},
      {"mean", {kClipMean[0], kClipMean[1], kClipMean[2]}},
      {"std", {kClipStd[0], kClipStd[1], kClipStd[2]}},
      {"interpolation", "bicubic (Pillow, squash, resize before RGB)"},
      {"context_length", context_length_},
      {"vocab_sha256", tokenizer_->vocab_sha256()},
  };
}

}  // namespace clip
