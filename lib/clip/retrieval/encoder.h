// A loaded model ready to encode: checkpoint + config + tokenizer + device/precision, with the
// preprocessing that belongs to it. Shared by clip-index, clip-query, clip-serve, clip-export and
// clip-finetune's validation.
#pragma once
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "clip/model/config.h"
#include "clip/base/runtime.h"
#include "clip/image/image.h"
#include "clip/model/loader.h"
#include "clip/model/tensor_torch.h"

namespace clip {

class Tokenizer;
class ClipModel;

// Seconds of the steps that bring a CUDA encoder to its device, on the thread that does them
// (overlapping the caller's work; load_wait_seconds is what the caller waited of them).
struct DevicePhases {
  double init_s = 0;         // CUDA's start: context, allocator, cuBLAS, a first matrix product
  double upload_s = 0;       // the weights to the device and the normalisation table
  double warm_images_s = 0;  // the warm-up's image batch (with the squash for --decode device)
  double warm_texts_s = 0;   // the warm-up's text batch at the context length
};

class Encoder {
 public:
  // Loads the checkpoint, resolves the config (explicit names/JSON or inferred, logging what was
  // assumed), finds the vocab, moves the model to the device and precision, eval mode. Only the
  // towers of model.towers are built; float32 weights on the CPU are used in place from the
  // mapped checkpoint. Encoding throws IoError when the checkpoint file changed under its map.
  // `image` chooses how images are decoded for the model (--decode; exact by default).
  // hash_in_background: start_weights_hash as soon as the checkpoint is mapped, while the model is
  // built and loaded (a tool that will write a store).
  // On CUDA the constructor returns before the weights are on the card: CUDA's start, then (when
  // warm_batch > 0) one batch of warm_batch through each loaded tower of a stand-in model, run while
  // the model is built here (CUDA's lazy loading of kernels and the libraries' set-up, which the
  // first real batch paid before), and the weights' upload, run on a thread of its own, which every
  // member that needs the device waits for; an error there (no device, out of memory) is thrown by
  // the first such member. Elsewhere warm_batch does nothing.
  Encoder(const ModelOptions& model, const RuntimeOptions& runtime, const ImageOptions& image = {},
          bool hash_in_background = false, int warm_batch = 0);
  // An encoder over a model that lives elsewhere (the trainer's, for validation): shares its weights
  // on their device and dtype, with bf16 autocast when `amp`; no checkpoint, no weights hash.
  Encoder(ClipModel model, std::shared_ptr<const Tokenizer> tokenizer, int context_length, int batch_size, bool amp);
  ~Encoder();
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  // Texts -> L2-normalised features [N, E] float32 on the CPU. `preprocess` applies cn_clip's
  // dataset preprocessing (lower-case, curly quotes) before tokenising, as extract_features does.
  at::Tensor encode_texts(const std::vector<std::string>& texts, bool preprocess = true);
  // Texts -> token ids [N, context_length] int64 (0 = padding), tokenised on all intra-op threads.
  at::Tensor tokenize(const std::vector<std::string>& texts, bool preprocess = true) const;
  // Token ids [N, context_length] int64 -> L2-normalised features [N, E] float32 CPU.
  at::Tensor encode_ids(const at::Tensor& ids);
  // The overlapped path of encode_texts (indexing.h): token ids [N, L] int64 on the CPU (L at most
  // the context length; fewer columns when the padding is trimmed) -> a host tensor ready for the
  // device (on CUDA: a page-locked copy; on the CPU: `ids` itself), then -> L2-normalised
  // features [N, E] float32 left on the model's device, nothing waited for (fetch_features).
  // encode_ids is encode_ids_async followed by features_to_cpu, bit for bit.
  at::Tensor stage_ids(const at::Tensor& ids) const;
  at::Tensor encode_ids_async(const at::Tensor& ids);
  // Preprocessed pixels [N, 3, R, R] float32 (any device) -> L2-normalised features [N, E] float32 CPU.
  at::Tensor encode_pixels(const at::Tensor& pixels);
  // Encoded image file bytes -> normalised CHW floats (3*R*R) with this model's eval transform,
  // decoded as image_options().decode says.
  void preprocess_image(const uint8_t* data, size_t n, float* out) const;
  // The same transform up to its 8-bit RGB result, planar (3*R*R bytes, preprocess_eval_u8): what
  // encode_images' decode workers write; the model's device then normalises (normalize_pixels).
  void preprocess_image_u8(const uint8_t* data, size_t n, uint8_t* out) const;
  // 8-bit pixels [N, 3, R, R] uint8 (any device) -> the float32 pixels preprocess_image writes for
  // them, bit for bit, on the same device (a lookup in ToTensor + Normalize's table).
  at::Tensor normalize_pixels(const at::Tensor& u8) const;
  const ImageOptions& image_options() const { return image_; }

  // The overlapped path of encode_images: pixels [N, 3, R, R] on the CPU, either float32
  // (preprocess_image) or uint8 (preprocess_image_u8) -> a host tensor ready for the device (on
  // CUDA: page-locked; float32 is converted to the model's dtype, uint8 stays 8-bit, a quarter of
  // the bytes; on the CPU: `pixels` itself), then -> L2-normalised features [N, E] float32 left on
  // the model's device. uint8 pixels are normalised there (normalize_pixels) and then cast to the
  // model's dtype: the same features as from the float32 pixels. The upload is asynchronous
  // (non_blocking from pinned memory) and nothing waits for the forward pass.
  at::Tensor stage_pixels(const at::Tensor& pixels) const;
  at::Tensor encode_pixels_async(const at::Tensor& staged);
  // Starts copying features of an *_async call to the host without waiting (HostCopy); then
  // features_to_cpu(copy) waits for that copy only and checks the mapped checkpoint is intact, as
  // encode_pixels does. features_to_cpu(f) does both at once (waiting for all queued work).
  HostCopy fetch_features(const at::Tensor& f) const;
  at::Tensor features_to_cpu(HostCopy& copy) const;
  at::Tensor features_to_cpu(const at::Tensor& f) const;
  bool on_cuda() const;
  at::Device device() const;

  int resolution() const;
  int context_length() const { return context_length_; }
  int embed_dim() const;
  int batch_size() const { return batch_size_; }
  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& checkpoint_path() const { return checkpoint_path_; }
  // weights_hash of the whole checkpoint (both towers, whatever was loaded), computed on first use,
  // or taken from start_weights_hash's thread (waiting for it; its error is rethrown here).
  // Thread-safe.
  const std::string& weights_hash() const;
  // Starts computing weights_hash() on a background thread so that it overlaps other work (a
  // tool that will write a store calls it before encoding). Once; nothing to do when the hash is
  // known or there is no checkpoint. The destructor waits for the thread.
  void start_weights_hash() const;
  // Seconds the hash took to compute (0 until it is known), wherever it ran.
  double weights_hash_seconds() const;
  // Whether the hash came from the digest cache (base/digest_cache.h: the same checkpoint files,
  // unchanged since a run of this version computed it) instead of reading the weights.
  bool weights_hash_cached() const;
  // Seconds callers were blocked waiting for the model to reach the device (CUDA).
  double load_wait_seconds() const;
  // Where the device thread's time went (CUDA; zeros elsewhere). Waits for that thread.
  DevicePhases device_phases() const;
  Towers towers() const;
  // Settings a consumer needs to reproduce the inputs: resolution, mean/std, interpolation,
  // context length, vocab sha256, model name; stored in feature stores and exports.
  nlohmann::json preprocess_meta() const;
  ClipModel& model();

 private:
  struct State;
  std::string compute_weights_hash() const;
  void ready() const;  // waits for the model on its device (rethrowing that thread's error)
  std::unique_ptr<State> st_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::string checkpoint_path_;
  mutable std::string weights_hash_;
  int context_length_ = 52;
  int batch_size_ = 64;
  ImageOptions image_;
};

}  // namespace clip
