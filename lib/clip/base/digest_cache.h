// A small on-disk cache of digests computed over files that are read, not written (a checkpoint's
// weights hash: 0.6-0.7 s of SHA-256 for a ViT-B-16 checkpoint on the GPU machine's Xeon, each time
// a tool wrote a store or compared one with its model).
//
// An entry is found by a key made of the caller's label (what digest, of what reading of the files)
// and each file's identity and state: device, inode, size, modification and change times to the
// nanosecond. Any write to a file moves its change time (which no user call can set back), so a
// changed file misses. A file whose times are less than `min_age_s` old is not stored: on a file
// system with coarse timestamps a write within the same tick could otherwise go unseen (git's "racy"
// entries).
//
// Where: $CLIP_CACHE_DIR, else $XDG_CACHE_HOME/clip-cpp, else $HOME/.cache/clip-cpp (entries under
// digests/). CLIP_NO_CACHE=1 turns it off. It is only a cache: a missing, unreadable or unwritable
// folder means a miss, never an error.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "clip/base/fileio.h"

namespace clip {

class DigestKey {
 public:
  // `files`: the identities of every file the digest reads, in a fixed order, taken before it reads
  // them; `label`: what is computed from them (include a version, so that a change of meaning misses).
  DigestKey(const std::string& label, const std::vector<FileIdentity>& files, double min_age_s = 2.0);
  // The digest stored under this key, if any.
  std::optional<std::string> lookup() const;
  // Stores `digest` (one line, at most 256 bytes) under this key, unless a file was too recent or the
  // cache is off. Silent on failure.
  void store(const std::string& digest) const;

 private:
  std::string hex_;       // sha256 of the label and the identities: the entry's file name
  bool storable_ = false;
};

// The cache's folder, or "" when it is off or no location is known.
std::string digest_cache_dir();

}  // namespace clip
