// Queries against a feature store: gathering text/image queries, encoding them in batches, one
// matrix product per batch (search.h), and the output formats shared by clip-query and clip-serve.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "clip/retrieval/search.h"
#include "clip/retrieval/store.h"

namespace clip {

class Collection;
class Encoder;
struct ImageOptions;
struct ModelOptions;

// Output format for query records.
enum class OutFormat { jsonl, tsv, cnclip };

struct QueryOptions {
  std::vector<std::string> texts;        // --text
  std::string text_file;                 // --text-file ('-' = stdin)
  std::string texts_jsonl;               // --texts (cn_clip texts JSONL: queries with text_id)
  std::vector<std::string> image_paths;  // --image
  std::string query_tsv;                 // --query-images (images TSV, photo folder or list: queries with image_id)
  int k = 10;
  float threshold = -std::numeric_limits<float>::infinity();
  bool exclude_self = false;
  bool skip_bad = false;  // --on-error skip: skip bad lines of --texts / --query-images and undecodable images
};

struct Query {
  std::string kind;   // "text" | "image"
  std::string label;  // the text, the image path, or "image_id N"
  bool has_id = false;
  int64_t id = 0;     // text_id / image_id when the query came with one
  std::vector<int64_t> gold;  // the right answers when known (a --texts query's image_ids)
  std::vector<Hit> hits;
};

struct QueryResults {
  std::vector<Query> queries;
  IdNames query_names;  // string ids of image queries from a photo folder
  size_t total_hits() const;
};

// When --checkpoint is not given, use the one the store was built with (its metadata records the
// path and the model config), so a store is enough to query it.
void fill_model_options_from_store(ModelOptions& mo, const FeatureSet& store);
// Image queries against a store of photos turned upright (--exif-transpose at indexing: its
// preprocessing metadata says "exif_transpose": true) are turned upright too, flag or not.
void fill_image_options_from_store(ImageOptions& io, const FeatureSet& store);

// Encodes every query (texts in batches, images decoded in parallel) and searches the store.
QueryResults run_queries(Encoder& enc, const FeatureSet& store, const QueryOptions& q, int threads);
// The same over a collection (shards, approximate or int8 files beside the stores: collection.h).
QueryResults run_queries(Encoder& enc, const Collection& store, const QueryOptions& q, int threads);

// Text queries alone: encodes `texts` in one batch and returns hits per text.
std::vector<std::vector<Hit>> search_texts(Encoder& enc, const FeatureSet& store, const std::vector<std::string>& texts,
                                           int k, float threshold = -std::numeric_limits<float>::infinity());
std::vector<std::vector<Hit>> search_texts(Encoder& enc, const Collection& store, const std::vector<std::string>& texts,
                                           int k, float threshold = -std::numeric_limits<float>::infinity());

// jsonl: {"query", ["query_id",] "rank", "id", "score"} per hit; tsv: query<TAB>rank<TAB>id<TAB>score;
// cnclip: {"text_id", "image_ids": [...]} (or {"image_id", "text_ids"}) per query, as cn_clip's
// make_topk_predictions writes them (needs queries with ids).
std::string format_results(const QueryResults& r, const FeatureSet& store, OutFormat f);

// Contact sheet: one row per query led by the query's text (any script, drawn with a CJK font when
// one is installed) or the query image, then the hits with rank, score and id; hits that are right
// answers (Query::gold) are framed in green. Images come from `images_tsv` (a TSV, photo folder or
// list) or the store's recorded source.
void write_montage(const std::string& path, const QueryResults& r, const FeatureSet& store,
                   const std::string& images_tsv);

}  // namespace clip
