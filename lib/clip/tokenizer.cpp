#include "clip/tokenizer.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>

#include <algorithm>

#include "clip/error.h"
#include "clip/fileio.h"
#include "clip/sha256.h"

namespace clip {

namespace {

using U32 = std::u32string;

// UTF-8 -> code points; each invalid byte becomes U+FFFD.
U32 decode_utf8(const std::string& s) {
  U32 out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    unsigned c = p[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > n) {
      out.push_back(0xFFFD), ++i;
      continue;
    }
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // reject overlong forms, surrogates and out-of-range values
    static const char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (!ok || cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      out.push_back(0xFFFD), ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& o, char32_t cp) {
  if (cp < 0x80) o += char(cp);
  else if (cp < 0x800) o += char(0xC0 | (cp >> 6)), o += char(0x80 | (cp & 0x3F));
  else if (cp < 0x10000) o += char(0xE0 | (cp >> 12)), o += char(0x80 | ((cp >> 6) & 0x3F)), o += char(0x80 | (cp & 0x3F));
  else
    o += char(0xF0 | (cp >> 18)), o += char(0x80 | ((cp >> 12) & 0x3F)), o += char(0x80 | ((cp >> 6) & 0x3F)),
        o += char(0x80 | (cp & 0x3F));
}

std::string encode_utf8(const U32& s) {
  std::string o;
  o.reserve(s.size() * 3);
  for (char32_t c : s) append_utf8(o, c);
  return o;
}

// Python's str.isspace(): bidirectional class WS/B/S or category Zs.
bool py_isspace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x1C: case 0x1D: case 0x1E: case 0x1F:
    case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool bert_is_whitespace(char32_t c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r') return true;
  return u_charType(static_cast<UChar32>(c)) == U_SPACE_SEPARATOR;
}

bool bert_is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  int t = u_charType(static_cast<UChar32>(c));
  return t == U_CONTROL_CHAR || t == U_FORMAT_CHAR;
}

bool bert_is_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_DASH_PUNCTUATION: case U_START_PUNCTUATION: case U_END_PUNCTUATION: case U_CONNECTOR_PUNCTUATION:
    case U_OTHER_PUNCTUATION: case U_INITIAL_PUNCTUATION: case U_FINAL_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

icu::UnicodeString to_icu(const U32& s) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()), static_cast<int32_t>(s.size()));
}

U32 from_icu(const icu::UnicodeString& u) {
  U32 out(static_cast<size_t>(u.countChar32()), 0);
  UErrorCode err = U_ZERO_ERROR;
  u.toUTF32(reinterpret_cast<UChar32*>(out.data()), static_cast<int32_t>(out.size()), err);
  return out;
}

// Python's str.lower(): full lower-case mapping, context-sensitive final sigma (ICU root locale).
U32 py_lower(const U32& s) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x80; });
  if (ascii) {
    U32 o = s;
    for (auto& c : o)
      if (c >= 'A' && c <= 'Z') c += 32;
    return o;
  }
  icu::UnicodeString u = to_icu(s);
  u.toLower(icu::Locale::getRoot());
  return from_icu(u);
}

// NFD, then drop combining marks (category Mn).
U32 strip_accents(const U32& s) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x80; });
  if (ascii) return s;
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(err);
  if (U_FAILURE(err)) throw ModelError(std::string("ICU NFD normaliser unavailable: ") + u_errorName(err));
  icu::UnicodeString n = nfd->normalize(to_icu(s), err);
  U32 d = from_icu(n);
  U32 out;
  for (char32_t c : d)
    if (u_charType(static_cast<UChar32>(c)) != U_NON_SPACING_MARK) out.push_back(c);
  return out;
}

// Python str.split() with no argument.
std::vector<U32> py_split(const U32& s) {
  std::vector<U32> out;
  U32 cur;
  for (char32_t c : s) {
    if (py_isspace(c)) {
      if (!cur.empty()) out.push_back(std::move(cur)), cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

// Python str.strip() on a vocab line.
std::string py_strip(const std::string& line) {
  U32 s = decode_utf8(line);
  size_t b = 0, e = s.size();
  while (b < e && py_isspace(s[b])) ++b;
  while (e > b && py_isspace(s[e - 1])) --e;
  return encode_utf8(s.substr(b, e - b));
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& vocab_path) {
  if (!file_exists(vocab_path))
    throw ModelError("vocab file '" + vocab_path + "' does not exist; pass --vocab PATH (cn_clip's vocab.txt)");
  std::string text;
  try {
    text = read_file(vocab_path);
  } catch (const IoError& e) {
    throw ModelError(std::string(e.what()) + "; pass --vocab PATH (cn_clip's vocab.txt)");
  }
  Tokenizer t;
  t.path_ = vocab_path;
  t.sha256_ = sha256_hex(text.data(), text.size());
  size_t pos = 0;
  while (pos < text.size()) {  // Python readline(): only '\n' ends a line
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    std::string tok = py_strip(line);
    t.vocab_[tok] = static_cast<int64_t>(t.tokens_.size());  // a later duplicate wins, as in a Python dict
    t.tokens_.push_back(std::move(tok));
  }
  if (t.tokens_.empty()) throw ModelError("vocab file '" + vocab_path + "' is empty; pass the model's vocab.txt with --vocab");
  auto need = [&](const char* s, int64_t& id) {
    auto it = t.vocab_.find(s);
    if (it == t.vocab_.end())
      throw ModelError(std::string("vocab file '") + vocab_path + "' has no " + s + " token: not a BERT vocab.txt");
    id = it->second;
  };
  need("[CLS]", t.cls_);
  need("[SEP]", t.sep_);
  need("[UNK]", t.unk_);
  return t;
}

int64_t Tokenizer::token_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

std::vector<std::string> Tokenizer::tokenize(const std::string& utf8) const {
  // BasicTokenizer: clean, isolate CJK characters.
  U32 in = decode_utf8(utf8), text;
  text.reserve(in.size() * 2);
  for (char32_t c : in) {
    if (c == 0 || c == 0xFFFD || bert_is_control(c)) continue;
    if (bert_is_whitespace(c)) {
      text.push_back(' ');
    } else if (is_cjk(c)) {
      text.push_back(' '), text.push_back(c), text.push_back(' ');
    } else {
      text.push_back(c);
    }
  }
  U32 joined;
  for (const U32& word : py_split(text)) {
    U32 w = strip_accents(py_lower(word));
    // split on punctuation, each punctuation character its own token
    for (char32_t c : w) {
      if (bert_is_punctuation(c)) {
        joined.push_back(' '), joined.push_back(c), joined.push_back(' ');
      } else {
        joined.push_back(c);
      }
    }
    joined.push_back(' ');
  }
  // WordPiece: greedy longest match first.
  std::vector<std::string> out;
  for (const U32& word : py_split(joined)) {
    if (word.size() > 200) {
      out.push_back(token(unk_));
      continue;
    }
    std::vector<std::string> pieces;
    bool bad = false;
    size_t start = 0;
    while (start < word.size()) {
      size_t end = word.size();
      std::string cur;
      bool found = false;
      while (start < end) {
        std::string sub = (start > 0 ? "##" : "") + encode_utf8(word.substr(start, end - start));
        if (vocab_.count(sub)) {
          cur = std::move(sub);
          found = true;
          break;
        }
        --end;
      }
      if (!found) {
        bad = true;
        break;
      }
      pieces.push_back(std::move(cur));
      start = end;
    }
    if (bad) out.push_back(token(unk_));
    else out.insert(out.end(), pieces.begin(), pieces.end());
  }
  return out;
}

void Tokenizer::encode_into(const std::string& text, int context_length, int64_t* out) const {
  std::fill(out, out + context_length, 0);
  auto pieces = tokenize(text);
  int pos = 0;
  out[pos++] = cls_;
  for (const auto& p : pieces) {
    if (pos >= context_length - 1) break;
    auto it = vocab_.find(p);
    out[pos++] = it == vocab_.end() ? unk_ : it->second;
  }
  out[pos] = sep_;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, int context_length) const {
  std::vector<int64_t> ids(static_cast<size_t>(context_length));
  encode_into(text, context_length, ids.data());
  return ids;
}

std::string preprocess_text(const std::string& text) {
  U32 s = py_lower(decode_utf8(text));
  for (auto& c : s)
    if (c == 0x201C || c == 0x201D) c = '"';
  return encode_utf8(s);
}

std::string find_vocab(const std::string& explicit_path, const std::string& checkpoint_path) {
  if (!explicit_path.empty()) {
    if (!file_exists(explicit_path)) throw ModelError("--vocab '" + explicit_path + "' does not exist");
    return explicit_path;
  }
  std::string dir = is_directory(checkpoint_path) ? checkpoint_path : path_dirname(checkpoint_path);
  std::string p = path_join(dir, "vocab.txt");
  if (file_exists(p)) return p;
  throw ModelError("no vocab.txt beside '" + checkpoint_path +
                   "'; pass --vocab PATH (cn_clip's vocab.txt, 21128 lines, for the official models)");
}

}  // namespace clip
