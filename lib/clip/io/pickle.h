// A Python pickle reader and writer limited to plain data and torch tensors. The reader never
// executes anything: GLOBAL names outside a short allow-list (collections.OrderedDict, torch's
// tensor/parameter rebuild helpers and storage types, a few builtin data constructors) are
// rejected, and REDUCE is only interpreted for those names. Every read is bounds-checked.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "clip/io/pyobj.h"

namespace clip {

// Storage objects handed to _rebuild_tensor_v2: PyValue of kind object with s == kStorageObject and
// `tensor` describing the storage as a 1-D array (dtype, shape {numel}, data, owner).
inline constexpr const char* kStorageObject = "torch.storage";

// Receives the persistent id (for torch: the tuple ('storage', <storage type>, key, location, numel))
// and returns the storage object. Throws ModelError for anything it cannot resolve.
using PersistentLoader = std::function<PyPtr(const PyPtr& pid)>;

// Storage type global ("torch.FloatStorage") -> dtype; false when not a known storage type.
bool storage_type_dtype(const std::string& global, DType& out);
std::string storage_type_name(DType t);  // "FloatStorage"

// Unpickles protocols 0-5 (binary opcodes; the text opcodes of protocol 0 for ints, floats and memo).
// `what` names the source in error messages ("checkpoint 'x.pt'"). Throws ModelError on a bad or
// truncated stream, a disallowed global ("refusing to load <what>: pickle global os.system is not
// allowed ..."), out-of-range tensors, or nesting deeper than 500 levels / self-references.
PyPtr unpickle(const uint8_t* data, size_t size, const std::string& what, const PersistentLoader& persistent_load = nullptr);

// Writes `root` as pickle protocol 2 the way torch.save does. Each tensor value becomes
// _rebuild_tensor_v2(persistent_id, 0, shape, contiguous strides, False, OrderedDict()) whose
// storage key is its index in `tensors_out` (the caller writes those storages contiguously).
// `location` is the storage location tag written into every persistent id ("cpu").
// Throws ModelError for values that cannot be written (objects, nesting deeper than 500 levels).
std::string pickle_torch(const PyPtr& root, std::vector<const TensorData*>& tensors_out, const std::string& location = "cpu");

}  // namespace clip
