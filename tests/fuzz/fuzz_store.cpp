// Feature files: the binary store's header, metadata and sizes, and cn_clip's feature JSONL.
#include "clip/retrieval/store.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] { (void)clip::open_store(fuzz::file_with(data, size, ".clipfeat")); });
  fuzz::expect_clean([&] { (void)clip::read_features_jsonl(fuzz::file_with(data, size, ".jsonl")); });
  return 0;
}
