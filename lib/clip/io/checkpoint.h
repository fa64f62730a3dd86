// Reading and writing checkpoints without Python and without executing anything:
//  - torch.save zip archives (cn_clip's {epoch, step, name, state_dict[, optimizer]}, plain state
//    dicts, Hugging Face pytorch_model.bin) through a small allow-listed unpickler;
//  - safetensors (model.safetensors);
//  - Hugging Face ChineseCLIP folders (config.json + weights), keys mapped to cn_clip's names.
// Writing produces torch.save-compatible zip archives that torch.load and cn_clip read.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "clip/io/pyobj.h"

namespace clip {

class MappedFile;

// Tensors by cn_clip name (no "module." prefix, bert.pooler.* dropped, HF keys mapped), file order kept.
struct StateDict {
  std::vector<std::string> keys;
  std::map<std::string, TensorData> tensors;
  bool contains(const std::string& k) const { return tensors.count(k) != 0; }
  const TensorData& at(const std::string& k) const;  // throws ModelError naming the key
  void add(const std::string& k, TensorData t);
};

struct Checkpoint {
  std::string path;
  std::string format;              // "torch-zip", "safetensors", "hf"
  StateDict state_dict;
  bool had_module_prefix = false;
  std::vector<std::string> dropped_keys;   // e.g. bert.pooler.*, position_ids buffers
  std::optional<int64_t> epoch, step;
  std::string name;
  PyPtr root;                      // the whole unpickled object (optimizer state etc.), may be null
  std::string hf_config_json;      // config.json text for Hugging Face checkpoints, else empty
  // The files the tensors point into: guarded maps (fileio.h), not copies. Tensors stay valid while
  // any copy of the Checkpoint or of a tensor's owner lives.
  std::vector<std::shared_ptr<const MappedFile>> maps;
  // Throws IoError when a mapped file was truncated or rewritten since it was opened (results
  // computed from its tensors since then must be discarded).
  void check_intact() const;
};

// Loads any supported checkpoint: a file (.pt/.bin zip, .safetensors) or a Hugging Face folder.
// Throws ModelError (bad/truncated/hostile file, with the path and what was wrong) or IoError.
Checkpoint load_checkpoint(const std::string& path);

// Low level: unpickle a torch.save zip archive (every storage resolved). Throws ModelError.
PyPtr load_torch_zip(const std::string& path);

// Writes `root` as torch.save does (zip, pickle protocol 2, storages under <stem>/data/<n>),
// atomically (temporary file, then rename). Dicts with `ordered` become collections.OrderedDict.
void save_torch_zip(const std::string& path, const PyPtr& root);

// cn_clip name <-> Hugging Face ChineseCLIPModel name mapping (the converter's table); tensors that
// need a transpose (projections) or a split (ViT in_proj into q/k/v) are handled by the functions.
StateDict hf_to_cnclip(const StateDict& hf);
StateDict cnclip_to_hf(const StateDict& ours);
// Same as hf_to_cnclip(hf); also lists the keys it left out (pooler, position_ids/token_type_ids
// buffers) in *dropped when given. Keys it does not know pass through unchanged.
StateDict hf_to_cnclip(const StateDict& hf, std::vector<std::string>* dropped);

// Reads a .safetensors file (tensors point into the mapped file; `metadata` receives the
// "__metadata__" strings when given). Throws ModelError / IoError.
StateDict load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata = nullptr);
// Same, from a file already mapped (guarded map for checkpoints).
StateDict load_safetensors(const std::shared_ptr<const MappedFile>& mf, std::map<std::string, std::string>* metadata = nullptr);
// A guarded map of a checkpoint file (IoError when missing or a directory).
std::shared_ptr<const MappedFile> map_checkpoint_file(const std::string& path);
// Writes `sd` (in key order, each tensor contiguous) atomically. "format": "pt" is added to the
// metadata unless given, as transformers requires it.
void save_safetensors(const std::string& path, const StateDict& sd, const std::map<std::string, std::string>& metadata = {});

// Writes `root` like save_torch_zip(path, root) with a chosen storage location tag in every
// persistent id (torch ignores it with map_location='cpu'; tests use "cuda:0") and ZIP64 records
// forced on (also tests; large files get them automatically).
void save_torch_zip(const std::string& path, const PyPtr& root, const std::string& location, bool force_zip64);

// A contiguous copy of `t` in a new owned buffer (strides normalised); returns `t` itself (sharing
// its storage) when it is already contiguous.
TensorData contiguous(const TensorData& t);
// A new zero-filled owned tensor.
TensorData owned_tensor(DType dtype, std::vector<int64_t> shape);

}  // namespace clip
