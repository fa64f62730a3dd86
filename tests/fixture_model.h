// Tensors and model configs of the reference fixture (../shared/fixtures/cnclip-tiny) shared by the
// model and training tests. Failures throw, which Catch reports as a failed test.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>

#include "clip/model/config.h"
#include "util.h"

namespace testutil {

// cn_clip's preprocessed pixels of one fixture image: [3, 224, 224] float32.
inline at::Tensor fixture_pixels(int64_t image_id) {
  const std::string path = fixture("expected/pixels/" + std::to_string(image_id) + ".f32");
  std::ifstream f(path, std::ios::binary);
  auto t = at::empty({3, 224, 224}, at::kFloat);
  f.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * 4);
  if (!f.good() || f.gcount() != t.numel() * 4) throw std::runtime_error("cannot read " + path);
  return t;
}

// The fixture's towers: "vit" (ViT-Tiny-P32) or "rn" (RN-Tiny), each with RBT-Tiny-H64-L2.
inline clip::ModelConfig fixture_config(const std::string& kind) {
  clip::ModelConfig c;
  c.vision = clip::vision_config(fixture(kind == "vit" ? "configs/ViT-Tiny-P32.json" : "configs/RN-Tiny.json"));
  c.text = clip::text_config(fixture("configs/RBT-Tiny-H64-L2.json"));
  return c;
}

}  // namespace testutil
