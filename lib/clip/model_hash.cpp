// weights_hash(): a short SHA-256 over the names, shapes and float32 bytes of a model's weights,
// stored in feature stores so that features of different weights are never mixed silently.
#include <ATen/ATen.h>

#include "clip/model.h"
#include "clip/sha256.h"

namespace clip {

std::string weights_hash(ClipModel& model) {
  Sha256 h;
  for (const auto& [name, t] : model_state(model)) {
    h.update(name.data(), name.size());
    for (int64_t s : t.sizes()) h.update(&s, sizeof s);
    at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
    h.update(c.data_ptr(), static_cast<size_t>(c.numel()) * sizeof(float));
  }
  return h.hex().substr(0, 16);
}

}  // namespace clip
