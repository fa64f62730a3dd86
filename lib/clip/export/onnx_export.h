// ONNX graphs of the two encoders, written straight from the model's weights (cn_clip names) and
// config with ONNX's own protobuf definitions (opset 17, IR 8).
//
// Text graph:  input `text`  [N, context_length] int64 (0 = padding)  -> `unnorm_text_features`  [N, E] float32
// Image graph: input `image` [N, 3, R, R] float32 (normalised pixels) -> `unnorm_image_features` [N, E] float32
// N is a dynamic dimension ("batch"). Outputs are the features before L2 normalisation, as the
// original's exported graphs give them.
//
// fp16: weights and compute in float16 with float32 inputs/outputs (Cast nodes at the edges);
// LayerNorm and softmax run in float32 (Casts around them), BatchNorms are folded into the convs
// in float32 before rounding.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "clip/model/config.h"

namespace clip {

class ClipModel;

struct OnnxExportOptions {
  bool fp16 = false;
  int context_length = 52;
  // Initializers of at least this many bytes go to an external data file beside the model
  // ("<model file>.extra_file"), as the ONNX external-data spec describes. < 0: automatic (only
  // when the weights would pass protobuf's 2 GB limit; then every tensor of >= 1 KiB).
  int64_t external_data_threshold = -1;
  std::map<std::string, std::string> metadata;  // metadata_props (preprocessing, source, ...)
};

struct OnnxExportResult {
  std::string model_path;
  std::string external_data_path;  // empty when every weight is inside the model file
  int64_t initializers = 0, external_tensors = 0, nodes = 0;
};

enum class OnnxTower { text, image };

// Builds and writes one tower's graph to `path` (atomically). Throws ModelError for an
// unsupported architecture detail (e.g. an unknown activation), IoError for write failures.
OnnxExportResult export_onnx(ClipModel& model, OnnxTower tower, const std::string& path, const OnnxExportOptions& opt);

// The original's file names: PREFIX.txt.fp32.onnx, PREFIX.img.fp16.onnx, ...
std::string onnx_file_name(const std::string& prefix, OnnxTower tower, bool fp16);

// ONNX's C++ checker (full check with shape inference) on a written model file; throws ModelError
// with the checker's message.
void check_onnx_file(const std::string& path);

}  // namespace clip
