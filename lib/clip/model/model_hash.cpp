// weights_hash: a short fingerprint of a model's weights for feature stores and exports.
#include <ATen/ATen.h>

#include "clip/model/model.h"
#include "clip/base/sha256.h"

namespace clip {

std::string weights_hash(ClipModel& model) {
  // Per tensor, in cn_clip's state order: name, shape, then the values as little-endian float32
  // (integer buffers as int64), so the hash does not depend on the device or the model's dtype
  // beyond the values themselves.
  Sha256 h;
  for (auto& [name, t] : model_state(model)) {
    h.update(name);
    std::string shape = "[";
    for (int64_t i = 0; i < t.dim(); ++i) shape += (i ? "," : "") + std::to_string(t.size(i));
    h.update(shape + "]");
    at::Tensor c = t.detach().to(at::kCPU, at::isFloatingType(t.scalar_type()) ? at::kFloat : at::kLong).contiguous();
    h.update(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return h.hex().substr(0, 16);
}

}  // namespace clip
