// cn_clip's tokenizer on arbitrary bytes (invalid UTF-8 included), over the vocab named by
// CLIP_FUZZ_VOCAB (the fixtures' vocab.txt): ids in range, [CLS] first, padded to the context length.
#include <cstdlib>
#include <memory>

#include "clip/text/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<clip::Tokenizer> tok = [] {
    const char* v = std::getenv("CLIP_FUZZ_VOCAB");
    if (!v) std::abort();
    return std::make_unique<clip::Tokenizer>(clip::Tokenizer::load(v));
  }();
  return fuzz::expect_clean([&] {
    const std::string text(reinterpret_cast<const char*>(data), size);
    for (const std::string& t : {text, clip::preprocess_text(text)}) {
      auto ids = tok->encode(t, 52);
      if (ids.size() != 52 || ids[0] != tok->cls_id()) std::abort();
      for (int64_t id : ids)
        if (id < 0 || id >= tok->vocab_size()) std::abort();
    }
  });
}
