// Encoding whole inputs with a loaded model: every image of a TSV (decoded in parallel, in order)
// and every text of a JSONL, and writing the features as a binary store or cn_clip JSONL.
// Used by clip-index, clip-query (image queries from a TSV) and clip-finetune's validation.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "clip/retrieval/int8.h"
#include "clip/retrieval/store.h"

namespace clip {

class Encoder;
class ImageSource;
struct TextRecord;

// Where the time of one encode_images / encode_texts call went, in seconds of steady_clock (the
// tools log it as a `timing ...` line; docs/benchmarks.md). The main thread's parts (wait_input_s,
// stage_s, forward_s, wait_device_s) add up to about encode_s; the *_cpu_s parts are summed over
// the decode workers, so (read + decode + resize) / threads near encode_s means decoding bounds it.
struct EncodeTiming {
  double encode_s = 0;         // the whole call
  double wait_input_s = 0;     // blocked for input: images in BatchPipeline::next (decoding), texts for the tokeniser
  double stage_s = 0;          // host staging of each batch: page-locked copies on CUDA; texts: ordering and trimming
  double forward_s = 0;        // in the forward calls: on CUDA queueing the kernels, on the CPU the compute itself
  double first_forward_s = 0;  // the first of them (CUDA: lazy initialisation of kernels and libraries)
  double wait_device_s = 0;    // blocked until a batch's features reached the host
  double read_cpu_s = 0;       // images: reading the encoded bytes (TSV, file, LMDB), summed over the workers
  double decode_cpu_s = 0;     // images: decoding them
  double resize_cpu_s = 0;     // images: the squash to R x R and the 8-bit planar RGB (device: the copy into the slab)
  double slab_wait_cpu_s = 0;  // images, --decode device: blocked for a free slab (UploadRing::reserve), not in resize
  double slab_alloc_s = 0;     // images, --decode device: allocating (page-locking) the slabs, on a thread of its own
  int64_t unslabbed = 0;       // images, --decode device: staged on their own (slab not there yet, or full)
  double tokenize_s = 0;       // texts: tokenising (on CUDA on a helper thread, overlapping the device)
  int64_t batches = 0;
  int threads = 0;             // images: decode workers
  bool trim = false;           // texts: padding columns trimmed (TextEncodeOptions::trim)
  double columns = 0;          // texts: token columns computed / (texts x context length) (1 untrimmed)
  // One more batch's forward call that took `s` seconds.
  void add_forward(double s) {
    forward_s += s;
    if (batches++ == 0) first_forward_s = s;
  }
};

struct EncodedSet {
  std::vector<int64_t> ids;                                // ids of the rows of `features`, input order
  at::Tensor features;                                     // [n, E] float32, L2-normalised, CPU
  std::vector<std::pair<int64_t, std::string>> skipped;    // (id, why) of inputs dropped with skip_errors
  IdNames names;                                           // string ids (photo paths) of the rows that have one
  EncodeTiming timing;
};

// All images of `src` (a TSV, a photo folder, an LMDB; or the rows `only` when non-empty). Decoding runs on `threads` workers ahead of
// the model; with skip_errors an undecodable image is logged and dropped, otherwise the DataError
// naming the file, line and image_id propagates. The workers write the 8-bit RGB result of the
// exact resize (Encoder::preprocess_image_u8) and the model's device normalises it, so the
// features are those of the float32 pixels bit for bit; on CUDA the batches are staged in
// page-locked memory, uploaded asynchronously and brought back two batches behind.
EncodedSet encode_images(Encoder& enc, const ImageSource& tsv, int threads, bool skip_errors,
                         const std::vector<size_t>& only = {});

struct TextEncodeOptions {
  // Per batch, only as many token columns as its longest text needs (rounded up to a multiple of
  // 8, at most the context length), with the texts of each chunk ordered by length so that a batch
  // holds similar lengths; the features come back in input order. The padding columns left out
  // are masked in every layer, so the features are the same up to rounding (the sums have other
  // lengths). Unset: on for a model on CUDA (fp16/bf16 there are not bit-reproducible anyway),
  // off elsewhere, where the features stay bit-identical to full-length batches. A trimmed batch
  // holds as many texts as fit in the tokens of batch_size texts at the context length (at least
  // batch_size; the longest-first order makes the first batch batch_size texts at full length), so
  // that --batch-size bounds the activations' memory as before while short texts go in larger batches.
  std::optional<bool> trim;
};
// All texts, tokenised a chunk at a time on every thread; on CUDA the next chunk is tokenised while
// the device encodes this one, and features are brought back two batches behind.
EncodedSet encode_texts(Encoder& enc, const std::vector<TextRecord>& texts, const TextEncodeOptions& opt = {});

// Whether write_features writes `path` as cn_clip JSONL (a name ending in .jsonl) rather than as a
// binary store: JSONL keeps no metadata, so a job writing only JSONL never needs the weights hash.
bool is_jsonl_output(const std::string& path);

// Store metadata describing these features: model, weights hash, preprocessing, source file.
StoreMeta make_store_meta(const Encoder& enc, const std::string& kind, const std::string& source_path);
// The metadata write_features(path, ...) needs: all of it for a store, only the kind for cn_clip
// JSONL (which keeps none), so that a JSONL job never reads the checkpoint to hash it.
StoreMeta store_meta_for(const std::string& path, const Encoder& enc, const std::string& kind,
                         const std::string& source_path);

// Writes features to `path`: cn_clip JSONL when it ends in .jsonl, else a binary store (dtype f32/f16);
// append=true adds to an existing store instead (ids must be new, unless `replace`: a folder's changed files).
// Atomic either way.
//
// Files beside a store are kept consistent with it: `ann_factory` builds STORE.ann (faiss, trained on
// the store's rows, at most ann_train of them), `int8` writes STORE.i8. Without them, an existing
// STORE.ann gets the appended rows (or, for a store written anew, is removed as stale) and an existing
// STORE.i8 is rebuilt. An index that does not match the store it is appended to is refused before the
// store changes, with the remedy.
struct SidecarOptions {
  std::string ann_factory;
  int64_t ann_train = 100000;
  bool int8 = false;
  Int8Scale int8_scale = Int8Scale::per_vector;  // --i8-scale (an appended-to file keeps its own kind)
};

void write_features(const std::string& path, const EncodedSet& set, const StoreMeta& meta, StoreDtype dtype,
                    bool append, const SidecarOptions& side = {}, bool replace = false);

// clip-index --merge: the stores `inputs` (two or more, in that order; later ones win duplicate ids
// with opt.replace) written as one store `out` (which may be one of the inputs), with the files beside
// them carried over instead of dropped:
//  * STORE.ann: with side.ann_factory, a new index of that factory; else, when the first input has an
//    index and none of its rows was replaced, that index with the other inputs' rows added (no
//    training); else, when any input has one, a new index of the first such input's factory, trained
//    on the merged rows (logged). An input's index that does not match its store is refused (DataError,
//    with the remedy) before anything is written.
//  * STORE.i8: rebuilt when side.int8 or any input has one (the first one's scale kind unless
//    side.int8). Stale files beside `out` are removed otherwise.
void merge_features(const std::vector<std::string>& inputs, const std::string& out, const MergeOptions& opt,
                    const SidecarOptions& side = {});

// Photo folders and --append: which rows of `src` still need encoding for the store at `store_path`.
// Without the store, or for a source other than a folder, every row (appending a TSV's id that is
// already there stays an error). For a folder and a store, a row whose id is absent, or whose file size
// or mtime differs from those recorded in the store's extra["files"]. Sets `changed` to the number of
// rows already in the store that must be re-encoded (their features are replaced).
std::vector<size_t> rows_to_index(const ImageSource& src, const std::string& store_path, size_t& changed);
// extra["files"] = {name: [size, mtime]} for the folder rows in `ids` (empty object for other sources).
nlohmann::json folder_file_stats(const ImageSource& src, const std::vector<int64_t>& ids);

}  // namespace clip
