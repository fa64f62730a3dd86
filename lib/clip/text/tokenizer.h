// Text tokenizer compatible with cn_clip's BERT tokenizer (cn_clip/clip/bert_tokenizer.py, i.e. Google
// BERT's FullTokenizer with do_lower_case=True) and with cn_clip.clip.tokenize(). Same vocab.txt, same
// word pieces, same ids, bit for bit.
//
// Pipeline (each step mirrors the Python one):
//  1. input bytes are UTF-8; an invalid byte sequence is replaced by U+FFFD, which step 2 drops (so it
//     behaves like Python's bytes.decode("utf-8", "ignore"), which cn_clip applies to bytes input);
//  2. clean: drop U+0000, U+FFFD and Cc/Cf characters except \t \n \r; \t \n \r and Zs become spaces;
//  3. spaces around CJK ideographs (blocks 4E00-9FFF, 3400-4DBF, 20000-2A6DF, 2A700-2B73F, 2B740-2B81F,
//     2B820-2CEAF, F900-FAFF, 2F800-2FA1F; not kana, not Hangul);
//  4. split on Python's str.split() whitespace (which also includes U+2028/U+2029);
//  5. per word: Python str.lower() (full mapping, İ -> i + U+0307, final-sigma rule), NFD, drop Mn marks,
//     split off every punctuation character (ASCII 33-47, 58-64, 91-96, 123-126 and Unicode P*);
//  6. WordPiece: greedy longest match, continuation pieces prefixed "##"; a word of more than 200 code
//     points, or one that cannot be covered completely, becomes a single [UNK].
// Unicode character data comes from ICU but is pinned to Unicode 14.0 (the version of Python 3.11's
// unicodedata, which produced the reference outputs): characters assigned later are treated as
// unassigned, as that Python does.
//
// Thread safety: a loaded Tokenizer is immutable; all const methods may run concurrently.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace clip {

class Tokenizer {
 public:
  // Reads a BERT vocab.txt: one token per line (lines end at \n, \r\n or \r, as Python's universal
  // newlines), each stripped of leading/trailing Python whitespace; id = 0-based line index; for a
  // repeated token the later line wins (Python dict semantics). Throws ModelError (naming the path and
  // the remedy, --vocab) if the file is missing, unreadable, empty, not UTF-8, or lacks [CLS]/[SEP]/[UNK].
  //
  // A path ending in ".json" is read as a Hugging Face tokenizer.json (what transformers 5 saves instead
  // of vocab.txt): its WordPiece model gives the vocab (model.vocab, ids 0..N-1 each once), the unknown
  // token (model.unk_token) and the longest word (model.max_input_chars_per_word); the post-processor
  // gives [CLS]/[SEP]. Accepted only when it describes the tokenizer this class reproduces: model.type
  // WordPiece with continuing_subword_prefix "##", a BertNormalizer with clean_text, handle_chinese_chars
  // and lowercase on and strip_accents null or true, a BertPreTokenizer, a BertProcessing or
  // "[CLS] $A [SEP]" TemplateProcessing post-processor (or none), and added tokens that are vocab entries
  // with their vocab ids. Anything else throws ModelError naming the file and the field.
  static Tokenizer load(const std::string& vocab_path);

  // Word pieces of a text (untruncated), e.g. "Café!" -> {"cafe", "!"}.
  std::vector<std::string> tokenize(const std::string& utf8) const;
  // Ids of the word pieces (untruncated, no [CLS]/[SEP]).
  std::vector<int64_t> token_ids(const std::string& utf8) const;

  // cn_clip.clip.tokenize(text, context_length): [CLS] + first context_length-2 piece ids + [SEP], then
  // zeros ([PAD]) up to context_length. context_length must be >= 2 (else UsageError).
  std::vector<int64_t> encode(const std::string& text, int context_length = 52) const;
  // Same, written to out[0 .. context_length-1].
  void encode_into(const std::string& text, int context_length, int64_t* out) const;

  int64_t vocab_size() const { return int64_t(tokens_.size()); }  // number of lines (= embedding rows)
  int64_t token_id(const std::string& token) const;               // -1 if absent
  const std::string& token(int64_t id) const;                     // the stripped line; throws UsageError if out of range
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t unk_id() const { return unk_id_; }
  // hex sha256 of vocab_text(): of the vocab file's bytes, or for a tokenizer.json of the vocab.txt it
  // describes (so cn_clip's vocab.txt and a tokenizer.json over the same tokens hash alike).
  const std::string& vocab_sha256() const { return sha256_; }
  const std::string& path() const { return path_; }
  // The vocab as vocab.txt bytes: the vocab.txt file itself, or one token per line in id order.
  const std::string& vocab_text() const { return vocab_text_; }
  size_t max_word_chars() const { return max_word_chars_; }  // longer words become one [UNK] (200, cn_clip's)
  bool from_tokenizer_json() const { return from_json_; }

 private:
  Tokenizer() = default;
  static Tokenizer load_tokenizer_json(const std::string& path, const std::string& bytes);
  void finish_ids();  // max_token_chars_ from tokens_
  // Runs the pipeline, appending ids (and, if pieces is given, the piece strings). Stops once `limit`
  // ids were produced (the rest cannot change the kept prefix).
  void run(const std::string& utf8, size_t limit, std::vector<int64_t>& ids, std::vector<std::string>* pieces) const;

  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
  size_t max_token_chars_ = 0;  // longest vocab entry in code points: no longer match is possible
  size_t max_word_chars_ = 200;  // WordpieceTokenizer.max_input_chars_per_word
  int64_t cls_id_ = -1, sep_id_ = -1, unk_id_ = -1;
  std::string path_, sha256_, vocab_text_;
  bool from_json_ = false;
};

// A Hugging Face tokenizer.json (tokenizers' serialisation, WordPiece + BertNormalizer + BertPreTokenizer
// + "[CLS] $A [SEP]" template) that describes exactly this tokenizer's vocab and rules, for transformers'
// fast BertTokenizer; Tokenizer::load reads it back to the same ids.
std::string tokenizer_json(const Tokenizer& tok);

// cn_clip's dataset-side text preparation (training/data.py and eval/data.py `_preprocess_text`):
// Python str.lower(), then the curly double quotes U+201C/U+201D become ASCII '"'. clip-eval and
// clip-finetune feed texts through this before encode(); the plain cn_clip.clip.tokenize() API does
// not. Invalid UTF-8 bytes come out as U+FFFD.
std::string preprocess_text(const std::string& text);

// Picks the vocab file: explicit_path if non-empty (it must exist; a folder means <folder>/vocab.txt,
// else <folder>/tokenizer.json), else the folder of checkpoint_path (the folder itself, if it is one),
// then each of `more_dirs` (a text config's folder, the data folder), taking from the first folder that
// has one its vocab.txt, else its tokenizer.json (vocab.txt first when both exist). The one vocab search
// of every tool. Throws ModelError: "no vocab.txt beside <ckpt>; pass --vocab PATH (cn_clip's vocab.txt, 21128 lines)".
std::string find_vocab(const std::string& explicit_path, const std::string& checkpoint_path,
                       const std::vector<std::string>& more_dirs = {});

}  // namespace clip
