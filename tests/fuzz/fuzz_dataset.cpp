// The Flickr30k-CN readers: the same bytes as an images TSV and as a texts JSONL, strict and lenient.
#include "clip/data/dataset.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::file_with(data, size, ".txt");
  for (bool strict : {false, true}) {
    fuzz::expect_clean([&] {
      clip::ReadReport rep;
      clip::ImageTsv tsv(path, rep, strict);
      for (size_t i = 0; i < tsv.size(); ++i) (void)tsv.bytes(i);
    });
    fuzz::expect_clean([&] {
      clip::ReadReport rep;
      (void)clip::read_texts(path, rep, strict);
    });
  }
  return 0;
}
