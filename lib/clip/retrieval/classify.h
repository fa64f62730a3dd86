// Zero-shot classification with cn_clip's protocol (cn_clip/eval/zeroshot_evaluation.py): each class's
// text feature is the mean of its L2-normalised template features (every template filled with the
// class name, cn_clip's text preprocessing applied), normalised again; an image's logits are
// 100 x the cosine to every class, turned into probabilities by a softmax.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "clip/base/ids.h"

namespace clip {

class Encoder;

// cn_clip's 80 Chinese ImageNet templates (zeroshot_templates.h), "{}" = the class name.
std::vector<std::string> cnclip_templates();
// The template with every "{}" replaced by the label; a template without "{}" is a UsageError.
std::string fill_template(const std::string& tmpl, const std::string& label);

// Class features [C, E], float32, unit norm: mean of the normalised template features, normalised.
at::Tensor class_features(Encoder& enc, const std::vector<std::string>& labels, const std::vector<std::string>& templates);

// Softmax(100 x image_features @ classes^T) and, per image, its k most probable classes
// (class index, probability), most probable first.
std::vector<std::vector<std::pair<int, float>>> classify(const at::Tensor& image_features, const at::Tensor& classes, int k);

// Labels file: one class name per line (UTF-8; blank lines skipped; surrounding spaces trimmed).
// UsageError for an empty file or a repeated label.
std::vector<std::string> read_labels(const std::string& path);

// Ground truth: "image_id<TAB>label" or "image_id,label" lines, or JSONL {"image_id", "label"}.
// Integer ids stay integers; anything else is a string id (a photo path, base/ids.h).
std::vector<std::pair<int64_t, std::string>> read_class_ground_truth(const std::string& path, IdNames* names);

}  // namespace clip
