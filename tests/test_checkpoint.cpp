// Checkpoint I/O: torch.save zip reading/writing (checked against the reference fixtures and
// against Python's torch.load), safetensors, Hugging Face folders, hostile and damaged files.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <unistd.h>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/io/pickle.h"
#include "clip/io/zip.h"
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

// A fresh folder for this run (in memory when /dev/shm exists), removed at exit.
std::string tmpdir() {
  struct Dir {
    std::string path;
    Dir() {
      std::string t = std::string(is_directory("/dev/shm") ? "/dev/shm" : "/tmp") + "/clip_ckpt_test.XXXXXX";
      std::vector<char> buf(t.begin(), t.end());
      buf.push_back('\0');
      if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
      path = buf.data();
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
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

// The same description of a value that the Python script below prints, for comparisons.
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
  int64_t first_bad = -1;
  for (int64_t i = 0; i < a.numel() && first_bad < 0; ++i) {
    double x = element(a, i), y = element(b, i);
    if (!(x == y || (std::isnan(x) && std::isnan(y)))) first_bad = i;
  }
  CHECK(first_bad == -1);
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

  {  // torch.load reads what we write (cpu and cuda:0 tags, ZIP64)
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
  {  // we read files written by torch.save
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
  {  // Hugging Face folder with pytorch_model.bin
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
  {  // unsupported variants fail with the remedy
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

namespace {

std::string pk_str(const std::string& s) {
  std::string r = "X";
  for (int i = 0; i < 4; ++i) r.push_back(char((s.size() >> (8 * i)) & 0xFF));
  return r + s;
}

void write_archive(const std::string& path, const std::string& pkl, const std::vector<std::pair<std::string, std::string>>& data = {}) {
  AtomicFile f(path);
  ZipWriter z(f);
  z.add("x/data.pkl", pkl.data(), pkl.size());
  for (const auto& [k, v] : data) z.add("x/data/" + k, v.data(), v.size());
  z.add("x/version", "3\n", 2);
  z.finish();
  f.commit();
}

std::string model_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ModelError& e) {
    return e.what();
  }
  return "(no error)";
}

// Loads and walks the result; returns true when it loaded, false on ModelError. Any other
// exception fails the calling test; a crash fails the run.
bool loads_or_model_error(const std::string& path) {
  try {
    Checkpoint ck = load_checkpoint(path);
    double acc = 0;
    for (const auto& k : ck.state_dict.keys) {
      const TensorData& t = ck.state_dict.at(k);
      if (t.numel() > 0) acc += element(t, t.numel() - 1);  // touch the last element: must be in range
    }
    (void)acc;
    return true;
  } catch (const ModelError&) {
    return false;
  }
}

// A persistent loader for fuzzing the unpickler alone: any well-formed storage id resolves to
// zero bytes of the declared size.
struct FakeStorages {
  PyPtr operator()(const PyPtr& pid) {
    if (!pid || pid->kind != PyValue::Kind::tuple || pid->items.size() != 5 || !pid->items[1] ||
        pid->items[1]->kind != PyValue::Kind::object || !pid->items[4] || pid->items[4]->kind != PyValue::Kind::integer)
      throw ModelError("bad pid");
    DType dt;
    if (!storage_type_dtype(pid->items[1]->s, dt)) throw ModelError("bad storage type");
    int64_t n = pid->items[4]->i;
    // all storages view one shared zero buffer
    static auto buf = std::make_shared<std::vector<uint8_t>>(size_t(16) << 20);
    if (n < 0 || uint64_t(n) * dtype_size(dt) > buf->size()) throw ModelError("bad numel");
    auto v = std::make_shared<PyValue>();
    v->kind = PyValue::Kind::object;
    v->s = kStorageObject;
    v->tensor.dtype = dt;
    v->tensor.shape = {n};
    v->tensor.strides = {1};
    v->tensor.data = buf->data();
    v->tensor.owner = buf;
    return v;
  }
};

size_t count_nodes(const PyPtr& v) {
  if (!v) return 0;
  size_t n = 1;
  for (const auto& x : v->items) n += count_nodes(x);
  for (const auto& [k, x] : v->entries) n += count_nodes(k) + count_nodes(x);
  return n;
}

bool unpickles_or_model_error(const std::string& bytes) {
  FakeStorages fs;
  try {
    PyPtr v = unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "fuzz", std::ref(fs));
    (void)count_nodes(v);  // walk it recursively: the depth limit must hold
    return true;
  } catch (const ModelError&) {
    return false;
  }
}

}  // namespace

TEST_CASE("hostile pickles are refused without executing anything", "[checkpoint]") {
  const std::string dir = tmpdir();
  const std::string marker = dir + "/pwned";
  struct Case {
    const char* name;
    std::string pkl;
    const char* global;
  };
  std::vector<Case> cases = {
      {"os.system", "\x80\x02" "cos\nsystem\n" + pk_str("touch " + marker) + "\x85R.", "os.system"},
      {"posix.system", "\x80\x02" "cposix\nsystem\n" + pk_str("touch " + marker) + "\x85R.", "posix.system"},
      {"builtins.eval (protocol 4)",
       std::string("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93") + pk_str("__import__('os').system('touch " + marker + "')") + "\x85R.",
       "builtins.eval"},
      {"__builtin__.eval", "\x80\x02" "c__builtin__\neval\n" + pk_str("1") + "\x85R.", "__builtin__.eval"},
      {"inside a state dict", "\x80\x02}(" + pk_str("a") + "csubprocess\ncheck_output\n" + pk_str("id") + "\x85R" "u.",
       "subprocess.check_output"},
      {"torch.load", "\x80\x02" "ctorch\nload\n" + pk_str("x") + "\x85R.", "torch.load"},
      {"collections lookalike", "\x80\x02" "ccollections\nOrderedDict.__init__\n).", "collections.OrderedDict.__init__"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    std::string path = dir + "/hostile.pt";
    write_archive(path, c.pkl);
    std::string msg = model_error_of([&] { load_checkpoint(path); });
    CHECK(msg.find("not allowed") != std::string::npos);
    CHECK(msg.find(std::string("pickle global ") + c.global + " ") != std::string::npos);
    CHECK(msg.find(path) != std::string::npos);
    CHECK_FALSE(file_exists(marker));
  }
  // allowed names used in a way that would be a call of something else
  write_archive(dir + "/h2.pt", "\x80\x02" "ctorch\nFloatStorage\n)R.");
  CHECK(model_error_of([&] { load_checkpoint(dir + "/h2.pt"); }).find("not callable") != std::string::npos);
}

TEST_CASE("corrupt pickle streams and storages give ModelError", "[checkpoint]") {
  auto err = [](const std::string& pkl) {
    FakeStorages fs;
    return model_error_of([&] { unpickle(reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size(), "'t.pt'", std::ref(fs)); });
  };
  CHECK(err("\x80\x02R.").find("stack underflow") != std::string::npos);
  CHECK(err("\x80\x02(R.").find("stack underflow") != std::string::npos);  // below a MARK
  CHECK(err(std::string("\x80\x02\xff", 3)).find("unsupported opcode 0xff") != std::string::npos);
  CHECK(err("\x80\x02h\x05.").find("memo") != std::string::npos);
  CHECK(err("\x80\x02}").find("unexpected end") != std::string::npos);
  CHECK(err("\x80\x02X\xff\xff\x00\x00ab.").find("unexpected end") != std::string::npos);
  CHECK(err("\x80\x02\x8a\x09\x01\x01\x01\x01\x01\x01\x01\x01\x01.").find("64 bits") != std::string::npos);
  CHECK(err(std::string(2000, '(') + std::string(2000, 'l') + ".").find("nested deeper") != std::string::npos);
  CHECK(err(std::string("\x80\x02]q\x00h\x00" "a.", 9)).find("refers to itself") != std::string::npos);
  CHECK(err("\x80\x02}(K\x01u\x85.").find("odd number") != std::string::npos);
  // a very deep structure kept only in the memo (not returned) must not crash on destruction either
  {
    std::string deep = "\x80\x02";
    for (int i = 0; i < 200000; ++i) deep += "]";
    for (int i = 0; i < 199999; ++i) deep += "a";
    deep += std::string("0N.", 3);
    CHECK(err(deep) == "(no error)");  // the result is None; the popped deep list is torn down iteratively
  }

  // tensors larger than their storage, storages larger than their zip entry
  const std::string dir = tmpdir();
  auto tensor_pkl = [](int numel, int size, int stride) {
    std::string s = "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n((" + pk_str("storage") + "ctorch\nFloatStorage\n" +
                    pk_str("0") + pk_str("cuda:3") + "K" + char(numel) + "tQK" + char(0) + "K" + char(size) + "\x85K" + char(stride) +
                    "\x85\x89" "ccollections\nOrderedDict\n)RtR.";
    return s;
  };
  std::string four_floats(16, '\0');
  write_archive(dir + "/ok.pt", tensor_pkl(4, 4, 1), {{"0", four_floats}});
  CHECK(load_torch_zip(dir + "/ok.pt")->tensor.shape == std::vector<int64_t>{4});  // 'cuda:3' ignored
  write_archive(dir + "/big.pt", tensor_pkl(4, 5, 1), {{"0", four_floats}});
  std::string m = model_error_of([&] { load_torch_zip(dir + "/big.pt"); });
  CHECK(m.find("needs storage element 4 but its storage holds only 4") != std::string::npos);
  CHECK(m.find(dir + "/big.pt") != std::string::npos);
  write_archive(dir + "/stride.pt", tensor_pkl(4, 2, 3), {{"0", four_floats}});
  {
    PyPtr t = load_torch_zip(dir + "/stride.pt");  // size 2, stride 3: touches elements 0 and 3 of 4
    CHECK(t->tensor.shape == std::vector<int64_t>{2});
    CHECK(t->tensor.strides == std::vector<int64_t>{3});
  }
  write_archive(dir + "/stride2.pt", tensor_pkl(4, 3, 2), {{"0", four_floats}});
  CHECK(model_error_of([&] { load_torch_zip(dir + "/stride2.pt"); }).find("needs storage element 4") != std::string::npos);
  write_archive(dir + "/short.pt", tensor_pkl(4, 4, 1), {{"0", std::string(12, '\0')}});
  CHECK(model_error_of([&] { load_torch_zip(dir + "/short.pt"); }).find("holds 12 bytes but 4 float32 elements") != std::string::npos);
  write_archive(dir + "/missing.pt", tensor_pkl(4, 4, 1));
  CHECK(model_error_of([&] { load_torch_zip(dir + "/missing.pt"); }).find("'x/data/0' is missing") != std::string::npos);
}

TEST_CASE("truncated and damaged checkpoints never crash", "[checkpoint][fuzz]") {
  const std::string src = slurp(testutil::fixture("checkpoints/vit_bert.pt"));
  const std::string path = tmpdir() + "/damaged.pt";
  std::mt19937_64 rng(1234);
  ZipReader zip(reinterpret_cast<const uint8_t*>(src.data()), src.size(), "fixture");
  const ZipEntry* pkl = zip.find("vit_bert/data.pkl");
  REQUIRE(pkl);
  const std::string pkl_bytes = src.substr(size_t(pkl->data_offset), size_t(pkl->size));
  size_t cd_start = src.rfind(std::string("PK\x01\x02", 4), src.size());
  for (const auto& e : zip.entries()) cd_start = std::min<size_t>(cd_start, src.find(std::string("PK\x01\x02", 4), size_t(e.data_offset)));

  SECTION("truncated at 200 offsets") {
    std::vector<size_t> cuts;
    for (int i = 0; i < 100; ++i) cuts.push_back(src.size() * size_t(i) / 100);
    for (int i = 0; i < 100; ++i) cuts.push_back(cd_start + rng() % (src.size() - cd_start));
    int loaded = 0;
    for (size_t cut : cuts) {
      INFO("cut at " << cut);
      spit(path, src.substr(0, cut));
      loaded += loads_or_model_error(path);
    }
    CHECK(loaded == 0);  // a truncated archive always lacks its central directory
  }
  SECTION("random byte flips anywhere, in data.pkl and in the central directory") {
    int loaded = 0, failed = 0;
    for (int i = 0; i < 300; ++i) {
      std::string d = src;
      int flips = 1 + int(rng() % 8);
      for (int f = 0; f < flips; ++f) {
        size_t pos;
        switch (i % 3) {
          case 0: pos = rng() % d.size(); break;
          case 1: {  // the local header and data.pkl
            size_t lo = pkl->data_offset > 200 ? size_t(pkl->data_offset) - 200 : 0;
            pos = lo + rng() % (size_t(pkl->data_offset + pkl->size) - lo);
            break;
          }
          default: pos = cd_start + rng() % (d.size() - cd_start); break;
        }
        d[pos] = char(d[pos] ^ char(1 + rng() % 255));
      }
      spit(path, d);
      if (loads_or_model_error(path)) ++loaded; else ++failed;
    }
    CHECK(failed > 0);
    CHECK(loaded > 0);  // flips inside tensor data go unnoticed, as with torch.load
  }
  SECTION("damaged data.pkl with a matching CRC (the unpickler sees the damage)") {
    int failed = 0;
    for (int i = 0; i < 150; ++i) {
      std::string p = pkl_bytes;
      int flips = 1 + int(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        size_t pos = rng() % p.size();
        p[pos] = char(p[pos] ^ char(1 << (rng() % 8)));
      }
      std::string d = src;
      d.replace(size_t(pkl->data_offset), p.size(), p);
      uint32_t crc = crc32(p.data(), p.size());
      // patch the CRC in the local header (offset 14) and the central directory entry (offset 16)
      size_t local = size_t(pkl->data_offset) - 30 - pkl->name.size();
      while (d.compare(local, 4, "PK\x03\x04", 4) != 0) --local;  // skip the extra field
      size_t central = d.find(std::string("PK\x01\x02", 4), cd_start);
      for (int b = 0; b < 4; ++b) {
        d[local + 14 + size_t(b)] = char((crc >> (8 * b)) & 0xFF);
        d[central + 16 + size_t(b)] = char((crc >> (8 * b)) & 0xFF);
      }
      spit(path, d);
      failed += !loads_or_model_error(path);
    }
    CHECK(failed > 0);
  }
  SECTION("every prefix and 3000 mutations of data.pkl, in memory") {
    CHECK(unpickles_or_model_error(pkl_bytes));
    int ok = 0;
    for (size_t n = 0; n < pkl_bytes.size(); ++n) ok += unpickles_or_model_error(pkl_bytes.substr(0, n));
    CHECK(ok == 0);
    for (int i = 0; i < 3000; ++i) {
      std::string p = pkl_bytes;
      int edits = 1 + int(rng() % 6);
      for (int e = 0; e < edits; ++e) {
        size_t pos = rng() % p.size();
        switch (rng() % 4) {
          case 0: p[pos] = char(rng()); break;
          case 1: p.erase(pos, 1 + rng() % 16); break;
          case 2: p.insert(pos, 1, char(rng())); break;
          default: p.insert(pos, p.substr(rng() % p.size(), 1 + rng() % 32)); break;
        }
        if (p.empty()) p = "x";
      }
      unpickles_or_model_error(p);
    }
  }
}

TEST_CASE("safetensors and Hugging Face round trips", "[checkpoint]") {
  const std::string dir = tmpdir() + "/st";
  REQUIRE(system(("mkdir -p " + dir + "/hf").c_str()) == 0);
  Checkpoint vit = load_checkpoint(testutil::fixture("checkpoints/vit_bert.pt"));
  Checkpoint rn = load_checkpoint(testutil::fixture("checkpoints/rn_bert.pt"));

  for (const Checkpoint* ck : {&vit, &rn}) {
    std::string path = dir + "/model.safetensors";
    save_safetensors(path, ck->state_dict, {{"producer", "test"}});
    std::map<std::string, std::string> meta;
    StateDict back = load_safetensors(path, &meta);
    CHECK(meta["format"] == "pt");
    CHECK(meta["producer"] == "test");
    REQUIRE(back.keys == ck->state_dict.keys);
    for (const auto& k : back.keys) {
      INFO(k);
      check_same_tensors(back.at(k), ck->state_dict.at(k));
    }
    Checkpoint via = load_checkpoint(path);
    CHECK(via.format == "safetensors");
    CHECK(via.state_dict.keys == ck->state_dict.keys);
    CHECK_FALSE(via.had_module_prefix);
  }

  // Python (json + numpy, no safetensors package needed) reads the layout we wrote.
  if (python_torch_available()) {
    std::string path = dir + "/vit.safetensors";
    save_safetensors(path, vit.state_dict);
    std::string script = R"PY(
import json, sys, struct, numpy as np
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
assert n % 8 == 0
h = json.loads(b[8:8 + n])
pos = 0
out = {}
for k, v in h.items():
    if k == '__metadata__': continue
    s, e = v['data_offsets']
    assert s == pos, k
    pos = e
    a = np.frombuffer(b[8 + n + s:8 + n + e], dtype={'F32': '<f4', 'I64': '<i8'}[v['dtype']]).reshape(v['shape'])
    out[k] = float(a.astype(np.float64).sum())
assert 8 + n + pos == len(b)
print(json.dumps(out))
)PY";
    spit(dir + "/st.py", script);
    nlohmann::json sums = nlohmann::json::parse(run_capture("/usr/bin/python3 " + dir + "/st.py " + path));
    REQUIRE(sums.size() == vit.state_dict.keys.size());
    for (const auto& k : vit.state_dict.keys) {
      const TensorData& t = vit.state_dict.at(k);
      double s = 0;
      for (int64_t i = 0; i < t.numel(); ++i) s += element(t, i);
      CHECK(std::abs(s - sums[k].get<double>()) <= 1e-9 * (1 + std::abs(s)));
    }
  }

  SECTION("cn_clip -> Hugging Face names -> folder -> cn_clip is lossless") {
    StateDict hf = cnclip_to_hf(vit.state_dict);
    CHECK(hf.contains("vision_model.encoder.layers.1.self_attn.k_proj.bias"));
    CHECK(hf.contains("vision_model.pre_layrnorm.weight"));
    CHECK(hf.contains("text_model.encoder.layer.1.attention.self.query.weight"));
    CHECK(hf.at("text_projection.weight").shape == std::vector<int64_t>{32, 64});
    CHECK(hf.keys.size() == vit.state_dict.keys.size() + 2 * 2 * 2);  // 2 blocks x (weight, bias) x (3 - 1)
    for (const auto& k : hf.keys) CHECK(hf.at(k).is_contiguous());
    save_safetensors(dir + "/hf/model.safetensors", hf);
    spit(dir + "/hf/config.json", "{\"model_type\": \"chinese_clip\"}");
    Checkpoint ck = load_checkpoint(dir + "/hf");
    CHECK(ck.format == "hf");
    CHECK(ck.hf_config_json == "{\"model_type\": \"chinese_clip\"}");
    REQUIRE(ck.state_dict.keys == vit.state_dict.keys);
    for (const auto& k : ck.state_dict.keys) {
      INFO(k);
      check_same_tensors(ck.state_dict.at(k), vit.state_dict.at(k));
    }
    // the same weights as two safetensors shards with an index
    REQUIRE(system(("mkdir -p " + dir + "/sharded").c_str()) == 0);
    StateDict a, b;
    nlohmann::json wm = nlohmann::json::object();
    for (size_t i = 0; i < hf.keys.size(); ++i) {
      const std::string& k = hf.keys[i];
      (i < hf.keys.size() / 2 ? a : b).add(k, hf.at(k));
      wm[k] = i < hf.keys.size() / 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    save_safetensors(dir + "/sharded/model-00001-of-00002.safetensors", a);
    save_safetensors(dir + "/sharded/model-00002-of-00002.safetensors", b);
    spit(dir + "/sharded/model.safetensors.index.json", nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", wm}}.dump());
    spit(dir + "/sharded/config.json", "{}");
    Checkpoint sh = load_checkpoint(dir + "/sharded");
    REQUIRE(sh.state_dict.keys == vit.state_dict.keys);
    for (const auto& k : sh.state_dict.keys) check_same_tensors(sh.state_dict.at(k), vit.state_dict.at(k));
    // ResNet towers have no HF equivalent
    CHECK(model_error_of([&] { cnclip_to_hf(rn.state_dict); }).find("ResNet") != std::string::npos);
  }
  SECTION("damaged safetensors") {
    std::string path = dir + "/model.safetensors";
    save_safetensors(path, vit.state_dict);
    std::string good = slurp(path);
    std::string bad = dir + "/bad.safetensors";
    for (size_t cut : {size_t(0), size_t(5), size_t(9), size_t(100), good.size() / 2, good.size() - 1}) {
      spit(bad, good.substr(0, cut));
      CHECK_FALSE(loads_or_model_error(bad));
    }
    std::string d = good;
    d[7] = 0x7f;  // absurd header length
    spit(bad, d);
    CHECK(model_error_of([&] { load_safetensors(bad); }).find("header length") != std::string::npos);
    d = good;
    d[8] = '#';
    spit(bad, d);
    CHECK(model_error_of([&] { load_safetensors(bad); }).find("JSON") != std::string::npos);
    std::mt19937_64 rng(7);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= uint64_t(uint8_t(good[size_t(i)])) << (8 * i);
    for (int i = 0; i < 200; ++i) {
      d = good;
      size_t pos = 8 + rng() % hlen;
      d[pos] = "0123456789[]{},\":x"[rng() % 18];
      spit(bad, d);
      loads_or_model_error(bad);
    }
  }
}

TEST_CASE("safetensors whose tensors overlap or leave gaps are refused", "[checkpoint][hostile]") {
  testutil::TempDir dir{"st"};
  auto file = [&](const std::string& header, size_t data_bytes) {
    std::string h = header;
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[size_t(i)] = static_cast<char>((uint64_t(h.size()) >> (8 * i)) & 0xFF);
    out += h;
    out += std::string(data_bytes, '\0');
    return dir.write("t.safetensors", out);
  };
  auto error_of = [&](const std::string& path) {
    try {
      load_safetensors(path);
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // Tiled exactly: loads.
  CHECK(load_safetensors(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16))
            .keys.size() == 2);
  // Two tensors on the same bytes.
  std::string msg = error_of(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12));
  CHECK(msg.find("overlaps") != std::string::npos);
  msg = error_of(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8));
  CHECK(msg.find("overlaps") != std::string::npos);
  // Bytes that belong to no tensor, between tensors and at the end.
  msg = error_of(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20));
  CHECK(msg.find("belong to no tensor") != std::string::npos);
  msg = error_of(file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12));
  CHECK(msg.find("belong to no tensor") != std::string::npos);
}

TEST_CASE("load_checkpoint error handling", "[checkpoint]") {
  const std::string dir = tmpdir() + "/err";
  REQUIRE(system(("mkdir -p " + dir + "/empty_folder " + dir + "/cfg_only").c_str()) == 0);
  CHECK_THROWS_AS(load_checkpoint(dir + "/nope.pt"), IoError);
  CHECK(model_error_of([&] { load_checkpoint(dir + "/empty_folder"); }).find("config.json") != std::string::npos);
  spit(dir + "/cfg_only/config.json", "{}");
  CHECK(model_error_of([&] { load_checkpoint(dir + "/cfg_only"); }).find("no weights") != std::string::npos);
  spit(dir + "/text.pt", "<html>not found</html>");
  CHECK(model_error_of([&] { load_checkpoint(dir + "/text.pt"); }).find("neither a torch.save zip") != std::string::npos);
  spit(dir + "/empty.pt", "");
  CHECK_THROWS_AS(load_checkpoint(dir + "/empty.pt"), ModelError);
  // a dict without tensors / a state_dict with a non-tensor entry
  auto root = PyValue::dict();
  root->set("epoch", PyValue::integer(1));
  save_torch_zip(dir + "/notensors.pt", root);
  CHECK(model_error_of([&] { load_checkpoint(dir + "/notensors.pt"); }).find("no 'state_dict'") != std::string::npos);
  auto sd = PyValue::dict(true);
  sd->set("w", PyValue::str("oops"));
  root->set("state_dict", sd);
  save_torch_zip(dir + "/badsd.pt", root);
  CHECK(model_error_of([&] { load_checkpoint(dir + "/badsd.pt"); }).find("'w' is not a tensor") != std::string::npos);
  // nothing is left behind by atomic writes
  auto obj = std::make_shared<PyValue>();
  obj->kind = PyValue::Kind::object;
  obj->s = "x.y";
  root->set("obj", obj);
  CHECK_THROWS_AS(save_torch_zip(dir + "/obj.pt", root), ModelError);
  CHECK_FALSE(file_exists(dir + "/obj.pt"));
}

namespace {

// A zip archive assembled byte by byte, so that tests can make its records disagree.
struct RawZip {
  struct Entry {
    std::string name, data;
    uint16_t method = 0;
  };
  std::string bytes;
  std::vector<size_t> local;  // offset of each local header
  size_t cd = 0, eocd = 0;    // offsets of the central directory and of the end record

  static void w16(std::string& s, uint32_t v) { s.push_back(char(v & 0xFF)), s.push_back(char((v >> 8) & 0xFF)); }
  static void w32(std::string& s, uint32_t v) { w16(s, v & 0xFFFF), w16(s, v >> 16); }
  static void put16(std::string& s, size_t at, uint32_t v) { s[at] = char(v & 0xFF), s[at + 1] = char((v >> 8) & 0xFF); }
  static void put32(std::string& s, size_t at, uint32_t v) { put16(s, at, v & 0xFFFF), put16(s, at + 2, v >> 16); }

  explicit RawZip(const std::vector<Entry>& entries, const std::string& comment = "") {
    std::string central;
    for (const auto& e : entries) {
      const uint32_t crc = crc32(e.data.data(), e.data.size());
      local.push_back(bytes.size());
      std::string h;
      w32(h, 0x04034b50), w16(h, 20), w16(h, 0), w16(h, e.method), w16(h, 0), w16(h, 0x21);
      w32(h, crc), w32(h, uint32_t(e.data.size())), w32(h, uint32_t(e.data.size()));
      w16(h, uint32_t(e.name.size())), w16(h, 0);
      bytes += h + e.name + e.data;
      std::string c;
      w32(c, 0x02014b50), w16(c, 20), w16(c, 20), w16(c, 0), w16(c, e.method), w16(c, 0), w16(c, 0x21);
      w32(c, crc), w32(c, uint32_t(e.data.size())), w32(c, uint32_t(e.data.size()));
      w16(c, uint32_t(e.name.size())), w16(c, 0), w16(c, 0), w16(c, 0), w16(c, 0), w32(c, 0), w32(c, uint32_t(local.back()));
      central += c + e.name;
    }
    cd = bytes.size();
    bytes += central;
    eocd = bytes.size();
    std::string r;
    w32(r, 0x06054b50), w16(r, 0), w16(r, 0), w16(r, uint32_t(entries.size())), w16(r, uint32_t(entries.size()));
    w32(r, uint32_t(central.size())), w32(r, uint32_t(cd)), w16(r, uint32_t(comment.size()));
    bytes += r + comment;
  }
  // Offset of the central directory record of entry i.
  size_t central(size_t i) const {
    size_t at = cd;
    for (size_t k = 0; k < i; ++k) at += 46 + size_t(uint8_t(bytes[at + 28]) | (uint8_t(bytes[at + 29]) << 8));
    return at;
  }
};

std::string zip_error_of(const std::string& bytes) {
  return model_error_of([&] { ZipReader z(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "'z.pt'"); });
}

bool zip_reads(const std::string& bytes) { return zip_error_of(bytes) == "(no error)"; }

}  // namespace

TEST_CASE("zip records must agree with each other (APPNOTE checks)", "[checkpoint][hostile]") {
  const std::vector<RawZip::Entry> two = {{"x/data.pkl", "\x80\x02K\x01."}, {"x/version", "3\n"}};
  REQUIRE(zip_reads(RawZip(two).bytes));
  auto has = [](const std::string& msg, const char* what) {
    INFO(msg);
    return msg.find(what) != std::string::npos;
  };

  SECTION("end of central directory: comment, disks, sizes") {
    CHECK(zip_reads(RawZip(two, "a comment").bytes));
    RawZip z(two, "a comment");
    std::string b = z.bytes;
    RawZip::put16(b, z.eocd + 20, 3);  // the comment no longer ends at the end of the file
    CHECK(has(zip_error_of(b), "end of central directory record not found"));
    b = z.bytes;
    RawZip::put16(b, z.eocd + 4, 1);  // disk number
    CHECK(has(zip_error_of(b), "multi-part"));
    b = z.bytes;
    RawZip::put16(b, z.eocd + 8, 1);  // entries on this disk != entries in all
    CHECK(has(zip_error_of(b), "multi-part"));
    b = z.bytes;
    RawZip::put16(b, z.eocd + 8, 0xFFFF), RawZip::put16(b, z.eocd + 10, 0xFFFF);  // ZIP64 marker, no ZIP64 record
    CHECK(has(zip_error_of(b), "ZIP64 records that are missing"));
    b = z.bytes;  // a central directory larger than its entries (hidden bytes)
    b.insert(z.eocd, 46, 'Q');
    RawZip::put32(b, z.eocd + 46 + 12, uint32_t(z.eocd + 46 - z.cd));
    CHECK(has(zip_error_of(b), "but its entries take"));
  }

  SECTION("local headers must match the central directory") {
    RawZip z(two);
    std::string b = z.bytes;
    b[z.local[1] + 30] = 'y';  // "y/version" in the local header, "x/version" in the central directory
    CHECK(has(zip_error_of(b), "names another entry"));
    b = z.bytes;
    RawZip::put16(b, z.local[0] + 8, 8);  // deflated in the local header only
    CHECK(has(zip_error_of(b), "compression method"));
    b = z.bytes;
    RawZip::put32(b, z.local[1] + 22, 1);  // local uncompressed size
    CHECK(has(zip_error_of(b), "disagree on the CRC or sizes of entry 'x/version'"));
    b = z.bytes;
    RawZip::put32(b, z.local[1] + 14, 0xDEADBEEF);  // local CRC
    CHECK(has(zip_error_of(b), "disagree on the CRC or sizes"));
    b = z.bytes;  // with a data descriptor (flag bit 3) the local CRC and sizes may be zero
    RawZip::put16(b, z.local[1] + 6, 8), RawZip::put32(b, z.local[1] + 14, 0), RawZip::put32(b, z.local[1] + 18, 0),
        RawZip::put32(b, z.local[1] + 22, 0);
    CHECK(zip_reads(b));
  }

  SECTION("ZIP64 fields that are announced must be there") {
    RawZip z(two);
    std::string b = z.bytes;
    RawZip::put32(b, z.central(1) + 24, 0xFFFFFFFF);  // size "in the ZIP64 field", which is absent
    CHECK(has(zip_error_of(b), "lacks the ZIP64 field"));
    b = z.bytes;  // a truncated extra field
    std::string c(b.begin() + std::ptrdiff_t(z.central(1)), b.begin() + std::ptrdiff_t(z.eocd));
    RawZip::put16(c, 30, 3);
    c += std::string("\x01\x00\x08", 3);
    b = b.substr(0, z.central(1)) + c + b.substr(z.eocd);
    RawZip::put32(b, z.eocd + 3 + 12, uint32_t(z.eocd + 3 - z.cd));
    INFO(zip_error_of(b));
    CHECK(has(zip_error_of(b), "malformed extra field in entry 'x/version'"));
  }

  SECTION("a ZIP64 end record that disagrees with the classic one") {
    const std::string path = tmpdir() + "/z64.zip";
    {
      AtomicFile f(path);
      ZipWriter w(f, /*force_zip64=*/true);
      w.add("x/data.pkl", "\x80\x02K\x01.", 6);
      w.add("x/version", "3\n", 2);
      w.finish();
      f.commit();
    }
    const std::string good = slurp(path);
    REQUIRE(zip_reads(good));
    std::string b = good;
    const size_t eocd = b.size() - 22;
    RawZip::put16(b, eocd + 8, 5), RawZip::put16(b, eocd + 10, 5);  // 5 entries here, 2 in the ZIP64 record
    CHECK(has(zip_error_of(b), "disagrees"));
    b = good;
    const size_t z64 = eocd - 20 - 56;
    RawZip::put32(b, z64 + 4, 200);  // record size running into the locator
    CHECK(has(zip_error_of(b), "size field"));
  }

  SECTION("entries may not overlap each other or the central directory, nor repeat a name") {
    // Entry "a" stores, as its data, the complete local header and data of entry "b": two names
    // for overlapping bytes (the trick of overlapping-file zip bombs).
    RawZip inner(std::vector<RawZip::Entry>{{"b", "BBBB"}});
    const std::string nested = inner.bytes.substr(0, inner.cd);  // local header + data of "b"
    RawZip z(std::vector<RawZip::Entry>{{"a", nested}, {"b", "BBBB"}});
    std::string b = z.bytes;
    RawZip::put32(b, z.central(1) + 42, uint32_t(z.local[0] + 30 + 1));  // "b" points inside "a"
    CHECK(has(zip_error_of(b), "entries 'a' and 'b' overlap"));
    // An entry whose (consistent) sizes run into the central directory.
    RawZip y(two);
    b = y.bytes;
    RawZip::put32(b, y.local[1] + 18, 12), RawZip::put32(b, y.local[1] + 22, 12);
    RawZip::put32(b, y.central(1) + 20, 12), RawZip::put32(b, y.central(1) + 24, 12);
    CHECK(has(zip_error_of(b), "overlaps the central directory"));
    CHECK(has(zip_error_of(RawZip(std::vector<RawZip::Entry>{{"x/data.pkl", "A"}, {"x/data.pkl", "B"}}).bytes), "'x/data.pkl' appears twice"));
  }

  SECTION("compressed entries are refused when read, naming the remedy") {
    RawZip z(std::vector<RawZip::Entry>{{"x/data.pkl", "\x80\x02K\x01.", 8}, {"x/version", "3\n"}});
    ZipReader r(reinterpret_cast<const uint8_t*>(z.bytes.data()), z.bytes.size(), "'z.pt'");
    CHECK(has(model_error_of([&] { r.data(*r.find("x/data.pkl")); }), "is compressed (method 8)"));
    CHECK(r.data(*r.find("x/version")) != nullptr);
  }
}

TEST_CASE("pickle: integers beyond 64 bits, stack and memo bounds", "[checkpoint][hostile]") {
  auto err = [](const std::string& pkl) {
    FakeStorages fs;
    return model_error_of([&] { unpickle(reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size(), "'t.pt'", std::ref(fs)); });
  };
  auto value = [](const std::string& pkl) {
    return unpickle(reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size(), "'t.pt'");
  };
  // 2^63 as Python pickles it: LONG1 with 9 bytes.
  std::string m = err(std::string("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.", 14));
  CHECK(m.find("'t.pt'") != std::string::npos);
  CHECK(m.find("unsupported pickle content") != std::string::npos);
  CHECK(m.find("LONG1 of 9 bytes") != std::string::npos);
  CHECK(m.find("2^63") != std::string::npos);
  CHECK(m.find("corrupt") == std::string::npos);
  // LONG4 with a huge value, and the text form of protocol 0.
  CHECK(err(std::string("\x80\x02\x8b\x0a\x00\x00\x00", 7) + std::string(9, '\x01') + std::string("\x01.", 2)).find("LONG4 of 10 bytes") != std::string::npos);
  CHECK(err("L99999999999999999999L\n.").find("integer outside the signed 64-bit range") != std::string::npos);
  CHECK(err("I-99999999999999999999\n.").find("integer outside the signed 64-bit range") != std::string::npos);
  CHECK(err("Iabc\n.").find("corrupt pickle data (bad integer") != std::string::npos);
  // What does fit still reads: 2^63 - 1, -2^63, and a non-minimal but sign-extended 9-byte encoding.
  CHECK(value(std::string("\x80\x02\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.", 13))->i == INT64_MAX);
  CHECK(value(std::string("\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.", 13))->i == INT64_MIN);
  CHECK(value(std::string("\x80\x02\x8a\x09\xfe\xff\xff\xff\xff\xff\xff\xff\xff.", 14))->i == -2);
  CHECK(value("L-9223372036854775808L\n.")->i == INT64_MIN);

  // Stack: underflow below a MARK, and a stream that only ever pushes.
  CHECK(err("\x80\x02(0.").find("stack underflow") != std::string::npos);
  CHECK(err(std::string("\x80\x02q\x00.", 5)).find("stack underflow") != std::string::npos);  // BINPUT with nothing to memoize
  CHECK(err("\x80\x02" + std::string((size_t(1) << 20) + 1, 'N') + ".").find("items on the stack") != std::string::npos);
  CHECK(err("\x80\x02" + std::string((size_t(1) << 20) + 1, '(') + ".").find("open MARKs") != std::string::npos);
  // Memo: reads of absent keys, and more entries than the bound (MEMOIZE adds one each time).
  CHECK(err(std::string("\x80\x02j\x10\x00\x00\x00.", 8)).find("memo key 16 not found") != std::string::npos);
  CHECK(err("\x80\x04N" + std::string((size_t(1) << 22) + 1, '\x94') + ".").find("memo entries") != std::string::npos);
  // Rewriting one memo key many times is not growth.
  std::string rewrite = "\x80\x02N";
  for (int i = 0; i < 1000; ++i) rewrite += std::string("q\x07", 2);
  CHECK(err(rewrite + "0h\x07.") == "(no error)");
}
