#include "clip/io/checkpoint.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <algorithm>
#include <memory>
#include <unordered_map>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/io/pickle.h"
#include "clip/io/zip.h"

namespace clip {

// ---------------------------------------------------------------------------------------------
// StateDict and tensor helpers

const TensorData& StateDict::at(const std::string& k) const {
  auto it = tensors.find(k);
  if (it == tensors.end()) throw ModelError("checkpoint has no tensor '" + k + "'");
  return it->second;
}

void StateDict::add(const std::string& k, TensorData t) {
  if (tensors.count(k)) throw ModelError("duplicate tensor key '" + k + "' in checkpoint");
  keys.push_back(k);
  tensors.emplace(k, std::move(t));
}

static std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> st(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

TensorData owned_tensor(DType dtype, std::vector<int64_t> shape) {
  TensorData t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.strides = contiguous_strides(t.shape);
  size_t n = size_t(t.numel()) * dtype_size(dtype);
  auto buf = std::shared_ptr<uint8_t>(new uint8_t[std::max<size_t>(n, 1)](), std::default_delete<uint8_t[]>());
  t.data = buf.get();
  t.owner = buf;
  return t;
}

TensorData contiguous(const TensorData& t) {
  if (t.strides.size() != t.shape.size()) {
    if (!t.strides.empty()) throw ModelError("tensor " + t.shape_str() + " has " + std::to_string(t.strides.size()) + " strides");
    TensorData r = t;  // no strides given: laid out contiguously
    r.strides = contiguous_strides(t.shape);
    return r;
  }
  if (t.is_contiguous()) {
    TensorData r = t;
    r.strides = contiguous_strides(t.shape);
    return r;
  }
  TensorData r = owned_tensor(t.dtype, t.shape);
  int64_t n = t.numel();
  if (n == 0) return r;
  size_t es = dtype_size(t.dtype);
  uint8_t* dst = const_cast<uint8_t*>(r.data);
  size_t nd = t.shape.size();
  std::vector<int64_t> idx(nd, 0);
  // Copy runs along the last dimension, walking the other indices like an odometer.
  int64_t inner = nd ? t.shape[nd - 1] : 1;
  int64_t inner_stride = nd ? t.strides[nd - 1] : 1;
  for (int64_t done = 0; done < n; done += inner) {
    int64_t off = 0;
    for (size_t d = 0; d + 1 < nd; ++d) off += idx[d] * t.strides[d];
    const uint8_t* src = t.data + off * int64_t(es);
    if (inner_stride == 1) {
      std::memcpy(dst, src, size_t(inner) * es);
      dst += size_t(inner) * es;
    } else {
      for (int64_t i = 0; i < inner; ++i, dst += es) std::memcpy(dst, src + i * inner_stride * int64_t(es), es);
    }
    for (size_t d = nd >= 1 ? nd - 1 : 0; d-- > 0;) {
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// torch.save zip archives

namespace {

std::string quoted(const std::string& path) { return "'" + path + "'"; }

// Legacy (pre-1.6, or _use_new_zipfile_serialization=False) torch.save files start with a pickled
// magic number: PROTO 2, LONG1 of 0x1950a86a20f9469cfc6c.
bool is_legacy_torch(const uint8_t* d, size_t n) {
  static const uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  return n >= sizeof magic && std::memcmp(d, magic, sizeof magic) == 0;
}

bool looks_like_safetensors(const uint8_t* d, size_t n) {
  if (n < 10) return false;
  uint64_t h = 0;
  for (int i = 0; i < 8; ++i) h |= uint64_t(d[i]) << (8 * i);
  return h >= 2 && h <= n - 8 && d[8] == '{';
}

PyPtr read_torch_zip(const std::shared_ptr<const MappedFile>& mf) {
  const std::string what = "checkpoint " + quoted(mf->path());
  ZipReader zip(mf->data(), mf->size(), what);
  // The archive's root folder varies (torch uses the file's stem at save time): find data.pkl.
  const ZipEntry* pkl = nullptr;
  bool torchscript = false;
  for (const auto& e : zip.entries()) {
    size_t slash = e.name.find('/');
    if (slash == std::string::npos) continue;
    std::string rest = e.name.substr(slash + 1);
    if (rest == "data.pkl" && !pkl) pkl = &e;
    if (rest == "constants.pkl" || rest.rfind("code/", 0) == 0) torchscript = true;
  }
  if (torchscript)
    throw ModelError(what + " is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; save the "
                     "weights with torch.save(model.state_dict(), path) instead");
  if (!pkl)
    throw ModelError(what + " is a zip file without <name>/data.pkl, so not a torch.save checkpoint");
  std::string prefix = pkl->name.substr(0, pkl->name.size() - std::strlen("data.pkl"));
  const uint8_t* pdata = zip.checked_data(*pkl);

  std::shared_ptr<const void> owner = mf;
  std::unordered_map<std::string, PyPtr> storages;
  auto loader = [&](const PyPtr& pid) -> PyPtr {
    if (!pid || pid->kind != PyValue::Kind::tuple || pid->items.size() != 5 || !pid->items[0] ||
        pid->items[0]->kind != PyValue::Kind::string || pid->items[0]->s != "storage")
      throw ModelError(what + ": unsupported persistent id in data.pkl (expected a torch storage reference)");
    const PyPtr& type = pid->items[1];
    const PyPtr& key = pid->items[2];
    const PyPtr& numel_v = pid->items[4];
    DType dt;
    if (!type || type->kind != PyValue::Kind::object || !storage_type_dtype(type->s, dt))
      throw ModelError(what + ": unsupported storage type " + (type && type->kind == PyValue::Kind::object ? type->s : "?") +
                       " (supported: float32/16, bfloat16, float64, int64/32/16/8, uint8, bool)");
    if (!key || key->kind != PyValue::Kind::string) throw ModelError(what + ": storage key is not a string");
    if (!numel_v || numel_v->kind != PyValue::Kind::integer || numel_v->i < 0)
      throw ModelError(what + ": bad element count for storage '" + key->s + "'");
    // pid->items[3] is the location tag ('cpu', 'cuda:0', ...): everything is loaded to host memory.
    auto it = storages.find(key->s);
    if (it != storages.end()) {
      if (it->second->tensor.dtype != dt || it->second->tensor.shape[0] != numel_v->i)
        throw ModelError(what + ": storage '" + key->s + "' is referenced with different types or sizes");
      return it->second;
    }
    const ZipEntry* e = zip.find(prefix + "data/" + key->s);
    if (!e) throw ModelError(what + ": storage entry '" + prefix + "data/" + key->s + "' is missing from the archive");
    const uint8_t* d = zip.data(*e);
    uint64_t need;
    if (__builtin_mul_overflow(uint64_t(numel_v->i), uint64_t(dtype_size(dt)), &need) || need > e->size)
      throw ModelError(what + ": storage '" + key->s + "' holds " + std::to_string(e->size) + " bytes but " +
                       std::to_string(numel_v->i) + " " + dtype_name(dt) + " elements were declared (damaged file)");
    auto v = std::make_shared<PyValue>();
    v->kind = PyValue::Kind::object;
    v->s = kStorageObject;
    v->tensor.dtype = dt;
    v->tensor.shape = {numel_v->i};
    v->tensor.strides = {1};
    v->tensor.data = d;
    v->tensor.owner = owner;
    storages.emplace(key->s, v);
    return v;
  };
  try {
    PyPtr root = unpickle(pdata, size_t(pkl->size), what, loader);
    mf->check_intact();
    return root;
  } catch (const ModelError&) {
    mf->check_intact();  // a file cut short under the map reads as a bad pickle: say what happened
    throw;
  }
}

std::shared_ptr<const MappedFile> map_checkpoint(const std::string& path) { return map_checkpoint_file(path); }

void reject_legacy(const MappedFile& mf) {
  if (is_legacy_torch(mf.data(), mf.size()))
    throw ModelError("checkpoint " + quoted(mf.path()) +
                     " uses the legacy torch.save format (PyTorch < 1.6 or _use_new_zipfile_serialization=False), "
                     "which is not supported. Re-save it with a current PyTorch: python3 -c \"import torch; "
                     "torch.save(torch.load('in.pt', map_location='cpu'), 'out.pt')\"");
}

}  // namespace

PyPtr load_torch_zip(const std::string& path) {
  auto mf = map_checkpoint(path);
  reject_legacy(*mf);
  if (mf->size() < 4 || std::memcmp(mf->data(), "PK\x03\x04", 4) != 0)
    throw ModelError("checkpoint " + quoted(path) + " is not a torch.save zip archive");
  return read_torch_zip(mf);
}

void save_torch_zip(const std::string& path, const PyPtr& root, const std::string& location, bool force_zip64) {
  std::vector<const TensorData*> tensors;
  std::string pkl = pickle_torch(root, tensors, location);
  // The archive folder is the file's stem, as torch.save names it.
  std::string base = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  std::string stem = base.substr(0, base.find_last_of('.'));
  if (stem.empty()) stem = "archive";
  AtomicFile f(path);
  ZipWriter zip(f, force_zip64);
  zip.add(stem + "/data.pkl", pkl.data(), pkl.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorData& t = *tensors[i];
    size_t bytes = size_t(t.numel()) * dtype_size(t.dtype);
    if (bytes && !t.data) throw ModelError("cannot save tensor " + t.shape_str() + ": it has no data");
    TensorData c = contiguous(t);
    zip.add(stem + "/data/" + std::to_string(i), c.data, bytes);
  }
  zip.add(stem + "/version", "3\n", 2);
  zip.finish();
  f.commit();
}

void save_torch_zip(const std::string& path, const PyPtr& root) { save_torch_zip(path, root, "cpu", false); }

// ---------------------------------------------------------------------------------------------
// load_checkpoint

namespace {

bool has_prefix(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

bool is_tensor_dict(const PyPtr& v) {
  if (!v || v->kind != PyValue::Kind::dict || v->entries.empty()) return false;
  for (const auto& [k, x] : v->entries)
    if (!k || k->kind != PyValue::Kind::string || !x || x->kind != PyValue::Kind::tensor) return false;
  return true;
}

// Fills ck.state_dict from raw (file) names: strips "module.", maps Hugging Face names, drops the
// keys cn_clip never loads.
void finish_state_dict(Checkpoint& ck, const StateDict& raw) {
  StateDict stripped;
  for (const auto& k : raw.keys) {
    std::string name = k;
    if (has_prefix(name, "module.")) {
      name = name.substr(7);
      ck.had_module_prefix = true;
    }
    if (stripped.contains(name))
      throw ModelError("checkpoint '" + ck.path + "' has both '" + k + "' and an unprefixed '" + name + "'");
    stripped.add(name, raw.tensors.at(k));
  }
  bool hf = false;
  for (const auto& k : stripped.keys)
    if (has_prefix(k, "text_model.") || has_prefix(k, "vision_model.")) hf = true;
  if (hf) stripped = hf_to_cnclip(stripped, &ck.dropped_keys);
  for (const auto& k : stripped.keys) {
    // bert.pooler is unused by CLIP (text features come from [CLS]); position/token type id
    // buffers are recomputed by the model.
    if (has_prefix(k, "bert.pooler.") || k == "bert.embeddings.position_ids" || k == "bert.embeddings.token_type_ids") {
      ck.dropped_keys.push_back(k);
      continue;
    }
    ck.state_dict.add(k, stripped.tensors.at(k));
  }
}

StateDict tensors_of(const PyPtr& d, const std::string& path) {
  StateDict sd;
  for (const auto& [k, v] : d->entries) {
    if (!k || k->kind != PyValue::Kind::string) throw ModelError("checkpoint '" + path + "': state_dict has a non-string key");
    if (!v || v->kind != PyValue::Kind::tensor)
      throw ModelError("checkpoint '" + path + "': state_dict entry '" + k->s + "' is not a tensor");
    sd.add(k->s, v->tensor);
  }
  return sd;
}

void load_torch_file(Checkpoint& ck, const std::shared_ptr<const MappedFile>& mf) {
  ck.format = "torch-zip";
  ck.root = read_torch_zip(mf);
  const PyPtr& root = ck.root;
  if (!root || root->kind != PyValue::Kind::dict)
    throw ModelError("checkpoint '" + ck.path + "' does not hold a dict at the top level; expected cn_clip's "
                     "{epoch, step, name, state_dict} or a plain state dict");
  PyPtr sd = root->get("state_dict");
  if (sd) {
    if (sd->kind != PyValue::Kind::dict) throw ModelError("checkpoint '" + ck.path + "': 'state_dict' is not a dict");
    if (auto e = root->get("epoch"); e && e->kind == PyValue::Kind::integer) ck.epoch = e->i;
    if (auto s = root->get("step"); s && s->kind == PyValue::Kind::integer) ck.step = s->i;
    if (auto n = root->get("name"); n && n->kind == PyValue::Kind::string) ck.name = n->s;
  } else if (is_tensor_dict(root)) {
    sd = root;
  } else {
    std::string keys;
    for (size_t i = 0; i < root->entries.size() && i < 8; ++i)
      if (root->entries[i].first && root->entries[i].first->kind == PyValue::Kind::string)
        keys += (keys.empty() ? "" : ", ") + root->entries[i].first->s;
    throw ModelError("checkpoint '" + ck.path + "' has no 'state_dict' and is not a plain dict of tensors (top-level keys: " +
                     keys + ")");
  }
  finish_state_dict(ck, tensors_of(sd, ck.path));
}

StateDict load_hf_bin(Checkpoint& ck, const std::string& bin) {
  auto mf = map_checkpoint(bin);
  reject_legacy(*mf);
  ck.maps.push_back(mf);
  PyPtr root = read_torch_zip(mf);
  PyPtr sd = root && root->kind == PyValue::Kind::dict && root->get("state_dict") ? root->get("state_dict") : root;
  if (!sd || sd->kind != PyValue::Kind::dict) throw ModelError("checkpoint '" + bin + "' does not hold a dict of tensors");
  if (!ck.root) ck.root = root;
  return tensors_of(sd, bin);
}

// Sharded weights: <name>.index.json maps every tensor to its shard file; shards are read in the
// order they first appear.
StateDict load_hf_shards(Checkpoint& ck, const std::string& index_path, bool safetensors) {
  nlohmann::ordered_json index;  // keeps the file's order of tensors
  try {
    index = nlohmann::ordered_json::parse(read_file(index_path));
  } catch (const nlohmann::json::exception& e) {
    throw ModelError("'" + index_path + "' is not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw ModelError("'" + index_path + "' has no weight_map object");
  std::vector<std::string> shards;
  for (const auto& [key, file] : index["weight_map"].items()) {
    if (!file.is_string()) throw ModelError("'" + index_path + "': shard of '" + key + "' is not a file name");
    std::string f = file.get<std::string>();
    if (f.find('/') != std::string::npos || f == "..")
      throw ModelError("'" + index_path + "': shard name '" + f + "' must be a plain file name in the folder");
    if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
  }
  StateDict all;
  for (const auto& f : shards) {
    std::string p = path_join(ck.path, f);
    StateDict part;
    if (safetensors) {
      auto mf = map_checkpoint(p);
      ck.maps.push_back(mf);
      part = load_safetensors(mf);
    } else {
      part = load_hf_bin(ck, p);
    }
    for (const auto& k : part.keys) {
      if (all.contains(k)) throw ModelError("tensor '" + k + "' appears in more than one shard of '" + ck.path + "'");
      all.add(k, part.tensors.at(k));
    }
  }
  return all;
}

void load_hf_folder(Checkpoint& ck) {
  ck.format = "hf";
  std::string cfg = path_join(ck.path, "config.json");
  if (!file_exists(cfg))
    throw ModelError("folder '" + ck.path + "' has no config.json, so it is not a Hugging Face model folder; pass the "
                     "checkpoint file itself (.pt / .bin / .safetensors)");
  ck.hf_config_json = read_file(cfg);
  std::string st = path_join(ck.path, "model.safetensors");
  std::string bin = path_join(ck.path, "pytorch_model.bin");
  StateDict raw;
  if (file_exists(st)) {
    auto mf = map_checkpoint(st);
    ck.maps.push_back(mf);
    raw = load_safetensors(mf);
  } else if (file_exists(st + ".index.json")) {
    raw = load_hf_shards(ck, st + ".index.json", true);
  } else if (file_exists(bin)) {
    raw = load_hf_bin(ck, bin);
  } else if (file_exists(bin + ".index.json")) {
    raw = load_hf_shards(ck, bin + ".index.json", false);
  } else {
    throw ModelError("Hugging Face folder '" + ck.path + "' has config.json but no weights (model.safetensors or "
                     "pytorch_model.bin); download the weight file into it");
  }
  finish_state_dict(ck, raw);
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  Checkpoint ck;
  ck.path = path;
  if (is_directory(path)) {
    load_hf_folder(ck);
    return ck;
  }
  auto mf = map_checkpoint(path);
  ck.maps.push_back(mf);
  const uint8_t* d = mf->data();
  size_t n = mf->size();
  reject_legacy(*mf);
  if (n >= 4 && std::memcmp(d, "PK\x03\x04", 4) == 0) {
    load_torch_file(ck, mf);
  } else if (looks_like_safetensors(d, n)) {
    ck.format = "safetensors";
    finish_state_dict(ck, load_safetensors(mf));
  } else if (n >= 4 && std::memcmp(d, "PK\x05\x06", 4) == 0) {
    throw ModelError("checkpoint " + quoted(path) + " is an empty zip archive");
  } else {
    throw ModelError("checkpoint " + quoted(path) + " is neither a torch.save zip archive nor a safetensors file (" +
                     std::to_string(n) + " bytes); it may be truncated, a TensorFlow/ONNX file or a download error page");
  }
  ck.check_intact();
  return ck;
}

void Checkpoint::check_intact() const {
  for (const auto& m : maps) m->check_intact();
}

std::shared_ptr<const MappedFile> map_checkpoint_file(const std::string& path) {
  if (is_directory(path)) throw IoError(quoted(path) + " is a directory, expected a checkpoint file");
  if (!file_exists(path)) throw IoError("checkpoint " + quoted(path) + " does not exist");
  return std::make_shared<const MappedFile>(path, MappedFile::Mode::guarded);
}

}  // namespace clip
