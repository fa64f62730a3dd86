// ONNX graph construction for the ViT / ModifiedResNet image towers and the BERT text tower.
//
// Every reshape keeps the batch dimension symbolic (Reshape with 0 = "copy this dimension" or -1),
// so one graph serves any batch size. Linear layers are MatMul with the transposed weight + Add.
#include "clip/export/onnx_export.h"

#include <ATen/ATen.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/model/model.h"

namespace clip {

namespace {

constexpr int kOpset = 17;
constexpr int64_t kIrVersion = 8;
constexpr int64_t kProtobufLimit = int64_t(1800) << 20;  // margin below protobuf's 2 GiB

using Attr = onnx::AttributeProto;

Attr attr_i(const std::string& n, int64_t v) {
  Attr a;
  a.set_name(n);
  a.set_type(Attr::INT);
  a.set_i(v);
  return a;
}
Attr attr_f(const std::string& n, float v) {
  Attr a;
  a.set_name(n);
  a.set_type(Attr::FLOAT);
  a.set_f(v);
  return a;
}
Attr attr_ints(const std::string& n, const std::vector<int64_t>& v) {
  Attr a;
  a.set_name(n);
  a.set_type(Attr::INTS);
  for (auto x : v) a.add_ints(x);
  return a;
}

// Appends nodes and initializers to one graph; names are unique by construction.
class Builder {
 public:
  Builder(onnx::GraphProto* g, const std::map<std::string, at::Tensor>& weights, bool fp16)
      : g_(g), w_(weights), fp16_(fp16) {}

  // Element type of the compute path.
  int ct() const { return fp16_ ? onnx::TensorProto::FLOAT16 : onnx::TensorProto::FLOAT; }

  std::string node(const std::string& op, const std::vector<std::string>& in, const std::vector<Attr>& attrs = {}) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    const std::string out = op + "_" + std::to_string(g_->node_size());
    n->set_name("n" + std::to_string(g_->node_size()) + "_" + op);
    for (const auto& i : in) n->add_input(i);
    n->add_output(out);
    for (const auto& a : attrs) *n->add_attribute() = a;
    return out;
  }

  // An initializer from a tensor: floating tensors in the compute type unless keep_f32.
  std::string init(const std::string& name, at::Tensor t, bool keep_f32 = false) {
    t = t.detach().to(at::kCPU).contiguous();
    onnx::TensorProto* p = g_->add_initializer();
    p->set_name(name);
    for (auto d : t.sizes()) p->add_dims(d);
    if (t.is_floating_point()) {
      const bool half = fp16_ && !keep_f32;
      t = t.to(half ? at::kHalf : at::kFloat).contiguous();
      p->set_data_type(half ? onnx::TensorProto::FLOAT16 : onnx::TensorProto::FLOAT);
    } else {
      t = t.to(at::kLong).contiguous();
      p->set_data_type(onnx::TensorProto::INT64);
    }
    p->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), size_t(t.numel()) * t.element_size()));
    return name;
  }
  std::string weight(const std::string& key, bool keep_f32 = false) { return init(key, get(key), keep_f32); }
  at::Tensor get(const std::string& key) const {
    auto it = w_.find(key);
    if (it == w_.end()) throw ModelError("ONNX export: the model has no weight '" + key + "'");
    return it->second.detach().to(at::kCPU).to(at::kFloat);
  }
  bool has(const std::string& key) const { return w_.count(key) != 0; }
  std::string ints(const std::vector<int64_t>& v) {
    return init("const_i" + std::to_string(counter_++), at::tensor(v, at::kLong));
  }

  std::string cast(const std::string& x, int to) { return node("Cast", {x}, {attr_i("to", to)}); }
  std::string to_f32(const std::string& x) { return fp16_ ? cast(x, onnx::TensorProto::FLOAT) : x; }
  std::string to_ct(const std::string& x) { return fp16_ ? cast(x, ct()) : x; }

  // x @ W^T + b for nn.Linear weights [out, in].
  std::string linear(const std::string& x, const std::string& prefix, bool bias = true) {
    std::string y = node("MatMul", {x, init(prefix + ".weight.T", get(prefix + ".weight").t())});
    return bias ? node("Add", {y, weight(prefix + ".bias")}) : y;
  }
  std::string linear_raw(const std::string& x, const std::string& name, const at::Tensor& w_t, const at::Tensor& b) {
    std::string y = node("MatMul", {x, init(name + ".weight.T", w_t)});
    return node("Add", {y, init(name + ".bias", b)});
  }
  // LayerNorm over the last axis, computed in float32.
  std::string layer_norm(const std::string& x, const std::string& prefix, float eps) {
    std::string y = node("LayerNormalization", {to_f32(x), weight(prefix + ".weight", true), weight(prefix + ".bias", true)},
                         {attr_i("axis", -1), attr_f("epsilon", eps)});
    return to_ct(y);
  }
  // softmax(scores + mask) over the last axis, in float32; mask may be empty.
  std::string softmax(const std::string& scores, const std::string& mask_f32) {
    std::string s = to_f32(scores);
    if (!mask_f32.empty()) s = node("Add", {s, mask_f32});
    return to_ct(node("Softmax", {s}, {attr_i("axis", -1)}));
  }
  // Multi-head attention core: q [N,Lq,W], k/v [N,L,W] -> [N,Lq,W] (q not yet scaled).
  std::string attention(const std::string& q, const std::string& k, const std::string& v, int64_t heads, int64_t width,
                        const std::string& mask_f32) {
    const int64_t d = width / heads;
    auto split = [&](const std::string& x) {
      return node("Transpose", {node("Reshape", {x, ints({0, 0, heads, d})})}, {attr_ints("perm", {0, 2, 1, 3})});
    };
    std::string qs = node("Mul", {split(q), init("const_scale" + std::to_string(counter_++),
                                                 at::full({}, 1.0 / std::sqrt(double(d)), at::kFloat))});
    std::string kt = node("Transpose", {node("Reshape", {k, ints({0, 0, heads, d})})}, {attr_ints("perm", {0, 2, 3, 1})});
    std::string p = softmax(node("MatMul", {qs, kt}), mask_f32);
    std::string ctx = node("MatMul", {p, split(v)});
    return node("Reshape", {node("Transpose", {ctx}, {attr_ints("perm", {0, 2, 1, 3})}), ints({0, 0, width})});
  }
  std::string conv(const std::string& x, const std::string& w, const std::string& b, int64_t k, int64_t stride, int64_t pad) {
    std::vector<std::string> in{x, w};
    if (!b.empty()) in.push_back(b);
    return node("Conv", in,
                {attr_ints("kernel_shape", {k, k}), attr_ints("strides", {stride, stride}),
                 attr_ints("pads", {pad, pad, pad, pad})});
  }
  // Conv (no bias) followed by eval-mode BatchNorm, folded into one Conv with bias (in float32).
  std::string conv_bn(const std::string& x, const std::string& conv_key, const std::string& bn, int64_t k, int64_t stride,
                      int64_t pad) {
    at::Tensor w = get(conv_key + ".weight").to(at::kDouble);
    at::Tensor gamma = get(bn + ".weight").to(at::kDouble), beta = get(bn + ".bias").to(at::kDouble);
    at::Tensor mean = get(bn + ".running_mean").to(at::kDouble), var = get(bn + ".running_var").to(at::kDouble);
    at::Tensor s = gamma / at::sqrt(var + 1e-5);
    at::Tensor wf = (w * s.view({-1, 1, 1, 1})).to(at::kFloat);
    at::Tensor bf = (beta - mean * s).to(at::kFloat);
    return conv(x, init(conv_key + ".weight+" + bn, wf), init(bn + ".folded_bias", bf), k, stride, pad);
  }
  std::string avg_pool(const std::string& x, int64_t k) {
    return node("AveragePool", {x}, {attr_ints("kernel_shape", {k, k}), attr_ints("strides", {k, k})});
  }
  std::string relu(const std::string& x) { return node("Relu", {x}); }
  std::string erf_gelu(const std::string& x) {  // 0.5 x (1 + erf(x / sqrt 2))
    std::string e = node("Erf", {node("Mul", {x, scalar_ct(float(1.0 / std::sqrt(2.0)))})});
    return node("Mul", {node("Mul", {x, scalar_ct(0.5f)}), node("Add", {e, scalar_ct(1.0f)})});
  }
  std::string scalar_ct(float v) { return init("const_c" + std::to_string(counter_++), at::full({}, v, at::kFloat)); }

 private:
  onnx::GraphProto* g_;
  const std::map<std::string, at::Tensor>& w_;
  bool fp16_;
  int counter_ = 0;
};

void add_value_info(onnx::ValueInfoProto* vi, const std::string& name, int elem, const std::vector<std::string>& sym,
                    const std::vector<int64_t>& dims) {
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem);
  auto* shape = tt->mutable_shape();
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* d = shape->add_dim();
    if (!sym[i].empty())
      d->set_dim_param(sym[i]);
    else
      d->set_dim_value(dims[i]);
  }
}

std::string activation(Builder& b, const std::string& act, const std::string& x) {
  if (act == "gelu") return b.erf_gelu(x);
  if (act == "relu") return b.relu(x);
  if (act == "swish") return b.node("Mul", {x, b.node("Sigmoid", {x})});
  throw ModelError("ONNX export: text_hidden_act '" + act + "' is not supported (gelu, relu, swish are)");
}

// BERT text tower: ids [N, L] -> [N, E].
std::string build_text(Builder& b, const ModelConfig& cfg, int64_t L) {
  const TextConfig& t = cfg.text;
  const int64_t H = t.hidden_size;
  if (L > t.max_position_embeddings)
    throw UsageError("--context-length " + std::to_string(L) + " exceeds the text tower's " +
                     std::to_string(t.max_position_embeddings) + " position embeddings");
  // Padding mask: (ids == 0) * -10000 as [N, 1, 1, L] in float32.
  std::string pad = b.node("Cast", {b.node("Equal", {"text", b.ints({0})})}, {attr_i("to", onnx::TensorProto::FLOAT)});
  std::string mask = b.node("Reshape", {b.node("Mul", {pad, b.init("mask_value", at::full({}, -10000.0f), true)}),
                                        b.ints({0, 1, 1, L})});
  // Embeddings: word + (position 0..L-1 + token type 0), the latter folded into one [L, H] table.
  at::Tensor pos = b.get("bert.embeddings.position_embeddings.weight").narrow(0, 0, L) +
                   b.get("bert.embeddings.token_type_embeddings.weight")[0];
  std::string x = b.node("Gather", {b.weight("bert.embeddings.word_embeddings.weight"), "text"}, {attr_i("axis", 0)});
  x = b.node("Add", {x, b.init("bert.embeddings.position_plus_type", pos)});
  x = b.layer_norm(x, "bert.embeddings.LayerNorm", 1e-12f);
  for (int i = 0; i < t.num_layers; ++i) {
    const std::string p = "bert.encoder.layer." + std::to_string(i) + ".";
    std::string q = b.linear(x, p + "attention.self.query"), k = b.linear(x, p + "attention.self.key"),
                v = b.linear(x, p + "attention.self.value");
    std::string ctx = b.attention(q, k, v, t.num_heads, H, mask);
    std::string a = b.layer_norm(b.node("Add", {b.linear(ctx, p + "attention.output.dense"), x}),
                                 p + "attention.output.LayerNorm", 1e-12f);
    std::string inter = activation(b, t.hidden_act, b.linear(a, p + "intermediate.dense"));
    x = b.layer_norm(b.node("Add", {b.linear(inter, p + "output.dense"), a}), p + "output.LayerNorm", 1e-12f);
  }
  std::string cls = b.node("Gather", {x, b.init("cls_index", at::zeros({}, at::kLong))}, {attr_i("axis", 1)});
  return b.node("MatMul", {cls, b.weight("text_projection")});
}

// VisualTransformer: pixels [N, 3, R, R] (compute type) -> [N, E].
std::string build_vit(Builder& b, const VisionConfig& v, const std::string& pixels) {
  const int64_t W = v.width;
  std::string x = b.conv(pixels, b.weight("visual.conv1.weight"), "", v.patch_size, v.patch_size, 0);
  x = b.node("Transpose", {b.node("Reshape", {x, b.ints({0, W, -1})})}, {attr_ints("perm", {0, 2, 1})});  // [N, g*g, W]
  // Class token broadcast to [N, 1, W]: Expand to (N from the input's shape, 1, W).
  std::string n = b.node("Slice", {b.node("Shape", {pixels}), b.ints({0}), b.ints({1})});
  std::string shape = b.node("Concat", {n, b.ints({1, W})}, {attr_i("axis", 0)});
  std::string cls = b.node("Expand", {b.init("visual.class_embedding.view", b.get("visual.class_embedding").view({1, 1, W})), shape});
  x = b.node("Add", {b.node("Concat", {cls, x}, {attr_i("axis", 1)}), b.weight("visual.positional_embedding")});
  x = b.layer_norm(x, "visual.ln_pre", 1e-5f);
  for (int i = 0; i < v.layers; ++i) {
    const std::string p = "visual.transformer.resblocks." + std::to_string(i) + ".";
    std::string h = b.layer_norm(x, p + "ln_1", 1e-5f);
    at::Tensor w = b.get(p + "attn.in_proj_weight"), bias = b.get(p + "attn.in_proj_bias");
    std::string q = b.linear_raw(h, p + "attn.q", w.narrow(0, 0, W).t(), bias.narrow(0, 0, W));
    std::string k = b.linear_raw(h, p + "attn.k", w.narrow(0, W, W).t(), bias.narrow(0, W, W));
    std::string vv = b.linear_raw(h, p + "attn.v", w.narrow(0, 2 * W, W).t(), bias.narrow(0, 2 * W, W));
    x = b.node("Add", {x, b.linear(b.attention(q, k, vv, v.heads(), W, ""), p + "attn.out_proj")});
    h = b.linear(b.layer_norm(x, p + "ln_2", 1e-5f), p + "mlp.c_fc");
    h = b.node("Mul", {h, b.node("Sigmoid", {b.node("Mul", {h, b.scalar_ct(1.702f)})})});  // QuickGELU
    x = b.node("Add", {x, b.linear(h, p + "mlp.c_proj")});
  }
  x = b.node("Gather", {x, b.init("cls_index", at::zeros({}, at::kLong))}, {attr_i("axis", 1)});
  x = b.layer_norm(x, "visual.ln_post", 1e-5f);
  return b.node("MatMul", {x, b.weight("visual.proj")});
}

// ModifiedResNet: pixels -> [N, E].
std::string build_resnet(Builder& b, const VisionConfig& v, const std::string& pixels) {
  std::string x = b.relu(b.conv_bn(pixels, "visual.conv1", "visual.bn1", 3, 2, 1));
  x = b.relu(b.conv_bn(x, "visual.conv2", "visual.bn2", 3, 1, 1));
  x = b.relu(b.conv_bn(x, "visual.conv3", "visual.bn3", 3, 1, 1));
  x = b.avg_pool(x, 2);
  for (int s = 0; s < 4; ++s) {
    for (int i = 0; i < v.resnet_layers.at(s); ++i) {
      const int64_t stride = (i == 0 && s > 0) ? 2 : 1;
      const std::string p = "visual.layer" + std::to_string(s + 1) + "." + std::to_string(i) + ".";
      std::string o = b.relu(b.conv_bn(x, p + "conv1", p + "bn1", 1, 1, 0));
      o = b.relu(b.conv_bn(o, p + "conv2", p + "bn2", 3, 1, 1));
      if (stride > 1) o = b.avg_pool(o, stride);
      o = b.conv_bn(o, p + "conv3", p + "bn3", 1, 1, 0);
      std::string id = x;
      if (b.has(p + "downsample.0.weight")) {
        id = stride > 1 ? b.avg_pool(x, stride) : x;
        id = b.conv_bn(id, p + "downsample.0", p + "downsample.1", 1, 1, 0);
      }
      x = b.relu(b.node("Add", {o, id}));
    }
  }
  // Attention pool: tokens = [mean, HW positions] + positional embedding; query = token 0 only.
  const int64_t C = int64_t(v.width) * 32;
  std::string t = b.node("Transpose", {b.node("Reshape", {x, b.ints({0, C, -1})})}, {attr_ints("perm", {0, 2, 1})});
  std::string mean = b.node("ReduceMean", {t}, {attr_ints("axes", {1}), attr_i("keepdims", 1)});
  t = b.node("Add", {b.node("Concat", {mean, t}, {attr_i("axis", 1)}), b.weight("visual.attnpool.positional_embedding")});
  std::string t0 = b.node("Slice", {t, b.ints({0}), b.ints({1}), b.ints({1})});
  std::string q = b.linear(t0, "visual.attnpool.q_proj");
  std::string k = b.linear(t, "visual.attnpool.k_proj"), vv = b.linear(t, "visual.attnpool.v_proj");
  std::string ctx = b.attention(q, k, vv, v.heads(), C, "");  // [N, 1, C]
  ctx = b.node("Reshape", {ctx, b.ints({0, C})});
  return b.linear(ctx, "visual.attnpool.c_proj");
}

// Moves initializers of >= threshold bytes into one external file beside the model.
int64_t externalize(onnx::ModelProto& m, const std::string& model_path, int64_t threshold, std::string* data_path) {
  const std::string dir = path_dirname(model_path);
  const std::string location = path_basename(model_path) + ".extra_file";
  *data_path = path_join(dir, location);
  AtomicFile f(*data_path);
  int64_t offset = 0, count = 0;
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    const std::string& raw = t.raw_data();
    if (int64_t(raw.size()) < threshold || raw.empty()) continue;
    const int64_t pad = (4096 - offset % 4096) % 4096;  // page-aligned, so readers can map the tensors
    if (pad) {
      f.write(std::string(size_t(pad), '\0'));
      offset += pad;
    }
    f.write(raw.data(), raw.size());
    auto add = [&](const std::string& k, const std::string& v) {
      auto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add("location", location);
    add("offset", std::to_string(offset));
    add("length", std::to_string(raw.size()));
    offset += int64_t(raw.size());
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    ++count;
  }
  if (count == 0) {
    data_path->clear();
    return 0;  // AtomicFile's destructor removes the unused temporary
  }
  f.commit();
  return count;
}

}  // namespace

std::string onnx_file_name(const std::string& prefix, OnnxTower tower, bool fp16) {
  return prefix + (tower == OnnxTower::text ? ".txt." : ".img.") + (fp16 ? "fp16" : "fp32") + ".onnx";
}

OnnxExportResult export_onnx(ClipModel& model, OnnxTower tower, const std::string& path, const OnnxExportOptions& opt) {
  const ModelConfig& cfg = model->config();
  std::map<std::string, at::Tensor> weights;
  for (auto& [k, t] : model_state(model)) weights[k] = t;

  onnx::ModelProto m;
  m.set_ir_version(kIrVersion);
  m.set_producer_name("clip-export");
  m.set_producer_version(CLIP_VERSION);
  m.set_model_version(1);
  m.set_doc_string(std::string("Chinese-CLIP ") + (tower == OnnxTower::text ? "text" : "image") + " encoder " +
                   cfg.name() + " (unnormalised features)");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(kOpset);
  onnx::GraphProto* g = m.mutable_graph();
  g->set_name(tower == OnnxTower::text ? "clip_text_encoder" : "clip_image_encoder");
  Builder b(g, weights, opt.fp16);
  std::string out, out_name;
  if (tower == OnnxTower::text) {
    add_value_info(g->add_input(), "text", onnx::TensorProto::INT64, {"batch", ""}, {0, opt.context_length});
    out = build_text(b, cfg, opt.context_length);
    out_name = "unnorm_text_features";
  } else {
    const int64_t r = cfg.vision.image_resolution;
    add_value_info(g->add_input(), "image", onnx::TensorProto::FLOAT, {"batch", "", "", ""}, {0, 3, r, r});
    std::string px = b.to_ct("image");
    out = cfg.vision.resnet ? build_resnet(b, cfg.vision, px) : build_vit(b, cfg.vision, px);
    out_name = "unnorm_image_features";
  }
  // The graph's output under its public name, float32 either way.
  b.node("Identity", {b.to_f32(out)});
  g->mutable_node(g->node_size() - 1)->set_output(0, out_name);
  add_value_info(g->add_output(), out_name, onnx::TensorProto::FLOAT, {"batch", ""}, {0, cfg.embed_dim()});

  for (const auto& [k, v] : opt.metadata) {
    auto* p = m.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  }
  auto add_meta = [&](const std::string& k, const std::string& v) {
    if (opt.metadata.count(k)) return;
    auto* p = m.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  };
  add_meta("tower", tower == OnnxTower::text ? "text" : "image");
  add_meta("dtype", opt.fp16 ? "float16 (float32 inputs/outputs)" : "float32");
  add_meta("output", out_name + " (not L2-normalised)");
  add_meta("embed_dim", std::to_string(cfg.embed_dim()));
  add_meta("model_config", model_config_json(cfg));

  OnnxExportResult res;
  res.model_path = path;
  res.initializers = g->initializer_size();
  res.nodes = g->node_size();
  int64_t total = 0;
  for (const auto& t : g->initializer()) total += int64_t(t.raw_data().size());
  int64_t threshold = opt.external_data_threshold;
  if (threshold < 0) threshold = total > kProtobufLimit ? 1024 : INT64_MAX;
  if (threshold != INT64_MAX) res.external_tensors = externalize(m, path, threshold, &res.external_data_path);

  std::string bytes;
  if (!m.SerializeToString(&bytes))
    throw ModelError("ONNX export: cannot serialise " + path + " (over protobuf's 2 GB limit?); lower --external-data-threshold");
  write_file_atomic(path, bytes);
  log_info("wrote {} ({} nodes, {} initializers{}, {:.1f} MB)", path, res.nodes, res.initializers,
           res.external_tensors ? ", " + std::to_string(res.external_tensors) + " in " + res.external_data_path : "",
           double(bytes.size()) / 1e6);
  return res;
}

void check_onnx_file(const std::string& path) {
  try {
    onnx::checker::check_model(path);
    onnx::ModelProto m;
    std::ifstream in(path, std::ios::binary);
    if (!in || !m.ParseFromIstream(&in)) throw ModelError("cannot parse ONNX model " + path);
    onnx::ShapeInferenceOptions o{/*check_type=*/true, /*error_mode=*/1, /*enable_data_propagation=*/false};
    onnx::shape_inference::InferShapes(m, onnx::OpSchemaRegistry::Instance(), o);
  } catch (const ModelError&) {
    throw;
  } catch (const std::exception& e) {
    throw ModelError("ONNX checker rejected " + path + ": " + e.what());
  }
}

}  // namespace clip
