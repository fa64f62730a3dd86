// cn_clip's BERT Chinese tokenizer (Google's BasicTokenizer + WordPiece, do_lower_case=True) over a
// vocab.txt, reproduced exactly: clean text, spaces around CJK ideographs, Python str.split(),
// lower(), NFD accent stripping, punctuation split, greedy longest-match WordPiece.
// Invalid UTF-8 bytes become U+FFFD, which the cleaning step drops (Python never sees such input).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace clip {

class Tokenizer {
 public:
  // Missing, unreadable or empty vocab -> ModelError naming the path and the remedy (--vocab).
  static Tokenizer load(const std::string& vocab_path);

  std::vector<std::string> tokenize(const std::string& utf8) const;  // wordpieces
  // [CLS] + first context_length-2 ids + [SEP], zero-padded to context_length (cn_clip's tokenize).
  std::vector<int64_t> encode(const std::string& text, int context_length = 52) const;
  void encode_into(const std::string& text, int context_length, int64_t* out) const;

  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t token_id(const std::string& token) const;  // -1 when absent
  const std::string& token(int64_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  const std::string& vocab_sha256() const { return sha256_; }
  const std::string& path() const { return path_; }
  int64_t cls_id() const { return cls_; }
  int64_t sep_id() const { return sep_; }
  int64_t unk_id() const { return unk_; }

 private:
  std::string path_, sha256_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> vocab_;
  int64_t cls_ = 101, sep_ = 102, unk_ = 100;
};

// cn_clip's datasets' _preprocess_text: Python lower(), then curly double quotes to '"'.
std::string preprocess_text(const std::string& text);

// The vocab to use: `explicit_path` when given (it must exist), else vocab.txt beside the
// checkpoint file (or inside it when it is a folder); else ModelError with the remedy.
std::string find_vocab(const std::string& explicit_path, const std::string& checkpoint_path);

}  // namespace clip
