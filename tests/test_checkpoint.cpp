// Checkpoint I/O: torch.save zip reading/writing (checked against the reference fixtures and
// against Python's torch.load), safetensors, Hugging Face folders, hostile and damaged files.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <unistd.h>

#include "clip/checkpoint.h"
#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/pickle.h"
#include "clip/zip.h"
#include "util.h"

using namespace clip;

namespace {

double element(const TensorData& t, int64_t flat) {
  // flat index in row-major order -> strided offset
  int64_t off = 0;
  for (size_t d = t.shape.size(); d-- > 0;) {
    off += (flat % t.shape[d]) * t.strides[d];
    flat /= t.shape[d];
  }
  const uint8_t* p = t.data + off * int64_t(dtype_size(t.dtype));
  switch (t.dtype) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::i64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    case DType::i32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::f16: {
      uint16_t h; std::memcpy(&h, p, 2);
      int e = (h >> 10) & 0x1F, m = h & 0x3FF;
      double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
      return (h & 0x8000) ? -v : v;
    }
    case DType::bf16: { uint16_t h; std::memcpy(&h, p, 2); uint32_t b = uint32_t(h) << 16; float v; std::memcpy(&v, &b, 4); return v; }
    case DType::i16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case DType::u8: case DType::b1: return *p;
    case DType::i8: return int8_t(*p);
  }
  return 0;
}

std::string tmpdir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/clip_ckpt_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    return std::string(tmpl);
  }();
  return dir;
}

std::string slurp(const std::string& path) { return read_file(path); }

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream o(path, std::ios::binary);
  o.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(o.good());
}

// Runs a command and returns its stdout; REQUIREs exit status 0.
std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  INFO(cmd << "\n" << out);
  REQUIRE(rc == 0);
  return out;
}

// An owned tensor filled with `f(i)` in row-major order.
template <class F>
TensorData make_tensor(DType dt, std::vector<int64_t> shape, F f) {
  TensorData t = owned_tensor(dt, std::move(shape));
  uint8_t* p = const_cast<uint8_t*>(t.data);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double v = f(i);
    switch (dt) {
      case DType::f32: { float x = float(v); std::memcpy(p + 4 * i, &x, 4); break; }
      case DType::f64: { std::memcpy(p + 8 * i, &v, 8); break; }
      case DType::i64: { int64_t x = int64_t(v); std::memcpy(p + 8 * i, &x, 8); break; }
      case DType::i32: { int32_t x = int32_t(v); std::memcpy(p + 4 * i, &x, 4); break; }
      case DType::f16: {  // exact for the small integers / halves used here
        float x = float(v);
        uint32_t b; std::memcpy(&b, &x, 4);
        uint16_t h = uint16_t((b >> 16) & 0x8000);
        int e = int((b >> 23) & 0xFF) - 127 + 15;
        if (x != 0) h |= uint16_t((e << 10) | ((b >> 13) & 0x3FF));
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::bf16: { float x = float(v); uint32_t b; std::memcpy(&b, &x, 4); uint16_t h = uint16_t(b >> 16); std::memcpy(p + 2 * i, &h, 2); break; }
      case DType::u8: case DType::b1: p[i] = uint8_t(v); break;
      case DType::i8: p[i] = uint8_t(int8_t(v)); break;
      case DType::i16: { int16_t x = int16_t(v); std::memcpy(p + 2 * i, &x, 2); break; }
    }
  }
  return t;
}

int64_t float_bits(double d) {
  int64_t b;
  std::memcpy(&b, &d, 8);
  return b;
}

// The same description of a value that the Python helper below prints, for comparisons.
nlohmann::json describe(const PyPtr& v) {
  using K = PyValue::Kind;
  nlohmann::json j;
  if (!v || v->kind == K::none) return {{"none", nullptr}};
  switch (v->kind) {
    case K::boolean: return {{"bool", v->b}};
    case K::integer: return {{"int", v->i}};
    case K::floating: return {{"float", float_bits(v->f)}};
    case K::string: return {{"str", v->s}};
    case K::bytes: {
      std::string hex;
      char b[3];
      for (unsigned char c : v->s) { std::snprintf(b, sizeof b, "%02x", c); hex += b; }
      return {{"bytes", hex}};
    }
    case K::list: case K::tuple: {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& x : v->items) a.push_back(describe(x));
      return {{v->kind == K::list ? "list" : "tuple", a}};
    }
    case K::dict: {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& [k, x] : v->entries) a.push_back({describe(k), describe(x)});
      return {{v->ordered ? "odict" : "dict", a}};
    }
    case K::tensor: {
      const TensorData& t = v->tensor;
      double sum = 0;
      nlohmann::json first = nlohmann::json::array();
      for (int64_t i = 0; i < t.numel(); ++i) {
        double e = element(t, i);
        sum += e;
        if (i < 4) first.push_back(e);
      }
      return {{"tensor", dtype_name(t.dtype)}, {"shape", t.shape}, {"sum", sum}, {"first", first}};
    }
    default: return {{"other", v->s}};
  }
}

// Equality of two descriptions; tensor sums compared with a relative tolerance (summation order).
bool same_desc(const nlohmann::json& a, const nlohmann::json& b, std::string& where) {
  if (a.is_object() && b.is_object() && a.contains("sum") && b.contains("sum")) {
    double x = a["sum"], y = b["sum"];
    if (std::abs(x - y) > 1e-6 * (1 + std::abs(y))) { where = "sum " + a.dump() + " vs " + b.dump(); return false; }
    nlohmann::json a2 = a, b2 = b;
    a2.erase("sum");
    b2.erase("sum");
    if (a2 != b2) { where = a.dump() + " vs " + b.dump(); return false; }
    return true;
  }
  if (a.is_number() && b.is_number()) {
    if (a != b) { where = a.dump() + " vs " + b.dump(); return false; }
    return true;
  }
  if (a.type() != b.type() || a.size() != b.size()) { where = a.dump().substr(0, 300) + " vs " + b.dump().substr(0, 300); return false; }
  if (a.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      if (!b.contains(it.key())) { where = "key " + it.key(); return false; }
      if (!same_desc(it.value(), b[it.key()], where)) return false;
    }
    return true;
  }
  if (a.is_array()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_desc(a[i], b[i], where)) return false;
    return true;
  }
  if (a != b) { where = a.dump() + " vs " + b.dump(); return false; }
  return true;
}

// A cn_clip-like checkpoint with an optimizer-like structure exercising every value kind.
PyPtr sample_root() {
  auto sd = PyValue::dict(true);
  sd->set("module.text_projection", PyValue::from_tensor(make_tensor(DType::f32, {4, 3}, [](int64_t i) { return 0.25 * i - 1; })));
  sd->set("module.logit_scale", PyValue::from_tensor(make_tensor(DType::f32, {}, [](int64_t) { return 3.3; })));
  sd->set("module.half", PyValue::from_tensor(make_tensor(DType::f16, {2, 5}, [](int64_t i) { return 0.5 * i - 2; })));
  sd->set("module.bf", PyValue::from_tensor(make_tensor(DType::bf16, {3}, [](int64_t i) { return 1.5 * i; })));
  sd->set("module.visual.bn1.num_batches_tracked",
          PyValue::from_tensor(make_tensor(DType::i64, {}, [](int64_t) { return 12345; })));
  sd->set("module.ids", PyValue::from_tensor(make_tensor(DType::i64, {6}, [](int64_t i) { return (i - 3) * 5000000000.0; })));
  sd->set("module.mask", PyValue::from_tensor(make_tensor(DType::b1, {5}, [](int64_t i) { return i % 2; })));
  sd->set("module.empty", PyValue::from_tensor(make_tensor(DType::f32, {0, 7}, [](int64_t) { return 0; })));
  // non-contiguous: the transpose of a 3x4 matrix, as a strided view
  TensorData base = make_tensor(DType::f32, {3, 4}, [](int64_t i) { return i * i - 5.0; });
  TensorData tr = base;
  tr.shape = {4, 3};
  tr.strides = {1, 4};
  sd->set("module.transposed", PyValue::from_tensor(tr));
  // a strided slice (every other column)
  TensorData sl = base;
  sl.shape = {3, 2};
  sl.strides = {4, 2};
  sl.data = base.data + 4;  // starting at column 1
  sd->set("module.sliced", PyValue::from_tensor(sl));

  auto state = PyValue::dict();
  for (int p = 0; p < 2; ++p) {
    auto s = PyValue::dict();
    s->set("step", PyValue::from_tensor(make_tensor(DType::f32, {}, [](int64_t) { return 7; })));
    s->set("exp_avg", PyValue::from_tensor(make_tensor(DType::f32, {4, 3}, [p](int64_t i) { return 1e-3 * (i + p); })));
    state->set(PyValue::integer(p), s);
  }
  auto group = PyValue::dict();
  group->set("lr", PyValue::floating(2e-3));
  group->set("betas", PyValue::tuple({PyValue::floating(0.9), PyValue::floating(0.98)}));
  group->set("eps", PyValue::floating(1e-6));
  group->set("weight_decay", PyValue::floating(0.2));
  group->set("amsgrad", PyValue::boolean(false));
  group->set("maximize", PyValue::boolean(true));
  group->set("foreach", PyValue::none());
  group->set("params", PyValue::list({PyValue::integer(0), PyValue::integer(1)}));
  group->set("big", PyValue::list({PyValue::integer(70000), PyValue::integer(-1), PyValue::integer(-2147483648LL),
                                   PyValue::integer(4294967296LL), PyValue::integer(INT64_MIN), PyValue::integer(INT64_MAX),
                                   PyValue::integer(-129), PyValue::integer(255), PyValue::integer(256)}));
  group->set("floats", PyValue::list({PyValue::floating(-0.0), PyValue::floating(1e300), PyValue::floating(-2.5e-310),
                                      PyValue::floating(INFINITY)}));
  group->set("nested", PyValue::tuple({PyValue::tuple(), PyValue::list(), PyValue::dict(true), PyValue::tuple({PyValue::none()}),
                                       PyValue::tuple({PyValue::str("a"), PyValue::str("b"), PyValue::str("c"), PyValue::str("d")})}));
  auto bytes = std::make_shared<PyValue>();
  bytes->kind = PyValue::Kind::bytes;
  bytes->s = std::string("\x00\x01\xff\x80 abc", 8);
  group->set("bytes", bytes);
  auto empty_bytes = std::make_shared<PyValue>();
  empty_bytes->kind = PyValue::Kind::bytes;
  group->set("empty_bytes", empty_bytes);
  group->set("unicode", PyValue::str("中文 ☃ \xF0\x9F\x98\x80"));
  auto opt = PyValue::dict();
  opt->set("state", state);
  opt->set("param_groups", PyValue::list({group}));

  auto root = PyValue::dict();
  root->set("epoch", PyValue::integer(3));
  root->set("step", PyValue::integer(1234));
  root->set("name", PyValue::str("run-ü"));
  root->set("state_dict", sd);
  root->set("optimizer", opt);
  root->set(PyValue::integer(-5), PyValue::boolean(true));
  return root;
}

bool python_torch_available() {
  if (std::getenv("CLIP_SKIP_PYTHON_TESTS")) return false;
  return true;  // a missing python3-torch fails the test loudly (scripts/setup.sh installs it)
}

const char* kPyDescribe = R"PY(
import torch, json, sys, struct, collections
def desc(v):
    if isinstance(v, torch.Tensor):
        d = v.detach().double()
        return {'tensor': str(v.dtype).replace('torch.', ''), 'shape': list(v.shape), 'sum': d.sum().item(),
                'first': d.flatten()[:4].tolist()}
    if isinstance(v, collections.OrderedDict): return {'odict': [[desc(k), desc(x)] for k, x in v.items()]}
    if isinstance(v, dict): return {'dict': [[desc(k), desc(x)] for k, x in v.items()]}
    if isinstance(v, tuple): return {'tuple': [desc(x) for x in v]}
    if isinstance(v, list): return {'list': [desc(x) for x in v]}
    if isinstance(v, bool): return {'bool': v}
    if isinstance(v, int): return {'int': v}
    if isinstance(v, float): return {'float': struct.unpack('<q', struct.pack('<d', v))[0]}
    if isinstance(v, str): return {'str': v}
    if isinstance(v, bytes): return {'bytes': v.hex()}
    if v is None: return {'none': None}
    return {'other': type(v).__name__}
)PY";

}  // namespace

TEST_CASE("fixture checkpoints load with the expected layout and values", "[checkpoint]") {
  std::ifstream f(testutil::fixture("expected/checkpoint_layout.json"));
  REQUIRE(f.good());
  nlohmann::json layout = nlohmann::json::parse(f);
  REQUIRE(layout.size() == 2);
  for (const auto& entry : layout) {
    std::string file = entry["file"];
    INFO(file);
    Checkpoint ck = load_checkpoint(testutil::fixture("checkpoints/" + file));
    CHECK(ck.format == "torch-zip");
    CHECK(ck.had_module_prefix);
    REQUIRE(ck.epoch);
    REQUIRE(ck.step);
    CHECK(*ck.epoch == entry["epoch"].get<int64_t>());
    CHECK(*ck.step == entry["step"].get<int64_t>());
    CHECK(ck.name == entry["name"].get<std::string>());
    CHECK(ck.state_dict.keys.size() == entry["n_tensors"].get<size_t>());
    CHECK(ck.state_dict.keys.size() == (file == "vit_bert.pt" ? 71u : 162u));
    REQUIRE(ck.root);
    REQUIRE(ck.root->get("state_dict"));
    CHECK(ck.root->get("state_dict")->ordered);
    size_t i = 0;
    for (const auto& t : entry["tensors"]) {
      std::string key = t["key"];
      REQUIRE(key.rfind("module.", 0) == 0);
      key = key.substr(7);
      INFO(key);
      REQUIRE(i < ck.state_dict.keys.size());
      CHECK(ck.state_dict.keys[i++] == key);  // file order kept
      const TensorData& td = ck.state_dict.at(key);
      CHECK(td.shape == t["shape"].get<std::vector<int64_t>>());
      CHECK(std::string(dtype_name(td.dtype)) == t["dtype"].get<std::string>());
      // tensors point into the mapped file: no copies
      CHECK(td.owner);
      if (t.contains("values")) {
        auto vals = t["values"].get<std::vector<double>>();
        REQUIRE(int64_t(vals.size()) == td.numel());
        for (size_t j = 0; j < vals.size(); ++j) CHECK(element(td, int64_t(j)) == vals[j]);
        continue;
      }
      double sum = 0, l2 = 0;
      for (int64_t j = 0; j < td.numel(); ++j) {
        double v = element(td, j);
        sum += v;
        l2 += v * v;
      }
      l2 = std::sqrt(l2);
      double esum = t["sum"], el2 = t["l2"];
      CHECK(std::abs(sum - esum) <= 1e-9 * (1 + std::abs(esum)) + 1e-12 * td.numel());
      CHECK(std::abs(l2 - el2) <= 1e-9 * (1 + el2));
      auto first = t["first"].get<std::vector<double>>();
      for (size_t j = 0; j < first.size(); ++j) CHECK(element(td, int64_t(j)) == first[j]);
    }
    CHECK(i == ck.state_dict.keys.size());
  }
}

namespace {

void check_same_tensors(const TensorData& a, const TensorData& b) {
  REQUIRE(a.dtype == b.dtype);
  REQUIRE(a.shape == b.shape);
  for (int64_t i = 0; i < a.numel(); ++i) {
    INFO("element " << i);
    double x = element(a, i), y = element(b, i);
    REQUIRE((x == y || (std::isnan(x) && std::isnan(y))));
  }
}

void check_same_value(const PyPtr& a, const PyPtr& b) {
  std::string where;
  INFO(where);
  bool same = same_desc(describe(a), describe(b), where);
  INFO(where);
  CHECK(same);
}

}  // namespace

TEST_CASE("torch zip: write -> read round trip", "[checkpoint]") {
  PyPtr root = sample_root();
  std::string a = tmpdir() + "/rt.pt";
  save_torch_zip(a, root);
  PyPtr back = load_torch_zip(a);
  check_same_value(root, back);
  // every tensor identical element by element (strided ones compared logically)
  auto sd0 = root->get("state_dict"), sd1 = back->get("state_dict");
  REQUIRE(sd1);
  CHECK(sd1->ordered);
  CHECK_FALSE(back->ordered);
  CHECK_FALSE(back->get("optimizer")->ordered);
  REQUIRE(sd0->entries.size() == sd1->entries.size());
  for (size_t i = 0; i < sd0->entries.size(); ++i) {
    INFO(sd0->entries[i].first->s);
    CHECK(sd0->entries[i].first->s == sd1->entries[i].first->s);
    check_same_tensors(sd0->entries[i].second->tensor, sd1->entries[i].second->tensor);
    CHECK(sd1->entries[i].second->tensor.is_contiguous());
  }
  CHECK(sd1->get("module.half")->tensor.dtype == DType::f16);
  CHECK(sd1->get("module.ids")->tensor.dtype == DType::i64);
  CHECK(element(sd1->get("module.ids")->tensor, 0) == -15000000000.0);
  CHECK(element(sd1->get("module.transposed")->tensor, 1) == 16 - 5.0);  // base[1][0] = 4*4-5
  auto group = back->get("optimizer")->get("param_groups")->items.at(0);
  CHECK(group->get("betas")->kind == PyValue::Kind::tuple);
  CHECK(group->get("lr")->f == 2e-3);
  CHECK(group->get("big")->items.at(4)->i == INT64_MIN);
  CHECK(back->get("optimizer")->get("state")->get(int64_t(1))->get("exp_avg"));
  CHECK(back->get(int64_t(-5))->b);

  // Writing what was read gives the same bytes (deterministic writer, nothing lost).
  std::string sub = tmpdir() + "/again";
  REQUIRE(system(("mkdir -p " + sub).c_str()) == 0);
  save_torch_zip(sub + "/rt.pt", back);
  CHECK(slurp(a) == slurp(sub + "/rt.pt"));

  // Zip layout as torch writes it: <stem>/data.pkl, data/<n> 64-byte aligned, version "3\n".
  std::string bytes = slurp(a);
  ZipReader zip(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), a);
  REQUIRE(zip.find("rt/data.pkl"));
  REQUIRE(zip.find("rt/version"));
  CHECK(std::string(reinterpret_cast<const char*>(zip.checked_data(*zip.find("rt/version"))), 2) == "3\n");
  int storages = 0;
  for (const auto& e : zip.entries()) {
    if (e.name.rfind("rt/data/", 0) == 0) {
      ++storages;
      CHECK(e.data_offset % 64 == 0);
      zip.checked_data(e);  // CRCs are right
    }
  }
  CHECK(storages == 14);

  Checkpoint ck = load_checkpoint(a);
  CHECK(ck.had_module_prefix);
  CHECK(ck.epoch == 3);
  CHECK(ck.step == 1234);
  CHECK(ck.name == "run-ü");
  CHECK(ck.state_dict.keys.size() == 10);
  CHECK(ck.state_dict.keys[0] == "text_projection");
  CHECK(ck.state_dict.contains("visual.bn1.num_batches_tracked"));
  // loaded tensors are views of the mapped file: one shared owner, 64-byte aligned data
  const void* owner = ck.state_dict.at("text_projection").owner.get();
  for (const auto& k : ck.state_dict.keys) {
    CHECK(ck.state_dict.at(k).owner.get() == owner);
    CHECK(reinterpret_cast<uintptr_t>(ck.state_dict.at(k).data) % 64 == 0);
  }

  // ZIP64 records (forced) read back the same.
  save_torch_zip(tmpdir() + "/z64.pt", root, "cpu", true);
  check_same_value(root, load_torch_zip(tmpdir() + "/z64.pt"));
}

TEST_CASE("torch zip: Python torch.load reads our files, we read Python's", "[checkpoint][python]") {
  if (!python_torch_available()) {
    WARN("CLIP_SKIP_PYTHON_TESTS set: Python interop not checked");
    return;
  }
  const std::string dir = tmpdir() + "/py";
  REQUIRE(system(("mkdir -p " + dir + "/hf").c_str()) == 0);
  PyPtr root = sample_root();
  save_torch_zip(dir + "/ours_cpu.pt", root);
  save_torch_zip(dir + "/ours_cuda.pt", root, "cuda:0", false);
  save_torch_zip(dir + "/ours_z64.pt", root, "cpu", true);
  {
    std::string b = slurp(dir + "/ours_cuda.pt");
    CHECK(b.find("cuda:0") != std::string::npos);
  }
  std::string script = std::string(kPyDescribe) + R"PY(
import os, zipfile
out = sys.argv[1]
for name in ['ours_cpu.pt', 'ours_cuda.pt', 'ours_z64.pt']:
    print(json.dumps(desc(torch.load(os.path.join(out, name), map_location='cpu'))))
torch.manual_seed(0)
# cn_clip-like: module. prefix, pooler keys, float16, saved with 'cuda:0' location tags
sd = collections.OrderedDict()
sd['module.text_projection'] = torch.randn(4, 3).half()
sd['module.logit_scale'] = torch.tensor(4.6052)
sd['module.bert.embeddings.word_embeddings.weight'] = torch.randn(10, 4).half()
sd['module.bert.pooler.dense.weight'] = torch.randn(4, 4)
sd['module.bert.pooler.dense.bias'] = torch.randn(4)
sd._metadata = collections.OrderedDict([('', {'version': 1}), ('module', {'version': 1})])
torch.serialization.register_package(1, lambda s: 'cuda:0' if s.device.type == 'cpu' else None,
                                     lambda s, loc: s if loc.startswith('cuda') else None)
p1 = {'epoch': 5, 'step': 77, 'name': 'py-run', 'state_dict': sd}
torch.save(p1, os.path.join(out, 'p1.pt'))
torch.serialization._package_registry.pop(0)
assert b'cuda:0' in zipfile.ZipFile(os.path.join(out, 'p1.pt')).read('p1/data.pkl')
print(json.dumps(desc(p1)))
# protocol 4, shared storages, views, a Parameter and a real optimizer state
base = torch.arange(24.).reshape(4, 6)
model = torch.nn.Linear(3, 2)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.ones(1, 3)).sum().backward()
opt.step()
p2 = {'v': base[1:3], 't': base.t(), 'same': base, 'sl': base[:, ::2], 'i': torch.tensor([1, -2], dtype=torch.int32),
      'p': torch.nn.Parameter(torch.ones(2)), 'opt': opt.state_dict(), 'set': {3}, 'b': b'\x00\xff', 'big': 2**62,
      'bf': torch.tensor([1.5, -2.0], dtype=torch.bfloat16), 'u8': torch.tensor([0, 255], dtype=torch.uint8)}
torch.save(p2, os.path.join(out, 'p2.pt'), pickle_protocol=4)
p2['set'] = [3]
print(json.dumps(desc(p2)))
torch.save(p1, os.path.join(out, 'legacy.pt'), _use_new_zipfile_serialization=False)
with zipfile.ZipFile(os.path.join(out, 'p1.pt')) as zi, zipfile.ZipFile(os.path.join(out, 'deflated.pt'), 'w', zipfile.ZIP_DEFLATED) as zo:
    for n in zi.namelist(): zo.writestr(n, zi.read(n))
torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), os.path.join(out, 'script.pt'))
# Hugging Face ChineseCLIPModel naming, with position_ids buffers
hf = collections.OrderedDict()
hf['text_model.embeddings.word_embeddings.weight'] = torch.randn(10, 4)
hf['text_model.embeddings.position_ids'] = torch.arange(8).unsqueeze(0)
for part in 'qkv':
    hf['vision_model.encoder.layers.0.self_attn.%s_proj.weight' % part] = torch.randn(4, 4)
    hf['vision_model.encoder.layers.0.self_attn.%s_proj.bias' % part] = torch.randn(4)
hf['vision_model.encoder.layers.0.layer_norm1.weight'] = torch.randn(4)
hf['vision_model.embeddings.position_ids'] = torch.arange(5).unsqueeze(0)
hf['text_projection.weight'] = torch.randn(3, 4)
hf['visual_projection.weight'] = torch.randn(3, 4)
hf['logit_scale'] = torch.tensor(2.6592)
torch.save(hf, os.path.join(out, 'hf', 'pytorch_model.bin'))
open(os.path.join(out, 'hf', 'config.json'), 'w').write('{"model_type": "chinese_clip"}')
)PY";
  spit(dir + "/script.py", script);
  std::string out = run_capture("/usr/bin/python3 " + dir + "/script.py " + dir + " 2>&1");
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);)
    if (!l.empty() && l[0] == '{') lines.push_back(nlohmann::json::parse(l));
  REQUIRE(lines.size() == 5);

  SECTION("torch.load reads what we write (cpu and cuda:0 tags, ZIP64)") {
    nlohmann::json ours = describe(root);
    for (int i = 0; i < 3; ++i) {
      std::string where;
      bool same = same_desc(lines[size_t(i)], ours, where);
      INFO("file " << i << ": " << where);
      CHECK(same);
    }
    // the OrderedDict came back as an OrderedDict, the optimizer dict as a dict
    CHECK(lines[0]["dict"][3][1].contains("odict"));
    CHECK(lines[0]["dict"][4][1].contains("dict"));
  }
  SECTION("we read files written by torch.save") {
    PyPtr p1 = load_torch_zip(dir + "/p1.pt");
    std::string where;
    bool same = same_desc(describe(p1), lines[3], where);
    INFO(where);
    CHECK(same);
    PyPtr p2 = load_torch_zip(dir + "/p2.pt");
    same = same_desc(describe(p2), lines[4], where);
    INFO(where);
    CHECK(same);
    // views share one storage: the transposed view is strided into the same bytes
    const TensorData& t = p2->get("t")->tensor;
    CHECK_FALSE(t.is_contiguous());
    CHECK(t.data == p2->get("same")->tensor.data);

    Checkpoint ck = load_checkpoint(dir + "/p1.pt");
    CHECK(ck.had_module_prefix);
    CHECK(ck.epoch == 5);
    CHECK(ck.step == 77);
    CHECK(ck.name == "py-run");
    CHECK(ck.state_dict.keys == std::vector<std::string>{"text_projection", "logit_scale", "bert.embeddings.word_embeddings.weight"});
    CHECK(ck.state_dict.at("text_projection").dtype == DType::f16);
    CHECK(ck.dropped_keys == std::vector<std::string>{"bert.pooler.dense.weight", "bert.pooler.dense.bias"});
  }
  SECTION("Hugging Face folder with pytorch_model.bin") {
    Checkpoint ck = load_checkpoint(dir + "/hf");
    CHECK(ck.format == "hf");
    CHECK(ck.hf_config_json.find("chinese_clip") != std::string::npos);
    CHECK(ck.dropped_keys ==
          std::vector<std::string>{"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"});
    PyPtr raw = load_torch_zip(dir + "/hf/pytorch_model.bin");
    const TensorData& in_w = ck.state_dict.at("visual.transformer.resblocks.0.attn.in_proj_weight");
    const TensorData& in_b = ck.state_dict.at("visual.transformer.resblocks.0.attn.in_proj_bias");
    REQUIRE(in_w.shape == std::vector<int64_t>{12, 4});
    REQUIRE(in_b.shape == std::vector<int64_t>{12});
    const char* parts[] = {"q", "k", "v"};
    for (int p = 0; p < 3; ++p) {
      const TensorData& w = raw->get(std::string("vision_model.encoder.layers.0.self_attn.") + parts[p] + "_proj.weight")->tensor;
      const TensorData& b = raw->get(std::string("vision_model.encoder.layers.0.self_attn.") + parts[p] + "_proj.bias")->tensor;
      for (int64_t i = 0; i < 16; ++i) CHECK(element(in_w, p * 16 + i) == element(w, i));
      for (int64_t i = 0; i < 4; ++i) CHECK(element(in_b, p * 4 + i) == element(b, i));
    }
    const TensorData& tp = ck.state_dict.at("text_projection");
    const TensorData& hf_tp = raw->get("text_projection.weight")->tensor;
    REQUIRE(tp.shape == std::vector<int64_t>{4, 3});
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 3; ++c) CHECK(element(tp, r * 3 + c) == element(hf_tp, c * 4 + r));
    CHECK(ck.state_dict.contains("visual.proj"));
    CHECK(ck.state_dict.contains("visual.transformer.resblocks.0.ln_1.weight"));
    CHECK(ck.state_dict.contains("bert.embeddings.word_embeddings.weight"));
    CHECK(ck.state_dict.contains("logit_scale"));
    CHECK(ck.state_dict.keys.size() == 7);
  }
  SECTION("unsupported variants fail with the remedy") {
    auto msg_of = [](const std::string& path) {
      try {
        load_checkpoint(path);
      } catch (const ModelError& e) {
        return std::string(e.what());
      }
      return std::string("(no error)");
    };
    std::string m = msg_of(dir + "/legacy.pt");
    CHECK(m.find("legacy") != std::string::npos);
    CHECK(m.find("torch.save") != std::string::npos);
    m = msg_of(dir + "/deflated.pt");
    CHECK(m.find("compressed") != std::string::npos);
    m = msg_of(dir + "/script.pt");
    CHECK(m.find("TorchScript") != std::string::npos);
  }
}
