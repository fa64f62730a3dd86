// The model against the reference fixtures made by cn_clip itself: state-dict names, features
// from the stored pixels/token ids, the training loss and gradients, config inference, precision,
// gradient checkpointing, freezing, initialisation and load errors.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/function.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "clip/io/checkpoint.h"
#include "clip/model/config.h"
#include "clip/base/error.h"
#include <ATen/Parallel.h>

#include "clip/base/runtime.h"
#include "clip/model/model.h"
#include "clip/model/tensor_torch.h"
#include "fixture_model.h"
#include "util.h"

// glog (pulled in by c10) defines CHECK too; Catch's must win in this file, so it comes last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace clip;
using nlohmann::json;

namespace {

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return json::parse(f);
}

at::Tensor vec(const json& a) {
  std::vector<float> v = a.get<std::vector<float>>();
  return at::tensor(v, at::kFloat);
}

struct Fixture {
  std::string kind;  // "vit" or "rn"
  Checkpoint ck;
  ModelConfig cfg;
};

const Fixture& fixture(const std::string& kind) {
  static std::map<std::string, Fixture> cache;
  auto it = cache.find(kind);
  if (it != cache.end()) return it->second;
  Fixture f;
  f.kind = kind;
  f.ck = load_checkpoint(testutil::fixture("checkpoints/" + std::string(kind == "vit" ? "vit_bert.pt" : "rn_bert.pt")));
  f.cfg = testutil::fixture_config(kind);
  return cache.emplace(kind, std::move(f)).first->second;
}

ClipModel loaded_model(const std::string& kind) {
  const Fixture& f = fixture(kind);
  ClipModel m(f.cfg);
  load_weights(m, f.ck.state_dict, true);
  m->eval();
  return m;
}

// Stored pixels of the images in images.tsv order, ids from expected/pixels.jsonl.
std::pair<std::vector<int64_t>, at::Tensor> all_pixels() {
  std::vector<int64_t> ids;
  std::vector<at::Tensor> px;
  for (const auto& j : read_jsonl(testutil::fixture("expected/pixels.jsonl"))) {
    ids.push_back(j["image_id"].get<int64_t>());
    px.push_back(testutil::fixture_pixels(ids.back()));
  }
  return {ids, at::stack(px)};
}

std::pair<std::vector<int64_t>, at::Tensor> all_token_ids() {
  std::vector<int64_t> ids;
  std::vector<at::Tensor> rows;
  for (const auto& j : read_jsonl(testutil::fixture("expected/tokens.jsonl"))) {
    ids.push_back(j["text_id"].get<int64_t>());
    rows.push_back(at::tensor(j["input_ids_preprocessed"].get<std::vector<int64_t>>(), at::kLong));
  }
  return {ids, at::stack(rows)};
}

// Per row: raw relative L2 error and max abs difference of the normalised vectors.
void check_features(const at::Tensor& got, const std::vector<int64_t>& ids, const std::string& file, const std::string& kind,
                    const std::string& id_key) {
  std::map<int64_t, json> expected;
  for (const auto& j : read_jsonl(testutil::fixture("expected/" + file)))
    if (j["model"] == kind) expected[j[id_key].get<int64_t>()] = j;
  REQUIRE(expected.size() == ids.size());
  double worst_rel = 0, worst_abs = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const json& e = expected.at(ids[i]);
    at::Tensor raw = got[i].to(at::kDouble), ref = vec(e["raw"]).to(at::kDouble);
    REQUIRE(raw.numel() == ref.numel());
    double rel = ((raw - ref).norm() / ref.norm()).item<double>();
    at::Tensor n = raw / raw.norm();
    double mad = (n - vec(e["feature"]).to(at::kDouble)).abs().max().item<double>();
    INFO(kind << " " << id_key << " " << ids[i] << ": raw rel L2 " << rel << ", normalised max abs " << mad);
    CHECK(rel <= 1e-5);
    CHECK(mad <= 1e-5);
    worst_rel = std::max(worst_rel, rel);
    worst_abs = std::max(worst_abs, mad);
  }
  WARN(kind << " " << file << ": worst raw rel L2 " << worst_rel << ", worst normalised max abs " << worst_abs);
}

at::Tensor train_batch_pixels(const json& ts) {
  std::vector<at::Tensor> px;
  for (const auto& p : ts["batch_pairs"]) px.push_back(testutil::fixture_pixels(p["image_id"].get<int64_t>()));
  return at::stack(px);
}

at::Tensor train_batch_ids(const json& ts) {
  std::vector<at::Tensor> rows;
  for (const auto& r : ts["batch_input_ids"]) rows.push_back(at::tensor(r.get<std::vector<int64_t>>(), at::kLong));
  return at::stack(rows);
}

// cn_clip's get_loss with aggregate=True on one process.
at::Tensor clip_loss(ClipModel& m, const at::Tensor& px, const at::Tensor& ids, at::Tensor* logits_out = nullptr) {
  auto [img, txt, scale] = m->forward(px, ids);
  auto logits = scale * at::matmul(img, txt.t());
  auto labels = at::arange(px.size(0), at::kLong);
  auto loss = (at::cross_entropy_loss(logits, labels) + at::cross_entropy_loss(logits.t(), labels)) / 2;
  if (logits_out) *logits_out = logits;
  return loss;
}

StateDict state_dict_of(ClipModel& m) {
  StateDict sd;
  for (auto& [k, t] : model_state(m)) sd.add(k, to_tensor_data(t));
  return sd;
}

// Shapes only (no bytes): enough for infer_config.
StateDict shapes_of(ClipModel& m) {
  StateDict sd;
  for (auto& [k, t] : model_state(m)) {
    TensorData d;
    d.dtype = from_scalar_type(t.scalar_type());
    d.shape = t.sizes().vec();
    sd.add(k, d);
  }
  return sd;
}

int64_t count_params(ClipModel& m) {
  int64_t n = 0;
  for (const auto& p : m->parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("parameter and buffer names are exactly cn_clip's state-dict keys, in order", "[model]") {
  for (std::string kind : {"vit", "rn"}) {
    const Fixture& f = fixture(kind);
    ClipModel m(f.cfg);
    std::vector<std::string> names;
    for (auto& [k, t] : model_state(m)) names.push_back(k);
    INFO(kind);
    CHECK(names == f.ck.state_dict.keys);  // same set, same order as cn_clip's state_dict()
    // named_parameters()/named_buffers() use the same names.
    std::set<std::string> pb;
    for (const auto& p : m->named_parameters()) pb.insert(p.key());
    for (const auto& b : m->named_buffers()) pb.insert(b.key());
    CHECK(pb == std::set<std::string>(f.ck.state_dict.keys.begin(), f.ck.state_dict.keys.end()));
    if (kind == "rn") {
      CHECK(pb.count("visual.layer1.0.downsample.0.weight"));
      CHECK(pb.count("visual.layer1.0.downsample.1.num_batches_tracked"));
      CHECK(m->named_buffers().contains("visual.bn1.running_var"));
    } else {
      CHECK(m->named_parameters().contains("visual.transformer.resblocks.1.attn.in_proj_weight"));
      CHECK(m->named_buffers().size() == 0);
    }
  }
}

TEST_CASE("features from the stored pixels and token ids match cn_clip", "[model]") {
  auto [img_ids, pixels] = all_pixels();
  auto [txt_ids, tokens] = all_token_ids();
  REQUIRE(img_ids.size() == 7);
  REQUIRE(txt_ids.size() == 12);
  for (std::string kind : {"vit", "rn"}) {
    ClipModel m = loaded_model(kind);
    at::NoGradGuard ng;
    check_features(m->encode_image(pixels), img_ids, "image_features.jsonl", kind, "image_id");
    check_features(m->encode_text(tokens), txt_ids, "text_features.jsonl", kind, "text_id");
    // One at a time gives the same (no batch coupling, padding handled by the mask).
    auto one = m->encode_text(tokens.narrow(0, 7, 1));
    CHECK((one - m->encode_text(tokens).narrow(0, 7, 1)).abs().max().item<double>() < 1e-5);
    // forward() normalises and returns exp(logit_scale) (3.3 in the fixtures).
    auto [img, txt, scale] = m->forward(pixels.narrow(0, 0, 2), tokens.narrow(0, 0, 3));
    CHECK(img.norm(2, {-1}).sub(1).abs().max().item<double>() < 1e-6);
    CHECK(txt.size(0) == 3);
    CHECK(scale.item<double>() == Approx(std::exp(3.3)).epsilon(1e-6));
  }
}

TEST_CASE("training loss and gradients of the fixture train step", "[model]") {
  json ts = read_json(testutil::fixture("expected/train_step.json"));
  auto px = train_batch_pixels(ts);
  auto ids = train_batch_ids(ts);
  for (std::string kind : {"vit", "rn"}) {
    INFO(kind);
    const json& ref = ts[kind];
    ClipModel m = loaded_model(kind);
    m->train();
    at::Tensor logits;
    auto loss = clip_loss(m, px, ids, &logits);
    const double want = ref["loss"].get<double>();
    CHECK(std::abs(loss.item<double>() - want) / want <= 1e-5);
    auto lref = at::tensor(ref["logits_per_image"].get<std::vector<std::vector<double>>>()[0], at::kDouble);
    CHECK((logits[0].to(at::kDouble) - lref).abs().max().item<double>() < 1e-4);
    loss.backward();
    // Gradient L2 per reported parameter (skip attention key biases: their true gradient is 0).
    auto params = m->named_parameters();
    double sq = 0;
    for (const auto& p : params) sq += p.value().grad().defined() ? p.value().grad().pow(2).sum().item<double>() : 0.0;
    const double gtol = kind == "vit" ? 1e-5 : 1e-3;
    CHECK(std::abs(std::sqrt(sq) - ref["grad_global_l2"].get<double>()) / ref["grad_global_l2"].get<double>() <= gtol);
    int checked = 0;
    for (auto it = ref["params"].begin(); it != ref["params"].end(); ++it) {
      if (it.key().find("key.bias") != std::string::npos || it.key().find("in_proj_bias") != std::string::npos ||
          it.key().find("k_proj.bias") != std::string::npos)
        continue;
      const at::Tensor* p = params.find(it.key());
      REQUIRE(p != nullptr);
      REQUIRE(p->grad().defined());
      double l2 = p->grad().to(at::kDouble).norm().item<double>(), want_l2 = (*it)["grad"]["l2"].get<double>();
      INFO(it.key() << " grad l2 " << l2 << " vs " << want_l2);
      CHECK(std::abs(l2 - want_l2) <= gtol * want_l2 + 1e-12);
      ++checked;
    }
    CHECK(checked >= 8);
    if (kind == "rn") {
      // Train-mode BatchNorm updated the running statistics (momentum 0.1), as cn_clip's forward did.
      auto bufs = m->named_buffers();
      for (auto it = ref["buffers"].begin(); it != ref["buffers"].end(); ++it) {
        if (!it->contains("first_after")) continue;
        auto got = bufs[it.key()].flatten().narrow(0, 0, 3).to(at::kDouble);
        auto exp = at::tensor((*it)["first_after"].get<std::vector<double>>(), at::kDouble);
        INFO(it.key());
        CHECK((got - exp).abs().max().item<double>() <= 1e-5 * (1 + exp.abs().max().item<double>()));
      }
      CHECK(bufs["visual.bn1.num_batches_tracked"].item<int64_t>() == 12346);
    }
  }
}

TEST_CASE("gradient checkpointing gives the same gradients", "[model]") {
  json ts = read_json(testutil::fixture("expected/train_step.json"));
  auto px = train_batch_pixels(ts);
  auto ids = train_batch_ids(ts);
  // With BERT dropout on, the re-run must reproduce the forward's dropout masks.
  ModelConfig cfg = testutil::fixture_config("vit");
  cfg.text.hidden_dropout = 0.1;
  cfg.text.attention_dropout = 0.1;
  // Nodes of the autograd graph that belong to the checkpointing function.
  auto count_checkpoint_nodes = [](const at::Tensor& loss) {
    std::set<torch::autograd::Node*> seen;
    std::vector<torch::autograd::Node*> todo{loss.grad_fn().get()};
    int n = 0;
    while (!todo.empty()) {
      auto* node = todo.back();
      todo.pop_back();
      if (!node || !seen.insert(node).second) continue;
      if (node->name().find("CheckpointFunction") != std::string::npos) ++n;
      for (const auto& e : node->next_edges()) todo.push_back(e.function.get());
    }
    return n;
  };
  auto grads = [&](bool ckpt) {
    ClipModel m(cfg);
    load_weights(m, fixture("vit").ck.state_dict);
    m->train();
    m->set_grad_checkpointing(ckpt);
    at::manual_seed(7);
    auto loss = clip_loss(m, px, ids);
    CHECK(count_checkpoint_nodes(loss) == (ckpt ? 4 : 0));  // 2 ViT blocks + 2 BERT layers
    loss.backward();
    std::map<std::string, at::Tensor> g;
    for (const auto& p : m->named_parameters()) g[p.key()] = p.value().grad().clone();
    return std::make_pair(loss.item<double>(), g);
  };
  {
    // Dropout (config probabilities) acts in train mode only.
    ClipModel m(cfg);
    load_weights(m, fixture("vit").ck.state_dict);
    at::NoGradGuard ng;
    m->train();
    at::manual_seed(1);
    auto a = m->encode_text(ids);
    at::manual_seed(2);
    CHECK_FALSE(a.equal(m->encode_text(ids)));
    m->eval();
    auto e = m->encode_text(ids);
    CHECK(e.equal(m->encode_text(ids)));
  }
  auto [l0, g0] = grads(false);
  auto [l1, g1] = grads(true);
  CHECK(l0 == l1);
  REQUIRE(g0.size() == g1.size());
  double worst = 0;
  for (auto& [k, g] : g0) {
    REQUIRE(g1[k].defined());
    double d = (g - g1[k]).abs().max().item<double>();
    INFO(k << " max abs diff " << d);
    CHECK(d <= 1e-6);
    worst = std::max(worst, d);
  }
  CHECK(g0.at("visual.transformer.resblocks.0.attn.in_proj_weight").abs().sum().item<double>() > 0);
  CHECK(g0.at("bert.encoder.layer.0.attention.self.query.weight").abs().sum().item<double>() > 0);
  WARN("checkpointing: worst gradient difference " << worst);
}

TEST_CASE("the low-precision kernels compute the same loss and gradients", "[model]") {
  // set_low_precision_kernels (QuickGELU as silu with 1.702 folded into the weights, LayerNorm in the
  // activation dtype, the patch embedding as a matrix product, BERT's query/key/value as one product):
  // in float32 they differ from the plain forms by rounding only.
  json ts = read_json(testutil::fixture("expected/train_step.json"));
  auto px = train_batch_pixels(ts);
  auto ids = train_batch_ids(ts);
  auto run = [&](bool kernels) {
    ClipModel m = loaded_model("vit");
    m->train();
    m->set_low_precision_kernels(kernels);
    auto loss = clip_loss(m, px, ids);
    loss.backward();
    std::map<std::string, at::Tensor> g;
    for (const auto& p : m->named_parameters()) g[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : at::Tensor();
    return std::make_pair(loss.item<double>(), g);
  };
  auto [l0, g0] = run(false);
  auto [l1, g1] = run(true);
  CHECK(std::abs(l0 - l1) <= 1e-6 * std::abs(l0));
  int compared = 0;
  for (auto& [k, g] : g0) {
    INFO(k);
    REQUIRE(g1.count(k));
    REQUIRE(g.defined() == g1[k].defined());
    if (!g.defined()) continue;
    CHECK(g1[k].sizes() == g.sizes());
    // BERT's key biases: their true gradient is 0 (softmax ignores a shift), both forms give rounding noise.
    const bool zero = k.find("key.bias") != std::string::npos;
    const double scale = zero ? 1e-2 : g.abs().max().item<double>();
    CHECK((g - g1[k]).abs().max().item<double>() <= 1e-4 * scale);
    ++compared;
  }
  CHECK(compared == static_cast<int>(g0.size()));
  // The fused projection still gives each of query, key and value its own, different gradient.
  for (const char* w : {"query", "key", "value"})
    CHECK(g1.at(std::string("bert.encoder.layer.0.attention.self.") + w + ".weight").abs().sum().item<double>() > 0);
  CHECK_FALSE(g1.at("bert.encoder.layer.0.attention.self.query.weight")
                  .equal(g1.at("bert.encoder.layer.0.attention.self.value.weight")));
}

TEST_CASE("config inference from a checkpoint's shapes", "[model]") {
  const Fixture& vit = fixture("vit");
  InferredConfig ic = infer_config(vit.ck.state_dict);
  const VisionConfig& v = ic.config.vision;
  CHECK_FALSE(v.resnet);
  CHECK(v.width == 64);
  CHECK(v.layers == 2);
  CHECK(v.patch_size == 32);
  CHECK(v.image_resolution == 224);
  CHECK(v.embed_dim == 32);
  CHECK(v.heads() == 1);
  CHECK(ic.config.text.hidden_size == 64);
  CHECK(ic.config.text.num_layers == 2);
  CHECK(ic.config.text.intermediate_size == 128);
  CHECK(ic.config.text.vocab_size == 21128);
  CHECK(ic.config.text.max_position_embeddings == 512);
  CHECK(ic.config.text.num_heads == 1);  // assumed 64 per head; the fixture was trained with 2
  bool text_note = false;
  for (const auto& n : ic.notes) text_note = text_note || (n.find("text config") != std::string::npos && n.find("ASSUMED") != std::string::npos);
  CHECK(text_note);

  const Fixture& rn = fixture("rn");
  InferredConfig ir = infer_config(rn.ck.state_dict);
  CHECK(ir.config.vision.resnet);
  CHECK(ir.config.vision.resnet_layers == std::vector<int>({1, 1, 1, 1}));
  CHECK(ir.config.vision.width == 8);
  CHECK(ir.config.vision.heads() == 4);
  CHECK(ir.config.vision.embed_dim == 32);

  auto [img_ids, pixels] = all_pixels();
  auto [txt_ids, tokens] = all_token_ids();
  at::NoGradGuard ng;
  // Inferred vision config is right: image features match cn_clip.
  ClipModel mi(ic.config);
  load_weights(mi, vit.ck.state_dict);
  mi->eval();
  check_features(mi->encode_image(pixels), img_ids, "image_features.jsonl", "vit", "image_id");
  ClipModel mri(ir.config);
  load_weights(mri, rn.ck.state_dict);
  mri->eval();
  check_features(mri->encode_image(pixels), img_ids, "image_features.jsonl", "rn", "image_id");
  // ... but the assumed text head count is not: the explicit config (2 heads) is needed.
  ClipModel me = loaded_model("vit");
  double diff = (mi->encode_text(tokens) - me->encode_text(tokens)).abs().max().item<double>();
  CHECK(diff > 1e-3);
  // resolve_config: explicit wins per tower.
  InferredConfig rc = resolve_config(vit.ck.state_dict, "", testutil::fixture("configs/RBT-Tiny-H64-L2.json"));
  CHECK(rc.config.text.num_heads == 2);
  CHECK(rc.config.vision.heads() == 1);
  CHECK(rc.config.text.name == "RBT-Tiny-H64-L2");

  // With zero query weights and biases every head attends uniformly, so the head split cannot
  // matter: inferred (1 head) and explicit (2 heads) configs must then agree.
  StateDict zq;
  for (const auto& k : vit.ck.state_dict.keys) {
    at::Tensor t = tensor_view(vit.ck.state_dict.at(k)).clone();
    if (k.find("attention.self.query.") != std::string::npos) t.zero_();
    zq.add(k, to_tensor_data(t));
  }
  ClipModel a(ic.config), b(vit.cfg);
  load_weights(a, zq);
  load_weights(b, zq);
  a->eval();
  b->eval();
  auto fa = a->encode_text(tokens), fb = b->encode_text(tokens);
  CHECK((fa - fb).abs().max().item<double>() <= 1e-5 * fb.abs().max().item<double>());
  CHECK((fa - me->encode_text(tokens)).abs().max().item<double>() > 1e-3);  // the zeroing did change something
}

TEST_CASE("load errors name the key, the shapes and the config", "[model]") {
  const Fixture& f = fixture("vit");
  {
    ModelConfig cfg = f.cfg;
    cfg.vision.name = "ViT-E16";
    cfg.vision.embed_dim = 16;
    ClipModel m(cfg);
    try {
      load_weights(m, f.ck.state_dict);
      FAIL("no error for a wrong embed_dim");
    } catch (const ModelError& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("checkpoint key 'text_projection': expected shape [64, 16] (from config ViT-E16@RBT-Tiny-H64-L2), found [64, 32]") !=
            std::string::npos);
      CHECK(msg.find("more mismatched keys") != std::string::npos);  // visual.proj too
      CHECK(msg.find("--vision-model") != std::string::npos);
    }
  }
  {
    ModelConfig cfg = f.cfg;
    cfg.vision = vision_config("ViT-B-32");
    cfg.vision.embed_dim = 32;
    ClipModel m(cfg);
    try {
      load_weights(m, f.ck.state_dict);
      FAIL("no error for a wrong vision width");
    } catch (const ModelError& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("checkpoint key 'visual.class_embedding': expected shape [768] (from config ViT-B-32), found [64]") !=
            std::string::npos);
    }
  }
  {
    ModelConfig cfg = f.cfg;
    cfg.vision.layers = 3;  // one resblock more than the checkpoint
    ClipModel m(cfg);
    try {
      load_weights(m, f.ck.state_dict);
      FAIL("no error for missing keys");
    } catch (const ModelError& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("12 missing keys (visual.transformer.resblocks.2.attn.in_proj_weight,") != std::string::npos);
      CHECK(msg.find("(7 more)") != std::string::npos);
      CHECK(msg.find("--text-model") != std::string::npos);
    }
    load_weights(m, f.ck.state_dict, /*strict=*/false);  // non-strict: loads what fits
    CHECK(m->named_parameters()["visual.proj"].equal(tensor_view(f.ck.state_dict.at("visual.proj"))));
  }
  {
    StateDict extra = f.ck.state_dict;
    extra.add("bert.pooler.dense.weight", to_tensor_data(at::zeros({64, 64})));
    ClipModel m(f.cfg);
    try {
      load_weights(m, extra);
      FAIL("no error for an unexpected key");
    } catch (const ModelError& e) {
      CHECK(std::string(e.what()).find("1 unexpected keys (bert.pooler.dense.weight)") != std::string::npos);
    }
  }
}

TEST_CASE("weights holding NaN or infinity are refused at load, naming the key", "[model][hostile]") {
  auto& f = fixture("vit");
  for (float bad : {std::nanf(""), INFINITY}) {
    StateDict sd = f.ck.state_dict;
    at::Tensor proj = tensor_view(sd.at("visual.proj")).clone();
    proj.view(-1)[3] = bad;
    sd.tensors["visual.proj"] = to_tensor_data(proj);
    ClipModel m(f.cfg);
    try {
      load_weights(m, sd);
      FAIL("weights with a non-finite value loaded");
    } catch (const ModelError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("'visual.proj'") != std::string::npos);
      CHECK(msg.find("1 NaN or infinite value") != std::string::npos);
    }
  }
}

TEST_CASE("the finiteness check finds one bad value anywhere in a tensor, in float32, float16 and bfloat16", "[model][hostile]") {
  auto& f = fixture("vit");
  const int64_t n = tensor_view(f.ck.state_dict.at("visual.proj")).numel();
  REQUIRE(n > 64);  // the vectorised body and the scalar tail are both exercised below
  for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16})
    for (int64_t pos : {int64_t(0), int64_t(37), n / 2 + 5, n - 1})
      for (float bad : {std::nanf(""), -INFINITY}) {
        INFO("dtype " << at::toString(dt) << " position " << pos << " value " << bad);
        StateDict sd = f.ck.state_dict;
        at::Tensor proj = tensor_view(sd.at("visual.proj")).to(dt).clone();  // never the fixture's own buffer
        proj.view(-1)[pos] = bad;
        sd.tensors["visual.proj"] = to_tensor_data(proj);
        ClipModel m(f.cfg);
        REQUIRE_THROWS_AS(load_weights(m, sd), ModelError);
      }
  // Large finite values (all exponent bits but one set) are not flagged.
  StateDict sd = f.ck.state_dict;
  at::Tensor proj = tensor_view(sd.at("visual.proj")).to(at::kFloat).clone();
  proj.view(-1)[n - 1] = 3.0e38f;
  proj.view(-1)[0] = -3.0e38f;
  sd.tensors["visual.proj"] = to_tensor_data(proj);
  ClipModel m(f.cfg);
  REQUIRE_NOTHROW(load_weights(m, sd));
}

TEST_CASE("ScopedThreads lowers the intra-op thread count for its scope only", "[model]") {
  const int saved = at::get_num_threads();
  const int before = set_threads(2);
  REQUIRE(at::get_num_threads() == 2);
  {
    ScopedThreads one(1);
    REQUIRE(at::get_num_threads() == 1);
  }
  REQUIRE(at::get_num_threads() == before);
  {
    ScopedThreads more(before + 1);  // never raises the count
    REQUIRE(at::get_num_threads() == before);
  }
  set_threads(saved);
  REQUIRE(threads_for_positions(52) == 1);
  REQUIRE(threads_for_positions(64 * 52) == 0);
}

TEST_CASE("every official config constructs with cn_clip's parameter counts", "[model][official]") {
  struct Case {
    const char* vision;
    const char* text;
    int64_t params;
    size_t tensors;
  };
  // Counts from cn_clip's own models (reference tables).
  const std::vector<Case> cases = {
      {"ViT-B-16", "RoBERTa-wwm-ext-base-chinese", 188262913, 351},
      {"ViT-B-32", "RoBERTa-wwm-ext-base-chinese", 189919489, 351},
      {"RN50", "RBT3-chinese", 76989537, 394},
      {"ViT-L-14", "RoBERTa-wwm-ext-base-chinese", 406233089, 495},
      {"ViT-L-14-336", "RoBERTa-wwm-ext-base-chinese", 406560769, 495},
      {"ViT-H-14", "RoBERTa-wwm-ext-large-chinese", 957598209, 783},
  };
  for (const auto& c : cases) {
    INFO(c.vision << "@" << c.text);
    ModelConfig cfg{vision_config(c.vision), text_config(c.text)};
    ClipModel m(cfg);
    CHECK(count_params(m) == c.params);
    CHECK(model_state(m).size() == c.tensors);
    // The shapes lead back to the same official config, heads included (ViT-H: 80 per head).
    InferredConfig ic = infer_config(shapes_of(m));
    CHECK(ic.config.vision.name == c.vision);
    CHECK(ic.config.text.name == c.text);
    CHECK(ic.config.vision.heads() == cfg.vision.heads());
    CHECK(ic.config.text.num_heads == cfg.text.num_heads);
    if (std::string(c.vision) == "ViT-B-32" || std::string(c.vision) == "RN50") {
      // Small enough for a forward on this machine: random weights, shapes and finiteness.
      m->initialize_parameters(1);
      m->eval();
      at::NoGradGuard ng;
      auto img = m->encode_image(at::randn({1, 3, 224, 224}));
      auto txt = m->encode_text(at::tensor({101, 2769, 102, 0, 0}, at::kLong).view({1, 5}));
      const std::vector<int64_t> want{1, cfg.vision.embed_dim};
      CHECK(img.sizes().vec() == want);
      CHECK(txt.sizes().vec() == want);
      CHECK(img.isfinite().all().item<bool>());
      CHECK(txt.isfinite().all().item<bool>());
    }
  }
  CHECK(vision_config("ViT-H-14").heads() == 16);
  CHECK(vision_config("RN50").heads() == 32);
}

TEST_CASE("initialize_parameters follows cn_clip's rules and is deterministic", "[model]") {
  for (std::string kind : {"vit", "rn"}) {
    INFO(kind);
    ModelConfig cfg = testutil::fixture_config(kind);
    ClipModel a(cfg), b(cfg), c(cfg);
    a->initialize_parameters(42);
    b->initialize_parameters(42);
    c->initialize_parameters(43);
    auto sa = model_state(a), sb = model_state(b), sc = model_state(c);
    bool all_equal = true, any_diff = false;
    for (size_t i = 0; i < sa.size(); ++i) {
      all_equal = all_equal && sa[i].second.equal(sb[i].second);
      any_diff = any_diff || !sa[i].second.equal(sc[i].second);
    }
    CHECK(all_equal);
    CHECK(any_diff);
    auto p = a->named_parameters();
    CHECK(a->logit_scale().item<double>() == Approx(std::log(1 / 0.07)));
    // BERT: N(0, initializer_range) weights, zero biases, LayerNorm 1/0.
    CHECK(p["bert.embeddings.word_embeddings.weight"].std().item<double>() == Approx(0.15).epsilon(0.02));
    CHECK(p["bert.encoder.layer.1.intermediate.dense.bias"].abs().max().item<double>() == 0);
    CHECK(p["bert.encoder.layer.0.output.LayerNorm.weight"].eq(1).all().item<bool>());
    CHECK(p["text_projection"].std().item<double>() == Approx(1 / 8.0).epsilon(0.05));
    if (kind == "vit") {
      CHECK(p["visual.positional_embedding"].std().item<double>() == Approx(1 / 8.0).epsilon(0.05));
      CHECK(p["visual.transformer.resblocks.0.attn.in_proj_bias"].abs().max().item<double>() == 0);
      double bound = std::sqrt(6.0 / (64 + 192));
      CHECK(p["visual.transformer.resblocks.0.attn.in_proj_weight"].abs().max().item<double>() <= bound);
    } else {
      CHECK(p["visual.layer1.0.bn3.weight"].abs().max().item<double>() == 0);  // zero-init last BN
      CHECK(p["visual.bn3.weight"].eq(1).all().item<bool>());                   // not the stem's
      CHECK(p["visual.attnpool.q_proj.weight"].std().item<double>() == Approx(1 / 16.0).epsilon(0.05));
      CHECK(a->named_buffers()["visual.layer1.0.bn1.running_var"].eq(1).all().item<bool>());
    }
  }
}

TEST_CASE("freeze_vision stops visual gradients and keeps ResNet BatchNorm statistics", "[model]") {
  json ts = read_json(testutil::fixture("expected/train_step.json"));
  auto px = train_batch_pixels(ts);
  auto ids = train_batch_ids(ts);
  ClipModel m = loaded_model("rn");
  m->freeze_vision(true);
  m->train();
  CHECK(m->vision_frozen());
  auto before = m->named_buffers()["visual.layer1.0.bn1.running_mean"].clone();
  auto loss = clip_loss(m, px, ids);
  loss.backward();
  for (const auto& p : m->named_parameters()) {
    if (p.key().rfind("visual.", 0) == 0) {
      CHECK_FALSE(p.value().requires_grad());
      CHECK_FALSE(p.value().grad().defined());
    }
  }
  CHECK(m->named_parameters()["bert.embeddings.LayerNorm.weight"].grad().defined());
  CHECK(m->named_buffers()["visual.layer1.0.bn1.running_mean"].equal(before));
  CHECK(m->named_buffers()["visual.bn1.num_batches_tracked"].item<int64_t>() == 12345);
  // Eval-mode statistics: the frozen tower's features equal the inference features.
  at::NoGradGuard ng;
  auto [img, txt, s] = m->forward(px, ids);
  ClipModel ref = loaded_model("rn");
  auto want = ref->encode_image(px);
  CHECK((img - want / want.norm(2, {-1}, true)).abs().max().item<double>() < 1e-6);
  m->freeze_vision(false);
  m->train();
  m->forward(px, ids);
  CHECK_FALSE(m->named_buffers()["visual.layer1.0.bn1.running_mean"].equal(before));
}

TEST_CASE("bfloat16 inference keeps cn_clip's float32 islands and stays close", "[model][precision]") {
  auto [img_ids, pixels] = all_pixels();
  auto [txt_ids, tokens] = all_token_ids();
  for (std::string kind : {"vit", "rn"}) {
    INFO(kind);
    ClipModel m32 = loaded_model(kind), m16 = loaded_model(kind);
    m16->to(at::kBFloat16);
    for (auto& [k, t] : model_state(m16)) {
      INFO(k);
      if (k.find("num_batches_tracked") != std::string::npos) {
        CHECK(t.scalar_type() == at::kLong);
      } else {
        CHECK(t.scalar_type() == (ClipModelImpl::keeps_float32(k) ? at::kFloat : at::kBFloat16));
      }
    }
    if (kind == "vit") {
      CHECK(ClipModelImpl::keeps_float32("visual.transformer.resblocks.0.ln_1.weight"));
      CHECK_FALSE(ClipModelImpl::keeps_float32("bert.encoder.layer.0.output.LayerNorm.weight"));
    } else {
      CHECK(ClipModelImpl::keeps_float32("visual.layer2.0.downsample.1.running_var"));
      CHECK_FALSE(ClipModelImpl::keeps_float32("visual.layer2.0.downsample.0.weight"));
    }
    at::NoGradGuard ng;
    auto cos = [](const at::Tensor& a, const at::Tensor& b) {
      auto x = a.to(at::kFloat), y = b.to(at::kFloat);
      return ((x * y).sum(-1) / (x.norm(2, {-1}) * y.norm(2, {-1}))).min().item<double>();
    };
    auto i16 = m16->encode_image(pixels), t16 = m16->encode_text(tokens);
    CHECK(i16.scalar_type() == at::kBFloat16);
    double ci = cos(i16, m32->encode_image(pixels)), ct = cos(t16, m32->encode_text(tokens));
    WARN(kind << " bf16 vs fp32 worst cosine: image " << ci << ", text " << ct);
    CHECK(ci > 0.99);
    CHECK(ct > 0.99);
    m16->to(at::kFloat);  // and back: every floating tensor is float32 again
    for (auto& [k, t] : model_state(m16))
      if (k.find("num_batches_tracked") == std::string::npos) CHECK(t.scalar_type() == at::kFloat);
    CHECK(cos(m16->encode_image(pixels), m32->encode_image(pixels)) > 0.99);
  }
}

TEST_CASE("TensorData <-> at::Tensor", "[model][tensor]") {
  auto t = at::arange(12, at::kFloat).view({3, 4});
  TensorData d = to_tensor_data(t);
  CHECK(d.dtype == DType::f32);
  CHECK(d.shape == std::vector<int64_t>({3, 4}));
  CHECK(d.data == static_cast<const uint8_t*>(t.data_ptr()));  // no copy for contiguous CPU tensors
  at::Tensor v = tensor_view(d);
  CHECK(v.data_ptr() == t.data_ptr());
  CHECK(to_tensor(d, at::kFloat).data_ptr() == t.data_ptr());
  CHECK(v.equal(t));
  // A transposed (strided) tensor is copied contiguous; values survive.
  TensorData dt = to_tensor_data(t.t());
  CHECK(tensor_view(dt).equal(t.t()));
  // float16 / bfloat16 are cast to the requested dtype.
  auto h = at::tensor({0.5f, -2.25f, 1024.0f}).to(at::kHalf);
  TensorData dh = to_tensor_data(h);
  CHECK(dh.dtype == DType::f16);
  at::Tensor f = to_tensor(dh, at::kFloat);
  CHECK(f.scalar_type() == at::kFloat);
  CHECK(f.equal(at::tensor({0.5f, -2.25f, 1024.0f})));
  CHECK(to_tensor(to_tensor_data(h.to(at::kBFloat16)), at::kFloat).equal(at::tensor({0.5f, -2.25f, 1024.0f})));
  // The view keeps its storage alive after the TensorData is gone.
  at::Tensor kept;
  {
    TensorData tmp = to_tensor_data(at::full({2}, 7.0f));
    kept = tensor_view(tmp);
  }
  CHECK(kept.eq(7).all().item<bool>());
  // Strided stored views (a checkpoint tensor that is a slice) are honoured without copying.
  auto base = at::arange(10, at::kFloat);
  TensorData sv = to_tensor_data(base);
  sv.shape = {2, 2};
  sv.strides = {4, 2};
  CHECK(tensor_view(sv).equal(at::tensor({0.f, 2.f, 4.f, 6.f}).view({2, 2})));
  CHECK(from_scalar_type(at::kLong) == DType::i64);
  CHECK_THROWS_AS(from_scalar_type(at::kComplexFloat), ModelError);
}

TEST_CASE("weights_hash identifies the weights", "[model]") {
  ClipModel a = loaded_model("vit"), b = loaded_model("vit");
  std::string ha = weights_hash(a);
  CHECK(ha.size() == 16);
  CHECK(ha == weights_hash(b));
  {
    at::NoGradGuard ng;
    b->named_parameters()["bert.embeddings.LayerNorm.bias"][3] += 1e-3;
  }
  CHECK(ha != weights_hash(b));
  ClipModel r = loaded_model("rn");
  CHECK(ha != weights_hash(r));
  // The same weights loaded from a state dict made of the model itself hash the same.
  ClipModel c(fixture("vit").cfg);
  load_weights(c, state_dict_of(a));
  CHECK(weights_hash(c) == ha);
}
