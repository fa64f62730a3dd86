#include "clip/text/tokenizer.h"

#include <fmt/format.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cstring>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/sha256.h"

namespace clip {
namespace {

constexpr char32_t kReplacement = 0xFFFD;
constexpr size_t kMaxWordChars = 200;  // WordpieceTokenizer.max_input_chars_per_word
const char* const kVocabRemedy = "pass --vocab PATH (cn_clip's vocab.txt, 21128 lines)";

// ---- UTF-8 ----------------------------------------------------------------------------------------

// Strict decoding (well-formed sequences of Unicode Table 3-7: no overlongs, no surrogates, nothing above
// U+10FFFF). Each maximal ill-formed subpart becomes one U+FFFD and decoding resumes at the next byte, so a
// valid character after a broken one is never swallowed. Returns the number of replacements.
size_t decode_utf8(const char* s, size_t n, std::u32string& out) {
  out.clear();
  out.reserve(n);
  size_t bad = 0;
  size_t i = 0;
  while (i < n) {
    uint8_t b = uint8_t(s[i]);
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    size_t len;
    char32_t c;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2, c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3, c = b & 0x0F;
      if (b == 0xE0) lo = 0xA0;       // overlong
      else if (b == 0xED) hi = 0x9F;  // surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4, c = b & 0x07;
      if (b == 0xF0) lo = 0x90;       // overlong
      else if (b == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      out.push_back(kReplacement);
      ++bad;
      ++i;
      continue;
    }
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      uint8_t t = uint8_t(s[i + k]);
      if (t < lo || t > hi) break;
      lo = 0x80, hi = 0xBF;
      c = (c << 6) | (t & 0x3F);
    }
    if (k == len) {
      out.push_back(c);
    } else {
      out.push_back(kReplacement);
      ++bad;
    }
    i += k;
  }
  return bad;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(char(c));
  } else if (c < 0x800) {
    out.push_back(char(0xC0 | (c >> 6)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(char(0xE0 | (c >> 12)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (c >> 18)));
    out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(char(0x80 | (c & 0x3F)));
  }
}

// ---- Unicode character data, pinned to Python 3.11's Unicode 14.0 ------------------------------------

// ICU may know a newer Unicode than the Python that produced the reference outputs; characters assigned
// after 14.0 are unassigned there (category Cn, no case mapping, no decomposition), so they are here too.
bool newer_than_reference(UChar32 c) {
  UVersionInfo age;
  u_charAge(c, age);
  return age[0] > 14;
}

// The categories whose membership the pipeline tests; only for these is the character's age checked.
constexpr uint32_t kTestedCategories = U_MASK(U_CONTROL_CHAR) | U_MASK(U_FORMAT_CHAR) | U_MASK(U_SPACE_SEPARATOR) |
                                       U_MASK(U_NON_SPACING_MARK) | U_GC_P_MASK;

uint32_t category_mask(UChar32 c) {
  uint32_t m = U_GET_GC_MASK(c);
  if ((m & kTestedCategories) && c >= 0x80 && newer_than_reference(c)) return U_MASK(U_UNASSIGNED);
  return m;
}

// Python's str.isspace()/str.split() set: bidirectional class WS, B or S, or category Zs.
bool is_py_space(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_ascii_punct(char32_t c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

bool is_punct(char32_t c) {
  if (c < 0x80) return is_ascii_punct(c);
  return (category_mask(c) & U_GC_P_MASK) != 0;
}

bool py_cased(UChar32 c) { return u_hasBinaryProperty(c, UCHAR_CASED) && !(c >= 0x80 && newer_than_reference(c)); }
bool py_case_ignorable(UChar32 c) {
  return u_hasBinaryProperty(c, UCHAR_CASE_IGNORABLE) && !(c >= 0x80 && newer_than_reference(c));
}

// Python's final-sigma rule (unicodeobject.c handle_capital_sigma): U+03A3 lowers to U+03C2 when a cased
// character precedes it and no cased character follows it, skipping case-ignorable characters both ways.
// Done here rather than by ICU's string case mapping so that the rule sees Python's character data:
// characters newer than Unicode 14 are neither cased nor case-ignorable.
bool final_sigma(const char32_t* s, size_t n, size_t i) {
  size_t j = i;
  char32_t c = 0;
  while (j > 0) {
    c = s[--j];
    if (!py_case_ignorable(c)) break;
    c = 0;
  }
  if (c == 0 || !py_cased(c)) return false;
  for (j = i + 1; j < n; ++j) {
    if (!py_case_ignorable(s[j])) return !py_cased(s[j]);
  }
  return true;
}

// Python str.lower(): the full lower-case mapping. Among unconditional mappings only U+0130 expands
// (to "i" + U+0307); the only context-dependent one outside tr/az/lt locales is the final sigma.
void py_lower(const char32_t* s, size_t n, std::u32string& out) {
  for (size_t i = 0; i < n; ++i) {
    char32_t c = s[i];
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else if (c == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      out.push_back(final_sigma(s, n, i) ? 0x3C2 : 0x3C3);
    } else {
      char32_t l = char32_t(u_tolower(UChar32(c)));
      out.push_back(l != c && newer_than_reference(c) ? c : l);
    }
  }
}

const icu::Normalizer2& nfd() {
  static const icu::Normalizer2* instance = [] {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFDInstance(status);
    if (U_FAILURE(status) || n == nullptr)
      throw Error(fmt::format("ICU has no NFD normalizer: {}", u_errorName(status)));
    return n;
  }();
  return *instance;
}

void nfd_append(const char32_t* s, size_t n, std::u32string& out) {
  icu::UnicodeString in;
  for (size_t i = 0; i < n; ++i) in.append(UChar32(s[i]));
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString res = nfd().normalize(in, status);
  if (U_FAILURE(status)) throw Error(fmt::format("NFD normalization failed: {}", u_errorName(status)));
  for (int32_t k = 0; k < res.length();) {
    UChar32 c = res.char32At(k);
    out.push_back(char32_t(c));
    k += U16_LENGTH(c);
  }
}

// NFD, then drop category Mn (BasicTokenizer._run_strip_accents).
void nfd_strip_marks(const char32_t* s, size_t n, std::u32string& tmp, std::u32string& out) {
  out.clear();
  const icu::Normalizer2& norm = nfd();
  bool inert = true;
  for (size_t i = 0; i < n && inert; ++i) inert = s[i] < 0xC0 || norm.isInert(UChar32(s[i]));
  if (inert) {
    for (size_t i = 0; i < n; ++i)
      if (s[i] < 0x300 || !(category_mask(s[i]) & U_MASK(U_NON_SPACING_MARK))) out.push_back(s[i]);
    return;
  }
  // A character newer than Unicode 14 is, for Python, an undecomposable starter (combining class 0), which
  // splits normalization: NFD(a X b) = NFD(a) X NFD(b).
  tmp.clear();
  size_t seg = 0;
  for (size_t i = 0; i <= n; ++i) {
    if (i == n || (s[i] >= 0x80 && newer_than_reference(s[i]))) {
      if (i > seg) nfd_append(s + seg, i - seg, tmp);
      if (i < n) tmp.push_back(s[i]);
      seg = i + 1;
    }
  }
  for (char32_t c : tmp)
    if (c < 0x300 || !(category_mask(c) & U_MASK(U_NON_SPACING_MARK))) out.push_back(c);
}

std::u32string strip_py_space(const std::u32string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_py_space(s[b])) ++b;
  while (e > b && is_py_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string to_utf8(const char32_t* s, size_t n) {
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) append_utf8(out, s[i]);
  return out;
}

}  // namespace

// ---- Tokenizer ----------------------------------------------------------------------------------------

Tokenizer Tokenizer::load(const std::string& vocab_path) {
  if (vocab_path.empty()) throw ModelError(fmt::format("no vocab file given; {}", kVocabRemedy));
  if (!file_exists(vocab_path))
    throw ModelError(fmt::format("vocab file {} does not exist; {}", vocab_path, kVocabRemedy));
  if (is_directory(vocab_path))
    throw ModelError(fmt::format("vocab file {} is a folder, not a file; {}", vocab_path, kVocabRemedy));
  std::string bytes;
  try {
    bytes = read_file(vocab_path);
  } catch (const IoError& e) {
    throw ModelError(fmt::format("cannot read vocab file {}: {}; {}", vocab_path, e.what(), kVocabRemedy));
  }
  if (bytes.empty()) throw ModelError(fmt::format("vocab file {} is empty; {}", vocab_path, kVocabRemedy));

  Tokenizer t;
  t.path_ = vocab_path;
  t.sha256_ = sha256_hex(bytes);
  std::u32string line;
  size_t pos = 0;
  while (pos < bytes.size()) {
    // Python's text mode (universal newlines): a line ends at \n, \r\n or \r.
    size_t end = bytes.find_first_of("\r\n", pos);
    size_t next;
    if (end == std::string::npos) {
      end = next = bytes.size();
    } else {
      next = end + ((bytes[end] == '\r' && end + 1 < bytes.size() && bytes[end + 1] == '\n') ? 2 : 1);
    }
    if (decode_utf8(bytes.data() + pos, end - pos, line) != 0)
      throw ModelError(fmt::format("vocab file {} line {}: not valid UTF-8; {}", vocab_path, t.tokens_.size() + 1,
                                   kVocabRemedy));
    std::u32string stripped = strip_py_space(line);
    std::string token = to_utf8(stripped.data(), stripped.size());
    t.max_token_chars_ = std::max(t.max_token_chars_, stripped.size());
    t.ids_[token] = int64_t(t.tokens_.size());  // a repeated token: the later line wins, as in a Python dict
    t.tokens_.push_back(std::move(token));
    pos = next;
  }
  t.cls_id_ = t.token_id("[CLS]");
  t.sep_id_ = t.token_id("[SEP]");
  t.unk_id_ = t.token_id("[UNK]");
  for (const char* special : {"[CLS]", "[SEP]", "[UNK]"}) {
    if (t.token_id(special) < 0)
      throw ModelError(fmt::format("vocab file {} has no {} line: not a BERT vocab; {}", vocab_path, special,
                                   kVocabRemedy));
  }
  return t;
}

int64_t Tokenizer::token_id(const std::string& token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? -1 : it->second;
}

const std::string& Tokenizer::token(int64_t id) const {
  if (id < 0 || id >= vocab_size())
    throw UsageError(fmt::format("token id {} is outside the vocab {} (ids 0..{})", id, path_, vocab_size() - 1));
  return tokens_[size_t(id)];
}

void Tokenizer::run(const std::string& utf8, size_t limit, std::vector<int64_t>& ids,
                    std::vector<std::string>* pieces) const {
  std::u32string text, lowered, tmp, normed;
  decode_utf8(utf8.data(), utf8.size(), text);
  std::string word, key;
  std::vector<size_t> offsets;
  std::vector<int64_t> sub;

  // WordPiece on one basic token (greedy longest match first).
  auto wordpiece = [&](const char32_t* s, size_t n) {
    if (n > kMaxWordChars) {
      ids.push_back(unk_id_);
      if (pieces) pieces->push_back(tokens_[size_t(unk_id_)]);
      return;
    }
    word.clear();
    offsets.clear();
    for (size_t i = 0; i < n; ++i) {
      offsets.push_back(word.size());
      append_utf8(word, s[i]);
    }
    offsets.push_back(word.size());
    sub.clear();
    for (size_t start = 0; start < n;) {
      size_t end = std::min(n, start + max_token_chars_);  // a longer piece is in no vocab entry
      int64_t found = -1;
      for (; end > start; --end) {
        key.assign(start > 0 ? "##" : "");
        key.append(word, offsets[start], offsets[end] - offsets[start]);
        auto it = ids_.find(key);
        if (it != ids_.end()) {
          found = it->second;
          break;
        }
      }
      if (found < 0) {
        sub.assign(1, unk_id_);  // one unmatchable piece turns the whole word into [UNK]
        break;
      }
      sub.push_back(found);
      start = end;
    }
    for (int64_t id : sub) {
      ids.push_back(id);
      if (pieces) pieces->push_back(tokens_[size_t(id)]);
    }
  };

  // Lower-case, strip accents and split punctuation of one whitespace-delimited word, then WordPiece.
  auto basic_word = [&](const char32_t* s, size_t n) {
    lowered.clear();
    py_lower(s, n, lowered);
    nfd_strip_marks(lowered.data(), lowered.size(), tmp, normed);
    size_t start = 0;
    for (size_t i = 0; i <= normed.size() && ids.size() < limit; ++i) {
      bool at_end = i == normed.size();
      bool punct = !at_end && is_punct(normed[i]);
      // The reference re-splits the joined pieces on whitespace; lower()/NFD never create any, but stay safe.
      bool space = !at_end && !punct && is_py_space(normed[i]);
      if (at_end || punct || space) {
        if (i > start) wordpiece(normed.data() + start, i - start);
        if (punct && ids.size() < limit) wordpiece(normed.data() + i, 1);
        start = i + 1;
      }
    }
  };

  // _clean_text + _tokenize_chinese_chars + whitespace split, in one pass.
  size_t word_start = 0;
  size_t out = 0;  // compacted write position in `text`
  auto flush = [&]() {
    if (out > word_start && ids.size() < limit) basic_word(text.data() + word_start, out - word_start);
    word_start = out;
  };
  for (size_t i = 0; i < text.size() && ids.size() < limit; ++i) {
    char32_t c = text[i];
    if (c < 0x80) {
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        flush();
      } else if (c >= 0x20 && c != 0x7F) {
        text[out++] = c;
      }  // else: U+0000 and other controls are dropped (0x1C-0x1F too, before any split sees them)
      continue;
    }
    if (c == kReplacement) continue;
    uint32_t cat = category_mask(UChar32(c));
    if (cat & (U_MASK(U_CONTROL_CHAR) | U_MASK(U_FORMAT_CHAR))) continue;
    if ((cat & U_MASK(U_SPACE_SEPARATOR)) || is_py_space(c)) {
      flush();
    } else if (is_cjk(c)) {
      flush();
      text[out++] = c;
      flush();
    } else {
      text[out++] = c;
    }
  }
  flush();
  if (ids.size() > limit) ids.resize(limit);
  if (pieces && pieces->size() > limit) pieces->resize(limit);
}

std::vector<std::string> Tokenizer::tokenize(const std::string& utf8) const {
  std::vector<int64_t> ids;
  std::vector<std::string> pieces;
  run(utf8, SIZE_MAX, ids, &pieces);
  return pieces;
}

std::vector<int64_t> Tokenizer::token_ids(const std::string& utf8) const {
  std::vector<int64_t> ids;
  run(utf8, SIZE_MAX, ids, nullptr);
  return ids;
}

void Tokenizer::encode_into(const std::string& text, int context_length, int64_t* out) const {
  if (context_length < 2)
    throw UsageError(fmt::format("context length {} is too small: [CLS] and [SEP] need 2", context_length));
  std::vector<int64_t> ids;
  size_t keep = size_t(context_length) - 2;
  run(text, keep, ids, nullptr);
  size_t n = std::min(ids.size(), keep);
  out[0] = cls_id_;
  std::copy(ids.begin(), ids.begin() + n, out + 1);
  out[n + 1] = sep_id_;
  std::fill(out + n + 2, out + context_length, int64_t(0));
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, int context_length) const {
  if (context_length < 2)
    throw UsageError(fmt::format("context length {} is too small: [CLS] and [SEP] need 2", context_length));
  std::vector<int64_t> out(size_t(context_length), 0);
  encode_into(text, context_length, out.data());
  return out;
}

// ---- free functions -----------------------------------------------------------------------------------

std::string preprocess_text(const std::string& text) {
  std::u32string in, lowered;
  decode_utf8(text.data(), text.size(), in);
  py_lower(in.data(), in.size(), lowered);
  std::string out;
  out.reserve(text.size());
  for (char32_t c : lowered) append_utf8(out, (c == 0x201C || c == 0x201D) ? char32_t('"') : c);
  return out;
}

std::string find_vocab(const std::string& explicit_path, const std::string& checkpoint_path,
                       const std::vector<std::string>& more_dirs) {
  if (!explicit_path.empty()) {
    if (is_directory(explicit_path)) {
      std::string inside = path_join(explicit_path, "vocab.txt");
      if (file_exists(inside) && !is_directory(inside)) return inside;
      throw ModelError(fmt::format("--vocab {} is a folder without a vocab.txt; {}", explicit_path, kVocabRemedy));
    }
    if (!file_exists(explicit_path))
      throw ModelError(fmt::format("vocab file {} (--vocab) does not exist; {}", explicit_path, kVocabRemedy));
    return explicit_path;
  }
  std::vector<std::string> dirs;
  if (!checkpoint_path.empty())
    dirs.push_back(is_directory(checkpoint_path) ? checkpoint_path : path_dirname(checkpoint_path));
  for (const auto& d : more_dirs)
    if (!d.empty()) dirs.push_back(d);
  if (dirs.empty()) throw ModelError(fmt::format("no vocab file given; {}", kVocabRemedy));
  for (const auto& d : dirs) {
    std::string candidate = path_join(d, "vocab.txt");
    if (file_exists(candidate) && !is_directory(candidate)) return candidate;
  }
  std::string where = checkpoint_path.empty() ? std::string() : "beside " + checkpoint_path;
  for (const auto& d : more_dirs)
    if (!d.empty()) where += (where.empty() ? "in " : ", nor in ") + d;
  throw ModelError(fmt::format("no vocab.txt {}; {}", where, kVocabRemedy));
}

}  // namespace clip
