// weights_hash: a short fingerprint of a model's weights for feature stores and exports.
#include <ATen/ATen.h>

#include "clip/base/error.h"
#include "clip/base/sha256.h"
#include "clip/model/model.h"
#include "clip/model/tensor_torch.h"

namespace clip {

namespace {

void hash_shape(Sha256& h, const std::string& name, const at::Tensor& t) {
  h.update(name);
  std::string shape = "[";
  for (int64_t i = 0; i < t.dim(); ++i) shape += (i ? "," : "") + std::to_string(t.size(i));
  h.update(shape + "]");
}

}  // namespace

std::string weights_hash(ClipModel& model) {
  // Per tensor, in cn_clip's state order: name, shape, then the values as little-endian float32
  // (integer buffers as int64), so the hash does not depend on the device or the model's dtype
  // beyond the values themselves.
  Sha256 h;
  for (auto& [name, t] : model_state(model)) {
    hash_shape(h, name, t);
    at::Tensor c = t.detach().to(at::kCPU, at::isFloatingType(t.scalar_type()) ? at::kFloat : at::kLong).contiguous();
    h.update(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return h.hex().substr(0, 16);
}

std::string weights_hash(const ModelConfig& cfg, const StateDict& sd) {
  ParamFillScope meta(ParamFill::meta);
  ClipModel shapes(cfg);  // names, shapes and dtypes only
  Sha256 h;
  for (auto& [name, t] : model_state(shapes)) {
    const TensorData& src = sd.at(name);
    if (src.shape != t.sizes().vec())
      throw ModelError("checkpoint key '" + name + "': expected shape " + std::string(c10::str(t.sizes())) + ", found " +
                       src.shape_str());
    hash_shape(h, name, t);
    // As load_weights converts into the float32 model, then as weights_hash(model) reads it.
    at::Tensor c = tensor_view(src).to(t.scalar_type()).to(at::isFloatingType(t.scalar_type()) ? at::kFloat : at::kLong).contiguous();
    h.update(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return h.hex().substr(0, 16);
}

}  // namespace clip
