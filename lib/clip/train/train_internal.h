// Helpers shared by the train_*.cpp files (not a public interface).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "clip/io/pyobj.h"
#include "clip/model/torch_compat.h"
#include "clip/train/train.h"

namespace clip::detail {

// A tensor owning a copy of the stored bytes (any strides, any supported dtype): safe to update in
// place even when the bytes are a read-only file mapping.
at::Tensor from_tensor_data(const TensorData& d);
std::string shape_str(const at::Tensor& t);

using AutocastScope = compat::Autocast;

// train_step after the learning rate is set: zero_grad, forward, loss, backward, optimizer step,
// clamp (what StepGraph captures).
StepStats step_body(ClipModel& model, AdamW& optimizer, const std::vector<TrainBatch>& batches,
                    const StepOptions& options);

// The run folder of a --resume argument: the folder itself, or <run> for <run>/checkpoints/x.pt.
std::string resume_run_dir(const std::string& resume);

// sqrt(sum of squared gradient norms), in double.
double grad_global_l2(const std::vector<at::Tensor>& params);

}  // namespace clip::detail
