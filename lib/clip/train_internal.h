// Helpers shared by the train_*.cpp files (not a public interface).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "clip/pyobj.h"

namespace clip::detail {

// A CPU, contiguous copy of `t` wrapped as checkpoint tensor data (the copy owns the bytes).
TensorData to_tensor_data(const at::Tensor& t);
// A tensor owning a copy of the stored bytes (any strides, any supported dtype).
at::Tensor from_tensor_data(const TensorData& d);
std::string shape_str(const at::Tensor& t);

// bf16 autocast for the scope (CPU or CUDA by `device`), restoring the previous state after.
class AutocastScope {
 public:
  AutocastScope(bool on, const at::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool on_, cuda_, prev_ = false;
};

// sqrt(sum of squared gradient norms), in double.
double grad_global_l2(const std::vector<at::Tensor>& params);

}  // namespace clip::detail
