// Fine-tuning against cn_clip itself: one training step of the fixture models (loss, gradients,
// AdamW update, clamp, loss after the step), the cosine schedule tables, AdamW against
// torch.optim.AdamW, feature-caching accumulation, checkpoints (ours -> ours, torch.load), data
// order, curves, and whole runs (resume equality, NaN stop, refusal to overwrite).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "clip/io/checkpoint.h"
#include "clip/model/config.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/image/image.h"
#include "clip/model/model.h"
#include "clip/model/tensor_torch.h"
#include "clip/train/train.h"
#include "fixture_model.h"
#include "util.h"

// glog (pulled in by c10) defines CHECK too; Catch's must win in this file, so it comes last.
#undef CHECK
#include <catch2/catch.hpp>

using namespace clip;
using nlohmann::json;

namespace {

json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return json::parse(f);
}

const json& train_step_json() {
  static json j = read_json(testutil::fixture("expected/train_step.json"));
  return j;
}

ClipModel fixture_model(const std::string& kind) {
  static std::map<std::string, Checkpoint> cache;
  if (!cache.count(kind))
    cache[kind] = load_checkpoint(testutil::fixture("checkpoints/" + std::string(kind == "vit" ? "vit_bert.pt" : "rn_bert.pt")));
  ClipModel m(testutil::fixture_config(kind));
  load_weights(m, cache[kind].state_dict, true);
  return m;
}

// The fixture's 4-row batch: stored pixels + input_ids_preprocessed.
TrainBatch fixture_batch() {
  const json& ts = train_step_json();
  std::vector<at::Tensor> px;
  for (const auto& p : ts["batch_pairs"]) px.push_back(testutil::fixture_pixels(p["image_id"].get<int64_t>()));
  std::vector<at::Tensor> ids;
  for (const auto& row : ts["batch_input_ids"]) ids.push_back(at::tensor(row.get<std::vector<int64_t>>(), at::kLong));
  return {at::stack(px), at::stack(ids)};
}

std::vector<std::pair<std::string, at::Tensor>> trainable(ClipModel& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [n, t] : model_state(m))
    if (t.requires_grad()) out.emplace_back(n, t);
  return out;
}

at::Tensor named(ClipModel& m, const std::string& name) {
  for (auto& [n, t] : model_state(m))
    if (n == name) return t;
  FAIL("no tensor " << name);
  return {};
}

double rel_err(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

bool is_key_bias(const std::string& n) {
  return n.find("attention.self.key.bias") != std::string::npos || n.find("attnpool.k_proj.bias") != std::string::npos;
}

std::string make_temp_dir() {
  char tmpl[] = "/tmp/cliptrainXXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

int run_python(const std::string& script, std::string* out = nullptr) {
  std::string tmp = make_temp_dir() + "/s.py";
  {
    std::ofstream f(tmp);
    f << script;
  }
  std::string cmd = "/usr/bin/python3 " + tmp + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
  int rc = pclose(p);
  if (out) *out = text;
  INFO(text);
  return rc;
}

bool have_python_torch() {
  static int ok = -1;
  if (ok < 0) ok = std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
  return ok == 1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("cosine_lr reproduces cn_clip's scheduler tables", "[train][schedule]") {
  const json& ts = train_step_json();
  size_t checked = 0;
  for (const auto& table : ts["scheduler_tables"]) {
    double base = table["base_lr"];
    int64_t warmup = table["warmup"], total = table["total_steps"];
    for (const auto& e : table["lr"]) {
      double want = e["lr"];
      double got = cosine_lr(base, warmup, total, e["step"].get<int64_t>());
      INFO("base " << base << " warmup " << warmup << " total " << total << " step " << e["step"] << ": got " << got
                   << " want " << want);
      // Relative 1e-12, plus one unit in the last place of cos() times base: the tables came from
      // numpy's vectorised cos (not correctly rounded on every CPU), and near the end of the schedule
      // 1 + cos(x) cancels, so that last-place difference is all that is left (e.g. 0 vs 2.8e-19).
      CHECK(std::fabs(got - want) <= 1e-12 * std::fabs(want) + 1e-15 * base);
      ++checked;
    }
  }
  CHECK(checked >= 30);
  for (const char* k : {"vit", "rn"}) CHECK(cosine_lr(0.002, 2, 10, 0) == ts[k]["lr_at_step0"].get<double>());
}

TEST_CASE("weight-decay groups are cn_clip's, in named_parameters order", "[train][groups]") {
  const json& ts = train_step_json();
  for (const char* kind : {"vit", "rn"}) {
    ClipModel m = fixture_model(kind);
    AdamW opt(trainable(m), AdamWOptions{});
    std::vector<std::string> g0, g1;
    for (size_t i = 0; i < opt.params().size(); ++i) (opt.group_of(i) == 0 ? g0 : g1).push_back(opt.params()[i].name);
    INFO(kind);
    CHECK(g0 == ts[kind]["param_groups"]["no_weight_decay"].get<std::vector<std::string>>());
    CHECK(g1 == ts[kind]["param_groups"]["weight_decay"].get<std::vector<std::string>>());
  }
  CHECK(no_weight_decay("visual.layer1.0.bn3.weight"));
  CHECK_FALSE(no_weight_decay("bert.embeddings.LayerNorm.weight"));
  CHECK_FALSE(no_weight_decay("visual.layer1.0.downsample.1.weight"));
  CHECK(no_weight_decay("logit_scale"));
}

// The heart of the recipe: one step of cn_clip.training.train.train() on the fixture batch.
TEST_CASE("one training step matches cn_clip (ViT required, ResNet looser)", "[train][parity]") {
  const json& all = train_step_json();
  for (const std::string kind : {"vit", "rn"}) {
    const bool vit = kind == "vit";
    const json& ts = all[kind];
    const json& oj = ts["optimizer"];
    const double loss_tol = 1e-5, after_tol = vit ? 1e-6 : 1e-4, grad_tol = vit ? 1e-5 : 1e-3;
    const double loss_after_tol = vit ? 1e-5 : 2e-3;
    INFO("model " << kind);
    ClipModel m = fixture_model(kind);
    m->train();
    AdamW opt(trainable(m), AdamWOptions{oj["base_lr"].get<double>(), oj["betas"][0].get<double>(),
                                         oj["betas"][1].get<double>(), oj["eps"].get<double>(),
                                         oj["weight_decay"].get<double>()});
    const json& sj = ts["scheduler"];
    const double lr = cosine_lr(sj["base_lr"], sj["warmup"], sj["total_steps"], sj["step"]);
    CHECK(rel_err(lr, ts["lr_at_step0"]) <= 1e-12);

    // Values before the step, to compare the recorded "before" statistics (the load is right).
    std::map<std::string, at::Tensor> before;
    for (const auto& [name, pj] : ts["params"].items()) before[name] = named(m, name).detach().clone();

    StepOptions so;
    so.compute_grad_norm = true;
    StepStats st = train_step(m, opt, {fixture_batch()}, lr, so);

    CHECK(rel_err(st.loss, ts["loss"]) <= loss_tol);
    CHECK(rel_err(st.grad_l2, ts["grad_global_l2"]) <= grad_tol);
    CHECK(std::fabs(st.logit_scale - ts["logit_scale_after_step_and_clamp"].get<double>()) <= 1e-6);
    CHECK(st.i2t_acc == ts["batch_acc"]["i2t"].get<double>());
    CHECK(st.t2i_acc == ts["batch_acc"]["t2i"].get<double>());

    size_t elements_checked = 0;
    for (const auto& [name, pj] : ts["params"].items()) {
      INFO("parameter " << name);
      at::Tensor p = named(m, name).detach().to(at::kDouble);
      at::Tensor g = named(m, name).grad().to(at::kDouble);
      REQUIRE(g.defined());
      at::Tensor b = before[name].to(at::kDouble);
      CHECK(rel_err(b.sum().item<double>(), pj["before"]["sum"]) <= 1e-6);
      const bool key_bias = is_key_bias(name);
      if (!key_bias) {
        at::Tensor pa = p, ga = g;
        const json* stats = &pj;
        if (pj.contains("q_and_v_slices_only")) {  // ViT in_proj_bias: the key third is noise
          int64_t w = p.size(0) / 3;
          pa = at::cat({p.slice(0, 0, w), p.slice(0, 2 * w)});
          ga = at::cat({g.slice(0, 0, w), g.slice(0, 2 * w)});
          stats = &pj["q_and_v_slices_only"];
        }
        // Sums are compared on the tensor's scale (|sum| + L2): many sums nearly cancel, and a
        // relative error of such a sum measures rounding order, not correctness. Elements whose
        // gradient is at the float32 noise floor (|g| < 1e-5) get an Adam update lr*g/(|g|+eps)
        // that rounding decides (README: up to 2*lr apart between correct implementations; our
        // own 1- and 2-thread runs differ by that much), so each such element adds 2*lr of slack.
        const double n_floor = (ga.abs() < 1e-5).sum().item<double>();
        const double sum_want = (*stats)["after"]["sum"], l2_want = (*stats)["after"]["l2"];
        CHECK(std::fabs(pa.sum().item<double>() - sum_want) <=
              after_tol * (std::fabs(sum_want) + l2_want) + 2 * lr * n_floor);
        CHECK(rel_err(pa.norm().item<double>(), l2_want) <= after_tol);
        const double gsum_want = (*stats)["grad"]["sum"], gl2_want = (*stats)["grad"]["l2"];
        CHECK(rel_err(ga.norm().item<double>(), gl2_want) <= grad_tol);
        CHECK(std::fabs(ga.sum().item<double>() - gsum_want) <= grad_tol * (std::fabs(gsum_want) + gl2_want));
      }
      const double grad_l2 = pj["grad"]["l2"];
      for (const auto& e : pj["elements"]) {
        if (e["zero_grad_in_exact_arithmetic"].get<bool>()) continue;
        std::vector<int64_t> idx = e["index"].get<std::vector<int64_t>>();
        at::Tensor pe = p, ge = g;
        for (int64_t k : idx) pe = pe[k], ge = ge[k];
        INFO("element " << e["index"].dump());
        double ew = e["grad"].get<double>();
        CHECK(std::fabs(ge.item<double>() - ew) <= 1e-4 * grad_l2 + 1e-3 * std::fabs(ew));
        CHECK(std::fabs(pe.item<double>() - e["after"].get<double>()) <= (vit ? 1e-6 : 2e-3));
        ++elements_checked;
      }
    }
    CHECK(elements_checked > 50);

    // Whole-model statistics (key biases included: their noise is far below these tolerances' scale).
    double sum_of_sums = 0, sq = 0;
    for (auto& [n, t] : trainable(m)) {
      at::Tensor d = t.detach().to(at::kDouble);
      sum_of_sums += d.sum().item<double>();
      sq += d.pow(2).sum().item<double>();
    }
    CHECK(rel_err(std::sqrt(sq), ts["all_params_after"]["l2_all_params"]) <= (vit ? 1e-6 : 1e-4));
    CHECK(rel_err(sum_of_sums, ts["all_params_after"]["sum_of_param_sums"]) <= 1e-3);

    // BatchNorm statistics were updated by the train-mode forward (ResNet).
    for (const auto& [name, bj] : ts["buffers"].items()) {
      INFO("buffer " << name);
      at::Tensor b = named(m, name).detach().to(at::kDouble);
      if (bj["after"].is_number()) CHECK(b.item<double>() == bj["after"].get<double>());  // num_batches_tracked
      else CHECK(rel_err(b.sum().item<double>(), bj["after"]["sum"]) <= 1e-4);
    }

    // Loss of the same batch after the step (train mode, no gradients).
    {
      at::NoGradGuard ng;
      TrainBatch batch = fixture_batch();
      auto [img, txt, scale] = m->forward(batch.pixels, batch.ids);
      double after = contrastive_loss(img, txt, scale).loss.item<double>();
      CHECK(rel_err(after, ts["loss_second_forward_after_step"]) <= loss_after_tol);
    }
  }
}

TEST_CASE("AdamW equals torch.optim.AdamW step for step, both groups", "[train][adamw]") {
  if (!have_python_torch()) {
    WARN("/usr/bin/python3 with torch not available: skipped");
    return;
  }
  std::string dir = make_temp_dir();
  at::manual_seed(7);
  // Three parameters: two decayed, one not (name with "bias"); five steps of fixed gradients.
  std::vector<std::pair<std::string, at::Tensor>> ps = {{"a.weight", at::randn({5, 3})},
                                                        {"a.bias", at::randn({5})},
                                                        {"b.weight", at::randn({7})}};
  for (auto& [n, t] : ps) t.requires_grad_(true);
  const int steps = 5;
  std::vector<std::vector<at::Tensor>> grads(steps);
  for (int s = 0; s < steps; ++s)
    for (auto& [n, t] : ps) grads[s].push_back(at::randn(t.sizes()) * (s + 1) * 0.3);
  auto dump = [&](const std::string& file, const at::Tensor& t) {
    std::ofstream f(dir + "/" + file, std::ios::binary);
    at::Tensor c = t.detach().contiguous();
    f.write(static_cast<const char*>(c.data_ptr()), c.numel() * 4);
  };
  for (size_t i = 0; i < ps.size(); ++i) dump("p" + std::to_string(i), ps[i].second);
  for (int s = 0; s < steps; ++s)
    for (size_t i = 0; i < ps.size(); ++i) dump("g" + std::to_string(s) + "_" + std::to_string(i), grads[s][i]);

  AdamW opt(ps, AdamWOptions{1e-2, 0.9, 0.98, 1e-6, 0.2});
  for (int s = 0; s < steps; ++s) {
    for (size_t i = 0; i < ps.size(); ++i) ps[i].second.mutable_grad() = grads[s][i].clone();
    opt.set_lr(cosine_lr(1e-2, 2, steps, s));
    opt.step();
  }
  std::string script = R"PY(
import numpy as np, torch, math
d = ")PY" + dir + R"PY("
shapes = [(5, 3), (5,), (7,)]
ps = [torch.from_numpy(np.fromfile(f"{d}/p{i}", dtype=np.float32).reshape(s)).requires_grad_() for i, s in enumerate(shapes)]
names = ["a.weight", "a.bias", "b.weight"]
ex = lambda n: "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
g0 = [p for n, p in zip(names, ps) if ex(n)]
g1 = [p for n, p in zip(names, ps) if not ex(n)]
opt = torch.optim.AdamW([{"params": g0, "weight_decay": 0.}, {"params": g1, "weight_decay": 0.2}], lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
for s in range(5):
    for i, p in enumerate(ps):
        p.grad = torch.from_numpy(np.fromfile(f"{d}/g{s}_{i}", dtype=np.float32).reshape(shapes[i]))
    lr = 1e-2 * (s + 1) / 2 if s < 2 else 0.5 * (1 + np.cos(np.pi * (s - 2) / (5 - 2))) * 1e-2
    for g in opt.param_groups: g["lr"] = lr
    opt.step()
for i, p in enumerate(ps):
    p.detach().numpy().astype(np.float32).tofile(f"{d}/out{i}")
sd = opt.state_dict()
order = g0 + g1
for k, p in enumerate(order):
    st = sd["state"][k]
    st["exp_avg_sq"].numpy().astype(np.float32).tofile(f"{d}/v{names.index([n for n, q in zip(names, ps) if q is p][0])}")
print("ok")
)PY";
  REQUIRE(run_python(script) == 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    INFO("parameter " << ps[i].first);
    std::ifstream f(dir + "/out" + std::to_string(i), std::ios::binary);
    std::vector<float> want(ps[i].second.numel());
    f.read(reinterpret_cast<char*>(want.data()), want.size() * 4);
    REQUIRE(f.gcount() == static_cast<std::streamsize>(want.size() * 4));
    at::Tensor got = ps[i].second.detach().contiguous();
    double maxdiff = (got - at::from_blob(want.data(), got.sizes(), at::kFloat)).abs().max().item<double>();
    CHECK(maxdiff == 0.0);  // the same ATen ops in the same order: bit-identical
  }
  // Groups and state dict layout.
  CHECK(opt.group_size(0) == 1);
  PyPtr sd = opt.state_dict();
  REQUIRE(sd->get("param_groups")->items.size() == 2);
  CHECK(sd->get("param_groups")->items[0]->get("params")->items.size() == 1);
  CHECK(sd->get("param_groups")->items[1]->get("weight_decay")->f == 0.2);
  CHECK(sd->get("state")->get(int64_t{0})->get("step")->kind == PyValue::Kind::tensor);
}

TEST_CASE("feature-caching accumulation equals the full batch", "[train][accum]") {
  // With no dropout and no BatchNorm, accum_freq=2 over two halves gives the gradient of the whole
  // batch for every encoder parameter. logit_scale enters every micro-batch's loss, so (as in
  // cn_clip) it collects the full gradient once per micro-batch: accum_freq times.
  TrainBatch full = fixture_batch();
  ClipModel a = fixture_model("vit"), b = fixture_model("vit");
  a->train();
  b->train();
  AdamW oa(trainable(a), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2}), ob(trainable(b), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2});
  StepStats sa = train_step(a, oa, {full}, 1e-3, StepOptions{});
  std::vector<TrainBatch> halves = {{full.pixels.slice(0, 0, 2), full.ids.slice(0, 0, 2)},
                                    {full.pixels.slice(0, 2, 4), full.ids.slice(0, 2, 4)}};
  StepStats sb = train_step(b, ob, halves, 1e-3, StepOptions{});
  CHECK(rel_err(sb.loss, sa.loss) <= 1e-5);
  auto ta = trainable(a), tb = trainable(b);
  size_t compared = 0;
  for (size_t i = 0; i < ta.size(); ++i) {
    INFO(ta[i].first);
    at::Tensor ga = ta[i].second.grad(), gb = tb[i].second.grad();
    REQUIRE(gb.defined());
    if (ta[i].first == "logit_scale") {
      CHECK(rel_err(gb.item<double>(), 2 * ga.item<double>()) <= 1e-5);
      continue;
    }
    if (is_key_bias(ta[i].first) || ta[i].first.find("in_proj_bias") != std::string::npos) continue;
    double scale = ga.norm().item<double>();
    CHECK((ga - gb).abs().max().item<double>() <= 1e-5 * scale + 1e-9);
    ++compared;
  }
  CHECK(compared > 50);
}

TEST_CASE("gradient checkpointing trains exactly as without it", "[train][checkpointing]") {
  // The checkpointed blocks run their forward without autograd and again, with it, in backward: the
  // same RNG and autocast state, the same gradients, so the same weights step after step.
  TrainBatch batch = fixture_batch();
  ClipModel a = fixture_model("vit"), b = fixture_model("vit");
  a->train();
  b->train();
  a->set_grad_checkpointing(true);
  AdamW oa(trainable(a), AdamWOptions{1e-2, 0.9, 0.98, 1e-6, 0.2}), ob(trainable(b), AdamWOptions{1e-2, 0.9, 0.98, 1e-6, 0.2});
  for (int step = 0; step < 3; ++step) {
    INFO("step " << step);
    StepStats sa = train_step(a, oa, {batch}, 1e-2, StepOptions{}), sb = train_step(b, ob, {batch}, 1e-2, StepOptions{});
    CHECK(sa.loss == sb.loss);
  }
  auto ta = trainable(a), tb = trainable(b);
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    INFO(ta[i].first);
    CHECK(at::equal(ta[i].second, tb[i].second));
  }
}

TEST_CASE("bf16 training keeps float32 masters and rounds the model from them", "[train][precision]") {
  // What the bf16 precision promises on any device: the moments and the update in float32, the
  // model's low-precision copy rounded from the master after every step, float32 tensors wherever
  // cn_clip's fp16 layout keeps them, and the masters as what checkpoints hold.
  ClipModel m = fixture_model("vit");
  m->train();
  const PrecisionPlan plan = precision_plan("bf16", at::kCPU);
  CHECK(plan.bf16_weights);
  CHECK_FALSE(plan.autocast);
  CHECK_FALSE(plan.fused_adamw);  // CPU: the single-tensor step
  AdamW opt(trainable(m), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2});
  std::map<std::string, at::Tensor> fp32 = convert_to_bf16_training(m, opt);
  REQUIRE(opt.has_master_weights());
  REQUIRE(fp32.size() >= opt.params().size());
  TrainBatch batch = fixture_batch();
  const AdamW::Param* scale = nullptr;
  for (const auto& p : opt.params())
    if (p.name == "logit_scale") scale = &p;
  REQUIRE(scale != nullptr);
  scale->master.fill_(5.0);  // above cn_clip's clamp: the step must clamp the master, not only the model's copy
  for (int step = 0; step < 2; ++step) train_step(m, opt, {batch}, 1e-3, StepOptions{});
  CHECK(scale->master.item<double>() <= kLogitScaleMax);
  CHECK(m->logit_scale().item<double>() <= kLogitScaleMax);
  size_t low = 0;
  for (size_t i = 0; i < opt.params().size(); ++i) {
    const auto& p = opt.params()[i];
    INFO(p.name);
    CHECK(p.master.scalar_type() == at::kFloat);
    CHECK(p.exp_avg.scalar_type() == at::kFloat);
    CHECK(at::equal(p.tensor.detach(), p.master.to(p.tensor.scalar_type())));
    CHECK(fp32.at(p.name).is_same(p.master));  // checkpoints read the masters
    if (p.tensor.scalar_type() == at::kBFloat16) ++low;
    else CHECK(ClipModelImpl::keeps_float32(p.name));
  }
  CHECK(low > 0);
}

TEST_CASE("packed master weights: the same tensors, the same steps", "[train][precision]") {
  // The fused CUDA step packs each group's bf16 parameters, masters and float32 gradient copies into
  // one buffer each (AdamW::pack_master_weights). Packing must leave every holder's tensors valid
  // (the model's parameters, the trainer's checkpoint masters) and change no value: checked here
  // with the single-tensor step, which updates the packed masters in place.
  auto run = [](bool pack) {
    ClipModel m = fixture_model("vit");
    m->train();
    AdamW opt(trainable(m), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2});
    std::map<std::string, at::Tensor> fp32 = convert_to_bf16_training(m, opt);
    TrainBatch batch = fixture_batch();
    train_step(m, opt, {batch}, 1e-3, StepOptions{});
    std::map<std::string, at::Tensor> params_before;
    for (const auto& p : m->named_parameters()) params_before.emplace(p.key(), p.value());
    int packed = pack ? opt.pack_master_weights() : 0;
    for (int step = 0; step < 2; ++step) train_step(m, opt, {batch}, 1e-3, StepOptions{});
    if (pack) {
      CHECK(packed > 0);
      CHECK(opt.pack_master_weights() == packed);  // already packed: nothing moves
      int views = 0;
      for (const auto& p : opt.params()) {
        INFO(p.name);
        CHECK(fp32.at(p.name).is_same(p.master));              // the checkpoint's masters follow the updates
        CHECK(params_before.at(p.name).is_same(p.tensor));     // the model's parameter is the same tensor
        CHECK(at::equal(p.tensor.detach(), p.master.to(p.tensor.scalar_type())));
        if (p.tensor.scalar_type() == at::kBFloat16) views += p.tensor.storage().nbytes() > p.tensor.nbytes();
      }
      CHECK(views == packed);  // each packed parameter is a view into its group's buffer
    }
    std::map<std::string, at::Tensor> out;
    for (const auto& p : opt.params()) out.emplace(p.name, p.master.clone());
    return out;
  };
  const auto plain = run(false), packed = run(true);
  REQUIRE(plain.size() == packed.size());
  for (const auto& [name, t] : plain) {
    INFO(name);
    CHECK(at::equal(t, packed.at(name)));  // bit for bit
  }
}

TEST_CASE("precision names: amp-fp16 needs CUDA, unknown names are usage errors", "[train][precision]") {
  CHECK_THROWS_AS(precision_plan("amp-fp16", at::kCPU), UsageError);
  CHECK_THROWS_AS(precision_plan("fp16", at::kCPU), UsageError);
  CHECK_FALSE(precision_plan("fp32", at::kCPU).autocast);
  CHECK(precision_plan("amp", at::kCPU).autocast);
  CHECK(precision_plan("amp", at::kCPU).autocast_dtype == at::kBFloat16);
  CHECK_FALSE(precision_plan("amp", at::kCPU).fused_adamw);
}

TEST_CASE("a non-finite loss stops before the optimizer step", "[train][nan]") {
  ClipModel m = fixture_model("vit");
  m->train();
  AdamW opt(trainable(m), AdamWOptions{});
  TrainBatch batch = fixture_batch();
  batch.pixels[0][0][0][0] = std::nan("");
  std::vector<at::Tensor> before;
  for (auto& [n, t] : trainable(m)) before.push_back(t.detach().clone());
  REQUIRE_THROWS_AS(train_step(m, opt, {batch}, 1e-3, StepOptions{}), TrainingError);
  auto after = trainable(m);
  for (size_t i = 0; i < before.size(); ++i) CHECK(at::equal(before[i], after[i].second.detach()));
  for (const auto& p : opt.params()) CHECK_FALSE(p.exp_avg.defined());
}

TEST_CASE("deferred step values: same steps and statistics; a non-finite loss skips every later update", "[train][nan]") {
  ClipModel a = fixture_model("vit"), b = fixture_model("vit");
  a->train();
  b->train();
  AdamW oa(trainable(a), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2}), ob(trainable(b), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2});
  at::Tensor poison = at::zeros({});
  StepOptions deferred;
  deferred.poison = &poison;
  std::vector<StepStats> now, later;
  for (int i = 0; i < 3; ++i) {
    now.push_back(train_step(a, oa, {fixture_batch()}, 1e-3, StepOptions{}));
    later.push_back(train_step(b, ob, {fixture_batch()}, 1e-3, deferred));
    REQUIRE(later.back().pending.defined());
  }
  REQUIRE(settle(later) == -1);
  for (int i = 0; i < 3; ++i) {
    CHECK(later[i].loss == now[i].loss);
    CHECK(later[i].i2t_acc == now[i].i2t_acc);
    CHECK(later[i].t2i_acc == now[i].t2i_acc);
    CHECK(later[i].logit_scale == now[i].logit_scale);
    CHECK_FALSE(later[i].pending.defined());
  }
  auto ta = trainable(a), tb = trainable(b);
  for (size_t i = 0; i < ta.size(); ++i) CHECK(at::equal(ta[i].second, tb[i].second));

  // A NaN pixel: the step does not throw, the update is skipped, and so is every later one (the
  // poison sticks) until the caller settles and finds the bad step.
  std::vector<at::Tensor> before;
  for (auto& [n, t] : trainable(b)) before.push_back(t.detach().clone());
  TrainBatch bad = fixture_batch();
  bad.pixels[0][0][0][0] = std::nan("");
  std::vector<StepStats> more;
  more.push_back(train_step(b, ob, {fixture_batch()}, 1e-3, deferred));
  more.push_back(train_step(b, ob, {bad}, 1e-3, deferred));
  more.push_back(train_step(b, ob, {fixture_batch()}, 1e-3, deferred));
  CHECK(poison.item<float>() == 1.f);
  REQUIRE(settle(more) == 1);
  CHECK(std::isfinite(more[0].loss));
  CHECK_THROWS_AS(check_loss(more[1].loss), TrainingError);
  // The first step of `more` was good and updated the weights; the two after it changed nothing.
  train_step(a, oa, {fixture_batch()}, 1e-3, StepOptions{});
  auto ta2 = trainable(a), tb2 = trainable(b);
  for (size_t i = 0; i < ta2.size(); ++i) CHECK(at::equal(ta2[i].second, tb2[i].second));
  CHECK(oa.params().front().step == ob.params().front().step);
}

TEST_CASE("a step graph that cannot capture runs the ordinary step and says why", "[train][graph]") {
  // Off CUDA (or in a build without CUDA graphs) StepGraph::unsupported names the reason and
  // train_step runs the ordinary step: the same statistics and weights as without a graph.
  ClipModel a = fixture_model("vit"), b = fixture_model("vit");
  a->train();
  b->train();
  AdamW oa(trainable(a), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2}), ob(trainable(b), AdamWOptions{1e-3, 0.9, 0.98, 1e-6, 0.2});
  at::Tensor pa = at::zeros({}), pb = at::zeros({});
  StepGraph graph;
  StepOptions plain, graphed;
  plain.poison = &pa;
  graphed.poison = &pb;
  graphed.graph = &graph;
  const std::string why = StepGraph::unsupported(b, ob, {fixture_batch()}, graphed);
  CHECK_FALSE(why.empty());
  CHECK(why.find("CUDA") != std::string::npos);
  std::vector<StepStats> sa, sb;
  for (int i = 0; i < 4; ++i) {
    sa.push_back(train_step(a, oa, {fixture_batch()}, 1e-3, plain));
    sb.push_back(train_step(b, ob, {fixture_batch()}, 1e-3, graphed));
  }
  REQUIRE(settle(sa) == -1);
  REQUIRE(settle(sb) == -1);
  for (int i = 0; i < 4; ++i) CHECK(sa[i].loss == sb[i].loss);
  CHECK_FALSE(graph.captured());
  CHECK(graph.replays() == 0);
  auto ta = trainable(a), tb = trainable(b);
  for (size_t i = 0; i < ta.size(); ++i) CHECK(at::equal(ta[i].second, tb[i].second));
}

TEST_CASE("epoch order pads by wrapping and shuffles reproducibly", "[train][data]") {
  auto o = epoch_order(10, 4, 123, 0);
  REQUIRE(o.size() == 12);
  std::multiset<int64_t> ms(o.begin(), o.end());
  for (int64_t i = 0; i < 10; ++i) CHECK(ms.count(i) == (i < 2 ? 2u : 1u));  // padded indices 10, 11 -> samples 0, 1
  CHECK(o == epoch_order(10, 4, 123, 0));
  CHECK(o != epoch_order(10, 4, 123, 1));
  CHECK(o != epoch_order(10, 4, 124, 0));
  auto plain = epoch_order(10, 4, 123, 0, false);
  CHECK(plain == std::vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1}));
  CHECK(epoch_order(8, 4, 1, 0).size() == 8);
}

TEST_CASE("training checkpoints round-trip and load in torch", "[train][checkpoint]") {
  std::string dir = make_temp_dir();
  ClipModel m = fixture_model("vit");
  m->train();
  AdamW opt(trainable(m), AdamWOptions{2e-3, 0.9, 0.98, 1e-6, 0.2});
  train_step(m, opt, {fixture_batch()}, 1e-3, StepOptions{});
  train_step(m, opt, {fixture_batch()}, 2e-3, StepOptions{});
  ResumeState rs;
  rs.step = 2;
  rs.epoch = 1;
  rs.batch_in_epoch = 3;
  rs.cpu_rng = at::detail::getDefaultCPUGenerator().get_state();
  rs.extra = {{"seed", 5}};
  std::string path = dir + "/epoch_latest.pt";
  save_training_checkpoint(path, m, &opt, 1, 2, "unit", &rs);

  // Ours -> ours: weights, optimizer moments, resume position.
  Checkpoint ck = load_checkpoint(path);
  CHECK(ck.had_module_prefix);
  CHECK(ck.epoch == 1);
  CHECK(ck.step == 2);
  CHECK(ck.name == "unit");
  ClipModel m2(testutil::fixture_config("vit"));
  load_weights(m2, ck.state_dict, true);
  auto s1 = model_state(m), s2 = model_state(m2);
  REQUIRE(s1.size() == s2.size());
  for (size_t i = 0; i < s1.size(); ++i) CHECK(at::equal(s1[i].second.detach(), s2[i].second.detach()));
  AdamW opt2(trainable(m2), AdamWOptions{2e-3, 0.9, 0.98, 1e-6, 0.2});
  REQUIRE(ck.root);
  REQUIRE(ck.root->get("optimizer"));
  opt2.load_state_dict(*ck.root->get("optimizer"));
  for (size_t i = 0; i < opt.params().size(); ++i) {
    CHECK(opt2.params()[i].step == 2);
    CHECK(at::equal(opt.params()[i].exp_avg, opt2.params()[i].exp_avg));
    CHECK(at::equal(opt.params()[i].exp_avg_sq, opt2.params()[i].exp_avg_sq));
  }
  ResumeState back;
  REQUIRE(read_resume_state(ck.root, back));
  CHECK(back.step == 2);
  CHECK(back.epoch == 1);
  CHECK(back.batch_in_epoch == 3);
  CHECK(at::equal(back.cpu_rng, rs.cpu_rng));
  CHECK(back.extra["seed"] == 5);
  // One more identical step on both: the restored optimizer continues exactly.
  train_step(m, opt, {fixture_batch()}, 1e-3, StepOptions{});
  train_step(m2, opt2, {fixture_batch()}, 1e-3, StepOptions{});
  s1 = model_state(m), s2 = model_state(m2);
  for (size_t i = 0; i < s1.size(); ++i) CHECK(at::equal(s1[i].second.detach(), s2[i].second.detach()));

  // torch.load: cn_clip's layout, "module." keys, an AdamW state dict torch accepts.
  if (!have_python_torch()) {
    WARN("/usr/bin/python3 with torch not available: torch.load check skipped");
    return;
  }
  std::string script = R"PY(
import torch, collections
ck = torch.load(")PY" + path + R"PY(", map_location="cpu")
assert isinstance(ck, dict), type(ck)
for k in ["epoch", "step", "name", "state_dict", "optimizer"]:
    assert k in ck, k
assert ck["epoch"] == 1 and ck["step"] == 2 and ck["name"] == "unit"
sd = ck["state_dict"]
assert isinstance(sd, collections.OrderedDict), type(sd)
keys = list(sd.keys())
assert all(k.startswith("module.") for k in keys), keys[:3]
assert keys[0] == "module.text_projection" and keys[1] == "module.logit_scale", keys[:2]
assert all(v.dtype == torch.float32 for v in sd.values())
opt = ck["optimizer"]
assert set(opt.keys()) == {"state", "param_groups"}
g = opt["param_groups"]
assert len(g) == 2 and g[0]["weight_decay"] == 0.0 and g[1]["weight_decay"] == 0.2
assert g[0]["betas"] == (0.9, 0.98) and g[0]["eps"] == 1e-6
n = len(g[0]["params"]) + len(g[1]["params"])
assert sorted(g[0]["params"] + g[1]["params"]) == list(range(n))
st = opt["state"][0]
assert float(st["step"]) == 2.0 and st["exp_avg"].shape == st["exp_avg_sq"].shape
# The optimizer state loads into torch.optim.AdamW over the same parameters.
params = [torch.nn.Parameter(sd["module." + k].clone()) for k in []]
ex = lambda k: "bn" in k or "ln" in k or "bias" in k or "logit_scale" in k
names = [k[len("module."):] for k in keys if not k.endswith("num_batches_tracked") and "running_" not in k]
p0 = [torch.nn.Parameter(sd["module." + k].clone()) for k in names if ex(k)]
p1 = [torch.nn.Parameter(sd["module." + k].clone()) for k in names if not ex(k)]
o = torch.optim.AdamW([{"params": p0, "weight_decay": 0.}, {"params": p1, "weight_decay": 0.2}], lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
o.load_state_dict(opt)
r = ck["clip_cpp_resume"]
assert r["step"] == 2 and r["batch_in_epoch"] == 3
print("ok", len(keys))
)PY";
  std::string out;
  CHECK(run_python(script, &out) == 0);
  CHECK(out.find("ok") != std::string::npos);
}

TEST_CASE("training curves are a well-formed SVG chart", "[train][curves]") {
  std::vector<CurvePoint> loss, lr, r1;
  for (int s = 10; s <= 200; s += 10) {
    loss.push_back({s, 3.0 * std::exp(-s / 80.0) + 0.2});
    lr.push_back({s, cosine_lr(5e-4, 20, 200, s)});
  }
  r1 = {{50, 12.5}, {100, 30.0}, {150, 41.25}, {200, 44.0}};
  std::vector<CurvePanel> panels = {
      {"Loss", "contrastive loss", {{"train", "#1f77b4", loss, false}, {"validation <val>", "#d62728", {{100, 1.1}}, true}}, false},
      {"Learning rate", "lr", {{"lr", "#2ca02c", lr, false}}, false},
      {"Validation Recall@1", "R@1 (%)", {{"text -> image", "#9467bd", r1, true}}, false}};
  std::string svg = render_curves_svg("run & test", panels, 200);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("run &amp; test") != std::string::npos);
  CHECK(svg.find("validation &lt;val&gt;") != std::string::npos);
  CHECK(svg.find("<polyline") != std::string::npos);
  CHECK(svg.find(">step<") != std::string::npos);
  CHECK(svg.find(">0.0004<") != std::string::npos);  // a nice y tick of the lr panel
  CHECK(svg.find(">200<") != std::string::npos);     // last x tick
  if (have_python_torch()) {
    std::string dir = make_temp_dir();
    {
      std::ofstream f(dir + "/c.svg");
      f << svg;
    }
    std::string out;
    CHECK(run_python("import xml.etree.ElementTree as E\nr=E.parse('" + dir +
                         "/c.svg').getroot()\nns='{http://www.w3.org/2000/svg}'\n"
                         "print(len(r.findall('.//'+ns+'polyline')), len(r.findall('.//'+ns+'g')))\n",
                     &out) == 0);
    CHECK(out.find("4 3") != std::string::npos);
  }
  // Empty panels (no data yet) still render.
  CHECK(render_curves_svg("empty", {{"Loss", "loss", {}, false}}, 0).find("</svg>") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Whole runs on a small slice of data/shapes-zh with the demo model.

namespace {

// <dir>/{train,valid}_{imgs.tsv,texts.jsonl}: the first n_train / n_valid images of shapes-zh and
// their captions, plus the vocab.
std::string make_small_dataset(size_t n_train, size_t n_valid) {
  std::string src = testutil::source_dir() + "/data/shapes-zh";
  std::string dir = make_temp_dir();
  for (auto [split, n] : {std::pair<std::string, size_t>{"train", n_train}, {"valid", n_valid}}) {
    std::ifstream in(src + "/" + split + "_imgs.tsv");
    REQUIRE(in.good());
    std::ofstream out(dir + "/" + split + "_imgs.tsv");
    std::set<int64_t> ids;
    std::string line;
    while (ids.size() < n && std::getline(in, line)) {
      out << line << "\n";
      ids.insert(std::stoll(line.substr(0, line.find('\t'))));
    }
    std::ifstream tin(src + "/" + split + "_texts.jsonl");
    std::ofstream tout(dir + "/" + split + "_texts.jsonl");
    while (std::getline(tin, line)) {
      json j = json::parse(line);
      if (ids.count(j["image_ids"][0].get<int64_t>())) tout << line << "\n";
    }
  }
  std::ifstream v(src + "/vocab.txt");
  std::ofstream vo(dir + "/vocab.txt");
  vo << v.rdbuf();
  return dir;
}

TrainOptions small_run(const std::string& data, const std::string& out) {
  std::string src = testutil::source_dir() + "/data/shapes-zh";
  TrainOptions o;
  o.data_dir = data;
  o.model.vision_model = src + "/ViT-Demo.json";
  // The demo text tower without dropout, as data/shapes-zh ships it, would leave the replay of
  // dropout masks on resume untested: these runs use it with cn_clip's dropout of 0.1.
  json text = json::parse(read_file(src + "/RBT-Demo.json"));
  text["text_attention_probs_dropout_prob"] = 0.1;
  text["text_hidden_dropout_prob"] = 0.1;
  o.model.text_model = data + "/RBT-Dropout.json";
  write_file_atomic(o.model.text_model, text.dump(2));
  o.runtime.batch_size = 8;
  o.valid_batch_size = 8;
  o.lr = 2e-3;
  o.warmup = 2;
  o.max_steps = 7;
  o.log_interval = 1;
  o.seed = 11;
  o.use_augment = true;  // per-(seed, epoch, sample) augmentation must replay exactly too
  o.runtime.threads = 2;
  o.runtime.quiet = true;
  o.output_dir = out;
  return o;
}

std::vector<json> read_metrics(const std::string& run) {
  std::ifstream f(run + "/metrics.jsonl");
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

}  // namespace

TEST_CASE("interrupted + resumed equals uninterrupted, bit for bit", "[train][run][resume]") {
  std::string data = make_small_dataset(8, 4);  // 40 pairs: 5 batches of 8 per epoch, 7 steps = 2 epochs
  std::string root = make_temp_dir();

  TrainSummary a = run_finetune(small_run(data, root + "/straight"));
  CHECK(a.steps == 7);
  CHECK_FALSE(a.stopped_early);

  TrainOptions first = small_run(data, root + "/resumed");
  first.stop_after_steps = 3;  // mid-epoch
  TrainSummary b1 = run_finetune(first);
  CHECK(b1.stopped_early);
  CHECK(b1.steps == 3);
  CHECK_FALSE(file_exists(root + "/resumed/DONE"));
  // As clip-finetune --resume does: the stored options, then the run continues.
  TrainOptions again = TrainOptions::stored_for_resume(root + "/resumed");
  again.runtime.quiet = true;
  CHECK(again.max_steps == 7);
  CHECK(again.seed == 11);
  TrainSummary b2 = run_finetune(again);
  CHECK(b2.steps == 7);
  CHECK(file_exists(root + "/resumed/DONE"));

  Checkpoint ca = load_checkpoint(root + "/straight/checkpoints/epoch_latest.pt");
  Checkpoint cb = load_checkpoint(root + "/resumed/checkpoints/epoch_latest.pt");
  CHECK(ca.step == 7);
  CHECK(cb.step == 7);
  REQUIRE(ca.state_dict.keys == cb.state_dict.keys);
  size_t differing = 0;
  for (const auto& k : ca.state_dict.keys)
    if (!at::equal(tensor_view(ca.state_dict.at(k)), tensor_view(cb.state_dict.at(k)))) ++differing;
  CHECK(differing == 0);
  // The optimizer moments too.
  PyPtr oa = ca.root->get("optimizer")->get("state"), ob = cb.root->get("optimizer")->get("state");
  REQUIRE(oa->entries.size() == ob->entries.size());
  for (size_t i = 0; i < oa->entries.size(); ++i)
    CHECK(at::equal(tensor_view(oa->entries[i].second->get("exp_avg_sq")->tensor),
                    tensor_view(ob->entries[i].second->get("exp_avg_sq")->tensor)));
  // Stopped exactly at the end of an epoch: that epoch's validation and epoch1.pt come first, then
  // the resumed run starts the next epoch; same weights again.
  TrainOptions at_boundary = small_run(data, root + "/boundary");
  at_boundary.stop_after_steps = 5;
  run_finetune(at_boundary);
  CHECK(file_exists(root + "/boundary/checkpoints/epoch1.pt"));
  TrainOptions rest = TrainOptions::stored_for_resume(root + "/boundary/checkpoints/epoch_latest.pt");
  rest.runtime.quiet = true;
  CHECK(run_finetune(rest).steps == 7);
  Checkpoint cc = load_checkpoint(root + "/boundary/checkpoints/epoch_latest.pt");
  size_t differing_c = 0;
  for (const auto& k : ca.state_dict.keys)
    if (!at::equal(tensor_view(ca.state_dict.at(k)), tensor_view(cc.state_dict.at(k)))) ++differing_c;
  CHECK(differing_c == 0);
  // The metrics log has each step once, and the same losses.
  auto ma = read_metrics(root + "/straight"), mb = read_metrics(root + "/resumed");
  std::vector<double> la, lb;
  for (const auto& j : ma)
    if (j["type"] == "train") la.push_back(j["loss"]);
  for (const auto& j : mb)
    if (j["type"] == "train") lb.push_back(j["loss"]);
  CHECK(la.size() == 7);
  CHECK(la == lb);
  set_log_level(LogLevel::info);
}

TEST_CASE("--resume falls back to the newest complete checkpoint when epoch_latest.pt is missing",
          "[train][run][resume]") {
  std::string data = make_small_dataset(8, 4);
  std::string root = make_temp_dir();
  TrainOptions first = small_run(data, root + "/run");
  first.save_step_frequency = 1;
  first.stop_after_steps = 3;
  first.no_validation = true;
  run_finetune(first);
  REQUIRE(file_exists(root + "/run/checkpoints/epoch_1_3.pt"));
  // A kill between writing epoch_1_3.pt and epoch_latest.pt.
  REQUIRE(::unlink((root + "/run/checkpoints/epoch_latest.pt").c_str()) == 0);
  TrainOptions again = TrainOptions::stored_for_resume(root + "/run");
  again.runtime.quiet = true;
  TrainSummary s = run_finetune(again);
  CHECK(s.steps == 7);
  CHECK(file_exists(root + "/run/DONE"));
  CHECK(load_checkpoint(root + "/run/checkpoints/epoch_latest.pt").step == 7);
  set_log_level(LogLevel::info);
}

TEST_CASE("an undecodable image in a training split names the file, line and image_id", "[train][run][data]") {
  std::string data = make_small_dataset(8, 4);
  // Line 3 of the training TSV: a JPEG cut in half.
  std::ifstream in(data + "/train_imgs.tsv");
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  in.close();
  REQUIRE(lines.size() >= 3);
  const std::string id = lines[2].substr(0, lines[2].find('\t'));
  const auto bytes = base64_decode(lines[2].substr(lines[2].find('\t') + 1));
  lines[2] = id + "\t" + base64_encode(bytes.data(), bytes.size() / 2);
  std::ofstream out(data + "/train_imgs.tsv");
  for (const auto& l : lines) out << l << "\n";
  out.close();
  TrainOptions o = small_run(data, make_temp_dir() + "/run");
  o.no_validation = true;
  try {
    run_finetune(o);
    FAIL("a truncated JPEG trained");
  } catch (const DataError& e) {
    const std::string m = e.what();
    INFO(m);
    CHECK(m.find("train_imgs.tsv:3") != std::string::npos);
    CHECK(m.find("image_id " + id) != std::string::npos);
    CHECK(m.find("truncated") != std::string::npos);
  }
  set_log_level(LogLevel::info);
}

TEST_CASE("a run folder holds params, metrics, curves and cn_clip checkpoints; it is never overwritten",
          "[train][run]") {
  std::string data = make_small_dataset(8, 4);
  std::string run = make_temp_dir() + "/run";
  TrainOptions o = small_run(data, run);
  o.use_augment = false;
  o.max_steps = 5;  // exactly one epoch
  o.save_step_frequency = 2;
  TrainSummary s = run_finetune(o);
  CHECK(s.steps == 5);
  json params = read_json(run + "/params.json");
  CHECK(params["options"]["lr"] == 2e-3);
  CHECK(params["resolved"]["max_steps"] == 5);
  CHECK(params["resolved"]["train_pairs"] == 40);
  for (const char* f : {"epoch1.pt", "epoch_latest.pt", "epoch_1_2.pt", "epoch_1_4.pt", "vocab.txt", "ViT-Demo.json",
                        "RBT-Dropout.json"})
    CHECK(file_exists(run + "/checkpoints/" + f));
  auto metrics = read_metrics(run);
  int train_lines = 0, val_lines = 0;
  for (const auto& j : metrics) {
    if (j["type"] == "train") {
      ++train_lines;
      for (const char* k : {"step", "epoch", "loss", "lr", "logit_scale", "samples_per_s"}) CHECK(j.contains(k));
    } else if (j["type"] == "val") {
      ++val_lines;
      for (const char* k : {"val_loss", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"}) CHECK(j.contains(k));
      CHECK(j["t2i_r10"].get<double>() >= j["t2i_r1"].get<double>());
    }
  }
  CHECK(train_lines == 5);
  CHECK(val_lines == 1);
  std::string svg = read_file(run + "/curves.svg");
  CHECK(svg.find("Validation Recall@1") != std::string::npos);
  // The epoch checkpoint is a weights file every tool reads; our metadata is there.
  Checkpoint ck = load_checkpoint(run + "/checkpoints/epoch1.pt");
  CHECK(ck.epoch == 1);
  CHECK(ck.step == 5);
  CHECK(ck.name == "run");
  // Not again into the same folder.
  CHECK_THROWS_AS(run_finetune(o), TrainingError);
  set_log_level(LogLevel::info);
}

TEST_CASE("a diverging run stops with TrainingError and keeps the last good checkpoint", "[train][run][nan]") {
  std::string data = make_small_dataset(8, 4);
  std::string run = make_temp_dir() + "/run";
  TrainOptions o = small_run(data, run);
  o.use_augment = false;
  o.lr = 1e30;
  o.warmup = 1;
  o.save_step_frequency = 1;
  o.no_validation = true;
  try {
    run_finetune(o);
    FAIL("no TrainingError");
  } catch (const TrainingError& e) {
    std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("loss became") != std::string::npos);
    CHECK(msg.find("epoch_latest.pt") != std::string::npos);
    CHECK(e.exit_code() == kExitTraining);
  }
  Checkpoint ck = load_checkpoint(run + "/checkpoints/epoch_latest.pt");
  REQUIRE(ck.step.has_value());
  CHECK(*ck.step >= 1);
  CHECK_FALSE(file_exists(run + "/DONE"));
  set_log_level(LogLevel::info);
}
