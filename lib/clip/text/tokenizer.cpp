#include "clip/text/tokenizer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
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
  if (vocab_path.size() >= 5 && vocab_path.compare(vocab_path.size() - 5, 5, ".json") == 0)
    return load_tokenizer_json(vocab_path, bytes);

  Tokenizer t;
  t.path_ = vocab_path;
  t.sha256_ = sha256_hex(bytes);
  t.vocab_text_ = bytes;
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

// ---- Hugging Face tokenizer.json ------------------------------------------------------------------------

namespace {

const char* const kTokenizerJsonRemedy =
    "cn_clip's tokenizer is BERT's WordPiece with lower-casing, accent stripping, CJK splitting and text "
    "cleaning; pass --vocab PATH (cn_clip's vocab.txt, 21128 lines)";

[[noreturn]] void bad_tokenizer_json(const std::string& path, const std::string& field, const std::string& what) {
  throw ModelError(fmt::format("tokenizer file {}: {} {}; {}", path, field, what, kTokenizerJsonRemedy));
}

// A boolean switch of the normalizer that must be on (tokenizers' default when absent: on).
void require_on(const nlohmann::json& n, const std::string& path, const char* key, const char* why) {
  auto it = n.find(key);
  if (it == n.end() || it->is_null()) return;
  if (!it->is_boolean()) bad_tokenizer_json(path, std::string("normalizer.") + key, "must be true or false, found " + it->dump());
  if (!it->get<bool>()) bad_tokenizer_json(path, std::string("normalizer.") + key, std::string("is false, but ") + why);
}

std::string type_of(const nlohmann::json& j) {
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

Tokenizer Tokenizer::load_tokenizer_json(const std::string& path, const std::string& bytes) {
  using nlohmann::json;
  json root = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object())
    throw ModelError(fmt::format("tokenizer file {} is not a JSON object (a Hugging Face tokenizer.json); {}", path,
                                 kVocabRemedy));
  // The model: WordPiece with "##" continuation pieces.
  auto mit = root.find("model");
  if (mit == root.end() || !mit->is_object()) bad_tokenizer_json(path, "model", "is missing (no tokenizer model)");
  const json& model = *mit;
  const std::string mtype = type_of(model);
  if (mtype != "WordPiece")
    bad_tokenizer_json(path, "model.type", "is \"" + mtype + "\", not \"WordPiece\"");
  if (auto it = model.find("continuing_subword_prefix"); it != model.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "##")
      bad_tokenizer_json(path, "model.continuing_subword_prefix", "is " + it->dump() + ", not \"##\"");
  }
  std::string unk = "[UNK]";
  if (auto it = model.find("unk_token"); it != model.end() && !it->is_null()) {
    if (!it->is_string()) bad_tokenizer_json(path, "model.unk_token", "must be a string, found " + it->dump());
    unk = it->get<std::string>();
  }
  size_t max_word = 100;  // tokenizers' default when the field is absent
  if (auto it = model.find("max_input_chars_per_word"); it != model.end() && !it->is_null()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() == 0 || it->get<uint64_t>() > (uint64_t{1} << 30))
      bad_tokenizer_json(path, "model.max_input_chars_per_word", "must be a positive integer, found " + it->dump());
    max_word = size_t(it->get<uint64_t>());
  }
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object() || vit->empty())
    bad_tokenizer_json(path, "model.vocab", "is missing or empty (a WordPiece vocab maps each token to its id)");
  const size_t n = vit->size();
  Tokenizer t;
  t.tokens_.assign(n, std::string());
  std::vector<bool> seen(n, false);
  std::u32string chars;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    const std::string& token = it.key();
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= n)
      bad_tokenizer_json(path, "model.vocab", fmt::format("gives \"{}\" the id {}, but the {} ids must be 0..{}", token,
                                                          it.value().dump(), n, n - 1));
    const size_t id = size_t(it.value().get<uint64_t>());
    if (seen[id])
      bad_tokenizer_json(path, "model.vocab", fmt::format("gives the id {} to both \"{}\" and \"{}\"", id, t.tokens_[id], token));
    if (token.find_first_of("\r\n") != std::string::npos || decode_utf8(token.data(), token.size(), chars) != 0)
      bad_tokenizer_json(path, "model.vocab", fmt::format("has the token {} (id {}), which no vocab.txt line can hold",
                                                          nlohmann::json(token).dump(), id));
    seen[id] = true;
    t.tokens_[id] = token;
    t.ids_[token] = int64_t(id);
    t.max_token_chars_ = std::max(t.max_token_chars_, chars.size());
  }
  t.unk_id_ = t.token_id(unk);
  if (t.unk_id_ < 0) bad_tokenizer_json(path, "model.unk_token", "\"" + unk + "\" is not in model.vocab");

  // The normalizer: BertNormalizer with every cn_clip step on.
  auto nit = root.find("normalizer");
  if (nit == root.end() || nit->is_null() || !nit->is_object())
    bad_tokenizer_json(path, "normalizer", "is missing, so the text would not be lower-cased or cleaned");
  const std::string ntype = type_of(*nit);
  if (ntype != "BertNormalizer") bad_tokenizer_json(path, "normalizer.type", "is \"" + ntype + "\", not \"BertNormalizer\"");
  require_on(*nit, path, "lowercase", "cn_clip's tokenizer lower-cases (do_lower_case=True)");
  require_on(*nit, path, "clean_text", "cn_clip's tokenizer drops control characters and maps whitespace to spaces");
  require_on(*nit, path, "handle_chinese_chars", "cn_clip's tokenizer splits every CJK ideograph into its own word");
  if (auto it = nit->find("strip_accents"); it != nit->end() && !it->is_null()) {
    if (!it->is_boolean()) bad_tokenizer_json(path, "normalizer.strip_accents", "must be true, false or null, found " + it->dump());
    if (!it->get<bool>()) bad_tokenizer_json(path, "normalizer.strip_accents", "is false, but cn_clip's tokenizer strips accents");
  }
  // The pre-tokenizer: whitespace, then punctuation.
  auto pit = root.find("pre_tokenizer");
  if (pit == root.end() || pit->is_null() || !pit->is_object())
    bad_tokenizer_json(path, "pre_tokenizer", "is missing, so words would not be split at whitespace and punctuation");
  const std::string ptype = type_of(*pit);
  if (ptype != "BertPreTokenizer")
    bad_tokenizer_json(path, "pre_tokenizer.type", "is \"" + ptype + "\", not \"BertPreTokenizer\"");

  // The post-processor: [CLS] text [SEP].
  std::string cls = "[CLS]", sep = "[SEP]";
  int64_t cls_given = -1, sep_given = -1;
  auto qit = root.find("post_processor");
  if (qit != root.end() && !qit->is_null()) {
    const json& q = *qit;
    const std::string qtype = q.is_object() ? type_of(q) : std::string();
    auto pair_of = [&](const char* key, std::string& name, int64_t& id) {
      auto e = q.find(key);
      if (e == q.end() || !e->is_array() || e->size() != 2 || !(*e)[0].is_string() || !(*e)[1].is_number_unsigned())
        bad_tokenizer_json(path, std::string("post_processor.") + key, "must be [token, id]");
      name = (*e)[0].get<std::string>();
      id = int64_t((*e)[1].get<uint64_t>());
    };
    if (qtype == "BertProcessing") {
      pair_of("cls", cls, cls_given);
      pair_of("sep", sep, sep_given);
    } else if (qtype == "TemplateProcessing") {
      // single must be exactly: SpecialToken, Sequence A, SpecialToken.
      auto sit = q.find("single");
      auto special = [](const json& piece, std::string& name) {
        if (!piece.is_object() || !piece.contains("SpecialToken") || !piece["SpecialToken"].is_object()) return false;
        const json& st = piece["SpecialToken"];
        if (!st.contains("id") || !st["id"].is_string()) return false;
        name = st["id"].get<std::string>();
        return true;
      };
      auto sequence_a = [](const json& piece) {
        return piece.is_object() && piece.contains("Sequence") && piece["Sequence"].is_object() &&
               piece["Sequence"].value("id", std::string()) == "A";
      };
      if (sit == q.end() || !sit->is_array() || sit->size() != 3 || !special((*sit)[0], cls) || !sequence_a((*sit)[1]) ||
          !special((*sit)[2], sep))
        bad_tokenizer_json(path, "post_processor.single", "is not the template \"[CLS] $A [SEP]\" (" +
                                                              (sit == q.end() ? std::string("missing") : sit->dump()) + ")");
      // The ids of the special tokens, where the template lists them.
      if (auto tk = q.find("special_tokens"); tk != q.end() && tk->is_object()) {
        for (auto [name, given] : {std::pair<std::string, int64_t*>{cls, &cls_given}, {sep, &sep_given}}) {
          auto e = tk->find(name);
          if (e == tk->end()) continue;
          const json& ids = e->is_object() && e->contains("ids") ? (*e)["ids"] : json();
          if (!ids.is_array() || ids.size() != 1 || !ids[0].is_number_unsigned())
            bad_tokenizer_json(path, "post_processor.special_tokens", "gives " + name + " the ids " + ids.dump() +
                                                                          ", not one id");
          *given = int64_t(ids[0].get<uint64_t>());
        }
      }
    } else {
      bad_tokenizer_json(path, "post_processor.type",
                         "is \"" + qtype + "\", not \"BertProcessing\" or \"TemplateProcessing\" (\"[CLS] $A [SEP]\")");
    }
  }
  t.cls_id_ = t.token_id(cls);
  t.sep_id_ = t.token_id(sep);
  if (t.cls_id_ < 0) bad_tokenizer_json(path, "post_processor", "uses \"" + cls + "\", which is not in model.vocab");
  if (t.sep_id_ < 0) bad_tokenizer_json(path, "post_processor", "uses \"" + sep + "\", which is not in model.vocab");
  if (cls_given >= 0 && cls_given != t.cls_id_)
    bad_tokenizer_json(path, "post_processor", fmt::format("gives {} the id {}, but model.vocab has {}", cls, cls_given, t.cls_id_));
  if (sep_given >= 0 && sep_given != t.sep_id_)
    bad_tokenizer_json(path, "post_processor", fmt::format("gives {} the id {}, but model.vocab has {}", sep, sep_given, t.sep_id_));

  // Added tokens: only the vocab's own (special) tokens, with their vocab ids.
  if (auto ait = root.find("added_tokens"); ait != root.end() && !ait->is_null()) {
    if (!ait->is_array()) bad_tokenizer_json(path, "added_tokens", "must be a list");
    for (const json& a : *ait) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") ||
          !a["id"].is_number_unsigned())
        bad_tokenizer_json(path, "added_tokens", "has an entry without content/id: " + a.dump());
      const std::string content = a["content"].get<std::string>();
      const int64_t id = int64_t(a["id"].get<uint64_t>());
      if (t.token_id(content) != id)
        bad_tokenizer_json(path, "added_tokens",
                           fmt::format("adds {} with the id {}, which model.vocab {}", nlohmann::json(content).dump(), id,
                                       t.token_id(content) < 0 ? std::string("lacks")
                                                               : "has with the id " + std::to_string(t.token_id(content))));
    }
  }

  t.path_ = path;
  t.from_json_ = true;
  t.max_word_chars_ = max_word;
  for (const auto& tok : t.tokens_) {
    t.vocab_text_ += tok;
    t.vocab_text_ += '\n';
  }
  t.sha256_ = sha256_hex(t.vocab_text_);
  return t;
}

std::string tokenizer_json(const Tokenizer& tok) {
  using nlohmann::ordered_json;
  // A vocab.txt line that strips to a token no word can match ("" from cn_clip's U+2028 line 343, "##" from
  // its "##" + U+2028 line 13502) keeps its bytes as the key, as transformers' own load_vocab keeps them, so
  // that the vocab.txt this describes (Tokenizer::vocab_text of the loaded file) is the original, byte for byte.
  std::vector<std::string> raw;
  if (!tok.from_tokenizer_json()) {
    const std::string& bytes = tok.vocab_text();
    for (size_t pos = 0; pos < bytes.size();) {
      size_t end = bytes.find_first_of("\r\n", pos);
      if (end == std::string::npos) end = bytes.size();
      raw.push_back(bytes.substr(pos, end - pos));
      pos = end + ((end < bytes.size() && bytes[end] == '\r' && end + 1 < bytes.size() && bytes[end + 1] == '\n') ? 2 : 1);
    }
  }
  ordered_json vocab = ordered_json::object();
  for (int64_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string& s = tok.token(id);
    if (tok.token_id(s) != id) continue;  // a repeated vocab.txt line: the later id, as load() reads it
    // "" and "##" (cn_clip's "##" + U+2028 line) can never match; any other token is written stripped, as ours matches it.
    const bool unmatchable = s.empty() || s == "##";
    const std::string& key = unmatchable && size_t(id) < raw.size() && !raw[size_t(id)].empty() ? raw[size_t(id)] : s;
    if (!vocab.contains(key)) vocab[key] = id;
  }
  ordered_json added = ordered_json::array();
  for (const char* special : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    int64_t id = tok.token_id(special);
    if (id < 0) continue;
    added.push_back({{"id", id}, {"content", special}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  }
  std::sort(added.begin(), added.end(), [](const ordered_json& a, const ordered_json& b) { return a["id"] < b["id"]; });
  const std::string cls = tok.token(tok.cls_id()), sep = tok.token(tok.sep_id()), unk = tok.token(tok.unk_id());
  auto special = [](const std::string& name, int type_id) {
    return ordered_json{{"SpecialToken", {{"id", name}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* name, int type_id) {
    return ordered_json{{"Sequence", {{"id", name}, {"type_id", type_id}}}};
  };
  ordered_json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true}, {"strip_accents", nullptr},
        {"lowercase", true}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {special(cls, 0), sequence("A", 0), special(sep, 0)}},
        {"pair", {special(cls, 0), sequence("A", 0), special(sep, 0), sequence("B", 1), special(sep, 1)}},
        {"special_tokens",
         {{cls, {{"id", cls}, {"ids", {tok.cls_id()}}, {"tokens", {cls}}}},
          {sep, {{"id", sep}, {"ids", {tok.sep_id()}}, {"tokens", {sep}}}}}}}},
      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model",
       {{"type", "WordPiece"},
        {"unk_token", unk},
        {"continuing_subword_prefix", "##"},
        {"max_input_chars_per_word", tok.max_word_chars()},
        {"vocab", vocab}}},
  };
  return j.dump(2) + "\n";
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
    if (n > max_word_chars_) {
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
  auto in_folder = [](const std::string& d) -> std::string {
    for (const char* name : {"vocab.txt", "tokenizer.json"}) {
      std::string candidate = path_join(d, name);
      if (file_exists(candidate) && !is_directory(candidate)) return candidate;
    }
    return {};
  };
  if (!explicit_path.empty()) {
    if (is_directory(explicit_path)) {
      std::string inside = in_folder(explicit_path);
      if (!inside.empty()) return inside;
      throw ModelError(fmt::format("--vocab {} is a folder without a vocab.txt or tokenizer.json; {}", explicit_path,
                                   kVocabRemedy));
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
    std::string found = in_folder(d);
    if (!found.empty()) return found;
  }
  std::string where = checkpoint_path.empty() ? std::string() : "beside " + checkpoint_path;
  for (const auto& d : more_dirs)
    if (!d.empty()) where += (where.empty() ? "in " : ", nor in ") + d;
  throw ModelError(fmt::format("no vocab.txt {}; {}", where, kVocabRemedy));
}

}  // namespace clip
