// cn_clip <-> Hugging Face ChineseCLIPModel parameter names (the table of transformers'
// convert_chinese_clip_original_pytorch_to_hf.py): BERT names are shared under a different root,
// the ViT is renamed, projections are stored transposed (nn.Linear weights) and the fused
// attention in_proj is split into q/k/v.
#include <cstring>
#include <map>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"

namespace clip {

namespace {

bool starts(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Owned contiguous copy, so that converted dicts never alias the source's storage.
TensorData owned_copy(const TensorData& t) {
  TensorData c = contiguous(t);
  TensorData r = owned_tensor(c.dtype, c.shape);
  size_t n = size_t(c.numel()) * dtype_size(c.dtype);
  if (n) std::memcpy(const_cast<uint8_t*>(r.data), c.data, n);
  return r;
}

TensorData transpose2d(const TensorData& t, const std::string& key) {
  if (t.shape.size() != 2) throw ModelError("checkpoint tensor '" + key + "' should be 2-D, got " + t.shape_str());
  TensorData v = contiguous(t);
  std::swap(v.shape[0], v.shape[1]);
  std::swap(v.strides[0], v.strides[1]);
  return owned_copy(v);
}

// ViT sub-names inside one block: HF -> cn_clip.
const std::pair<const char*, const char*> kBlockNames[] = {
    {"layer_norm1.", "ln_1."},   {"layer_norm2.", "ln_2."},   {"mlp.fc1.", "mlp.c_fc."},
    {"mlp.fc2.", "mlp.c_proj."}, {"self_attn.out_proj.", "attn.out_proj."},
};
const std::pair<const char*, const char*> kVisionNames[] = {
    {"vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"},
    {"vision_model.embeddings.class_embedding", "visual.class_embedding"},
    {"vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"},
    {"vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"},
    {"vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"},
    {"vision_model.post_layernorm.weight", "visual.ln_post.weight"},
    {"vision_model.post_layernorm.bias", "visual.ln_post.bias"},
};

const char* kHfLayers = "vision_model.encoder.layers.";
const char* kOurBlocks = "visual.transformer.resblocks.";

// "<prefix>N.<rest>" -> N and rest; false if not of that form.
bool split_layer(const std::string& key, const std::string& prefix, std::string& n, std::string& rest) {
  if (!starts(key, prefix)) return false;
  size_t dot = key.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  n = key.substr(prefix.size(), dot - prefix.size());
  for (char c : n)
    if (c < '0' || c > '9') return false;
  rest = key.substr(dot + 1);
  return true;
}

}  // namespace

StateDict hf_to_cnclip(const StateDict& hf, std::vector<std::string>* dropped) {
  StateDict out;
  // q/k/v parts waiting to be concatenated, by target key.
  std::map<std::string, std::map<char, TensorData>> qkv;
  for (const auto& key : hf.keys) {
    const TensorData& t = hf.at(key);
    std::string n, rest;
    if (key == "text_model.embeddings.position_ids" || key == "text_model.embeddings.token_type_ids" ||
        key == "vision_model.embeddings.position_ids") {
      if (dropped) dropped->push_back(key);
    } else if (starts(key, "text_model.")) {
      out.add("bert." + key.substr(std::strlen("text_model.")), t);
    } else if (key == "text_projection.weight") {
      out.add("text_projection", transpose2d(t, key));
    } else if (key == "visual_projection.weight") {
      out.add("visual.proj", transpose2d(t, key));
    } else if (split_layer(key, kHfLayers, n, rest)) {
      std::string base = std::string(kOurBlocks) + n + ".";
      bool done = false;
      for (const auto& [h, o] : kBlockNames)
        if (starts(rest, h)) {
          out.add(base + o + rest.substr(std::strlen(h)), t);
          done = true;
          break;
        }
      for (const char* part : {"q", "k", "v"}) {
        if (done) break;
        std::string p = std::string("self_attn.") + part + "_proj.";
        if (starts(rest, p) && (rest.substr(p.size()) == "weight" || rest.substr(p.size()) == "bias")) {
          std::string target = base + "attn.in_proj_" + rest.substr(p.size());
          if (!qkv.count(target)) out.add(target, TensorData());  // placeholder keeps the key order
          if (qkv[target].count(part[0])) throw ModelError("Hugging Face checkpoint has '" + key + "' twice");
          qkv[target][part[0]] = t;
          done = true;
        }
      }
      if (!done) out.add(key, t);
    } else {
      bool done = false;
      for (const auto& [h, o] : kVisionNames)
        if (key == h) {
          out.add(o, t);
          done = true;
          break;
        }
      if (!done) out.add(key, t);  // logit_scale and anything unknown keep their names
    }
  }
  for (auto& [target, parts] : qkv) {
    for (char c : {'q', 'k', 'v'})
      if (!parts.count(c))
        throw ModelError(std::string("Hugging Face checkpoint lacks the ") + c + "_proj part of '" + target + "'");
    const TensorData& q = parts['q'];
    for (char c : {'k', 'v'})
      if (parts[c].shape != q.shape || parts[c].dtype != q.dtype)
        throw ModelError("Hugging Face checkpoint: q/k/v parts of '" + target + "' differ in shape or dtype");
    if (q.shape.empty()) throw ModelError("Hugging Face checkpoint: q_proj of '" + target + "' is a scalar");
    std::vector<int64_t> shape = q.shape;
    shape[0] *= 3;
    TensorData cat = owned_tensor(q.dtype, shape);
    size_t part_bytes = size_t(q.numel()) * dtype_size(q.dtype);
    uint8_t* dst = const_cast<uint8_t*>(cat.data);
    for (char c : {'q', 'k', 'v'}) {
      TensorData src = contiguous(parts[c]);
      if (part_bytes) std::memcpy(dst, src.data, part_bytes);
      dst += part_bytes;
    }
    out.tensors[target] = std::move(cat);
  }
  return out;
}

StateDict hf_to_cnclip(const StateDict& hf) { return hf_to_cnclip(hf, nullptr); }

StateDict cnclip_to_hf(const StateDict& ours) {
  StateDict out;
  for (const auto& key : ours.keys) {
    const TensorData& t = ours.at(key);
    std::string n, rest;
    if (starts(key, "bert.")) {
      out.add("text_model." + key.substr(5), owned_copy(t));
    } else if (key == "text_projection") {
      out.add("text_projection.weight", transpose2d(t, key));
    } else if (key == "visual.proj") {
      out.add("visual_projection.weight", transpose2d(t, key));
    } else if (key == "logit_scale") {
      out.add(key, owned_copy(t));
    } else if (split_layer(key, kOurBlocks, n, rest)) {
      std::string base = std::string(kHfLayers) + n + ".";
      bool done = false;
      for (const auto& [h, o] : kBlockNames)
        if (starts(rest, o)) {
          out.add(base + h + rest.substr(std::strlen(o)), owned_copy(t));
          done = true;
          break;
        }
      if (!done && (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias")) {
        if (t.shape.empty() || t.shape[0] % 3)
          throw ModelError("tensor '" + key + "' " + t.shape_str() + " cannot be split into q/k/v");
        TensorData c = contiguous(t);
        std::vector<int64_t> shape = c.shape;
        shape[0] /= 3;
        std::string suffix = rest == "attn.in_proj_weight" ? "weight" : "bias";
        size_t part_bytes = size_t(c.numel() / 3) * dtype_size(c.dtype);
        const char* names[] = {"q", "k", "v"};
        for (int i = 0; i < 3; ++i) {
          TensorData p = owned_tensor(c.dtype, shape);
          if (part_bytes) std::memcpy(const_cast<uint8_t*>(p.data), c.data + i * part_bytes, part_bytes);
          out.add(base + "self_attn." + names[i] + "_proj." + suffix, std::move(p));
        }
        done = true;
      }
      if (!done) throw ModelError("tensor '" + key + "' has no Hugging Face ChineseCLIP equivalent");
    } else {
      bool done = false;
      for (const auto& [h, o] : kVisionNames)
        if (key == o) {
          out.add(h, owned_copy(t));
          done = true;
          break;
        }
      if (!done) {
        if (starts(key, "visual."))
          throw ModelError("tensor '" + key + "' has no Hugging Face ChineseCLIP equivalent (transformers supports "
                           "only ViT vision towers, not ResNets)");
        out.add(key, owned_copy(t));
      }
    }
  }
  return out;
}

}  // namespace clip
