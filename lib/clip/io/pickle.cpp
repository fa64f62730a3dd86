#include "clip/io/pickle.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "clip/base/byteorder.h"
#include "clip/base/error.h"

namespace clip {

namespace {

constexpr size_t kMaxDepth = 500;
// Items on the unpickler's stack and entries in its memo. torch.save batches APPENDS/SETITEMS by
// 1000 and memoizes a few objects per tensor, so real checkpoints stay orders of magnitude below
// these; a hostile stream cannot grow either past them (about 100 MB of shared pointers).
constexpr size_t kMaxStack = size_t(1) << 20;
constexpr size_t kMaxMemo = size_t(1) << 22;

struct StorageName {
  const char* name;
  DType dtype;
};
constexpr StorageName kStorageNames[] = {
    {"FloatStorage", DType::f32}, {"HalfStorage", DType::f16},   {"BFloat16Storage", DType::bf16},
    {"DoubleStorage", DType::f64}, {"LongStorage", DType::i64},  {"IntStorage", DType::i32},
    {"ShortStorage", DType::i16}, {"CharStorage", DType::i8},    {"ByteStorage", DType::u8},
    {"BoolStorage", DType::b1},
};

// Globals the reader accepts (as "module.name"). Storage types are added by is_allowed().
const std::unordered_set<std::string>& allowed_globals() {
  static const std::unordered_set<std::string> s = {
      "collections.OrderedDict",
      "torch._utils._rebuild_tensor_v2",
      "torch._utils._rebuild_tensor",
      "torch._utils._rebuild_parameter",
      "torch._utils._rebuild_parameter_with_state",
      "torch.device",
      "torch.Size",
      "_codecs.encode",
      "builtins.bytes", "__builtin__.bytes",
      "builtins.bytearray", "__builtin__.bytearray",
      "builtins.set", "__builtin__.set",
      "builtins.frozenset", "__builtin__.frozenset",
  };
  return s;
}

bool is_allowed(const std::string& g) {
  DType t;
  return allowed_globals().count(g) || storage_type_dtype(g, t);
}

// UTF-8 -> code points (for _codecs.encode(s, 'latin1'), how protocol 2 stores bytes).
bool utf8_to_latin1(const std::string& in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size();) {
    uint8_t c = uint8_t(in[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < in.size()) {
      cp = ((c & 0x1F) << 6) | (uint8_t(in[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;  // a code point above U+07FF cannot be latin-1
    }
    if (cp > 0xFF) return false;
    out.push_back(char(cp));
  }
  return true;
}

std::string latin1_to_utf8(const std::string& in) {
  std::string out;
  for (unsigned char c : in) {
    if (c < 0x80) {
      out.push_back(char(c));
    } else {
      out.push_back(char(0xC0 | (c >> 6)));
      out.push_back(char(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const std::string& what, const PersistentLoader& pl)
      : begin_(data), p_(data), end_(data + size), what_(what), persistent_load_(pl) {}

  ~Unpickler() {
    // Break every container apart before the shared pointers go, so that neither deep nesting nor
    // self-references built by a hostile stream can recurse or leak on destruction.
    if (!keep_) teardown();
  }

  PyPtr run() {
    PyPtr result = loop();
    auto reachable = check_structure(result);
    // Containers the result does not reach (left in the memo) may form cycles: break them now.
    for (auto& c : created_)
      if (!reachable.count(c.get())) {
        c->items.clear();
        c->entries.clear();
      }
    keep_ = true;
    return result;
  }

 private:
  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& what_;
  const PersistentLoader& persistent_load_;
  std::vector<PyPtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyPtr> memo_;
  std::vector<PyPtr> created_;  // every container made here (see teardown)
  std::unordered_map<const PyValue*, std::unordered_map<std::string, size_t>> dict_index_;
  size_t op_pos_ = 0;
  bool keep_ = false;

  [[noreturn]] void fail(const std::string& msg) const {
    throw ModelError(what_ + ": corrupt pickle data (" + msg + " at byte " + std::to_string(op_pos_) +
                     "); the file is damaged or was not written by torch.save");
  }
  // Well-formed pickle data that this reader does not support (as opposed to damage).
  [[noreturn]] void unsupported(const std::string& msg) const {
    throw ModelError(what_ + ": unsupported pickle content at byte " + std::to_string(op_pos_) + ": " + msg);
  }
  [[noreturn]] void big_integer(const std::string& how) const {
    unsupported("a Python integer outside the signed 64-bit range (" + how +
                "); integers of 2^63 and above (or below -2^63) are not supported. Store such a value as a string "
                "or drop it before torch.save");
  }

  void teardown() {
    stack_.clear();
    memo_.clear();
    for (auto& c : created_) {
      c->items.clear();
      c->entries.clear();
    }
    created_.clear();
  }

  PyPtr make(PyPtr v) {
    created_.push_back(v);
    return v;
  }

  const uint8_t* take(uint64_t n) {
    if (uint64_t(end_ - p_) < n) fail("unexpected end of data");
    const uint8_t* r = p_;
    p_ += n;
    return r;
  }
  uint8_t u8() { return *take(1); }
  uint16_t u16() {
    return le16(take(2));
  }
  uint32_t u32() {
    return le32(take(4));
  }
  uint64_t u64() {
    uint64_t lo = u32();
    return lo | (uint64_t(u32()) << 32);
  }
  std::string line() {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p_, '\n', size_t(end_ - p_)));
    if (!nl) fail("unterminated text argument");
    std::string s(reinterpret_cast<const char*>(p_), size_t(nl - p_));
    p_ = nl + 1;
    return s;
  }
  std::string bytes(uint64_t n) {
    const uint8_t* b = take(n);
    return std::string(reinterpret_cast<const char*>(b), size_t(n));
  }

  void push(PyPtr v) {
    if (stack_.size() >= kMaxStack) fail("more than " + std::to_string(kMaxStack) + " items on the stack");
    stack_.push_back(std::move(v));
  }
  PyPtr pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    PyPtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyPtr& top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    return stack_.back();
  }
  std::vector<PyPtr> pop_mark() {
    if (marks_.empty()) fail("missing MARK");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyPtr> items(std::make_move_iterator(stack_.begin() + std::ptrdiff_t(m)),
                             std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }

  static std::string key_of(const PyValue& k) {
    if (k.kind == PyValue::Kind::string) return "s" + k.s;
    if (k.kind == PyValue::Kind::integer) return "i" + std::to_string(k.i);
    if (k.kind == PyValue::Kind::boolean) return "i" + std::to_string(int(k.b));
    return std::string();
  }

  // Python dict assignment in O(1) for string and integer keys (a hostile stream with many keys
  // must not turn into a quadratic loop).
  void dict_set(PyValue& d, PyPtr k, PyPtr v) {
    if (d.kind != PyValue::Kind::dict) fail("SETITEM on a non-dict");
    std::string key = key_of(*k);
    if (key.empty()) {
      dict_index_.erase(&d);
      d.set(std::move(k), std::move(v));
      return;
    }
    auto it = dict_index_.find(&d);
    if (it == dict_index_.end()) {
      it = dict_index_.emplace(&d, std::unordered_map<std::string, size_t>()).first;
      for (size_t i = 0; i < d.entries.size(); ++i) {
        std::string ek = key_of(*d.entries[i].first);
        if (!ek.empty()) it->second.emplace(ek, i);
      }
    }
    auto [pos, inserted] = it->second.emplace(key, d.entries.size());
    if (inserted)
      d.entries.emplace_back(std::move(k), std::move(v));
    else
      d.entries[pos->second].second = std::move(v);
  }

  void list_append(PyValue& l, PyPtr v) {
    if (l.kind != PyValue::Kind::list) fail("APPEND to a non-list");
    l.items.push_back(std::move(v));
  }

  void memo_put(uint64_t idx) {
    PyPtr& v = top();
    auto it = memo_.find(idx);
    if (it != memo_.end()) {
      it->second = v;
      return;
    }
    if (memo_.size() >= kMaxMemo) fail("more than " + std::to_string(kMaxMemo) + " memo entries");
    memo_.emplace(idx, v);
  }
  PyPtr memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo key " + std::to_string(idx) + " not found");
    return it->second;
  }

  PyPtr global(const std::string& module, const std::string& name) {
    std::string g = module + "." + name;
    if (!is_allowed(g))
      throw ModelError("refusing to load " + what_ + ": pickle global " + g +
                       " is not allowed (only tensors, storages, collections.OrderedDict and plain Python "
                       "data are accepted; nothing in a checkpoint is ever executed). Re-save the weights "
                       "as a plain state dict: torch.save(model.state_dict(), path)");
    auto v = std::make_shared<PyValue>();
    v->kind = PyValue::Kind::object;
    v->s = g;
    return v;
  }

  static int64_t to_int(const PyPtr& v, bool& ok) {
    ok = v && (v->kind == PyValue::Kind::integer || v->kind == PyValue::Kind::boolean);
    if (!ok) return 0;
    return v->kind == PyValue::Kind::integer ? v->i : int64_t(v->b);
  }

  std::vector<int64_t> int_tuple(const PyPtr& v, const char* what) {
    if (!v || (v->kind != PyValue::Kind::tuple && v->kind != PyValue::Kind::list)) fail(std::string(what) + " is not a tuple");
    std::vector<int64_t> out;
    for (const auto& x : v->items) {
      bool ok;
      int64_t i = to_int(x, ok);
      if (!ok || i < 0) fail(std::string(what) + " holds a non-integer or negative value");
      out.push_back(i);
    }
    return out;
  }

  PyPtr rebuild_tensor(const std::vector<PyPtr>& a) {
    if (a.size() < 4) fail("_rebuild_tensor_v2 with too few arguments");
    const PyPtr& st = a[0];
    if (!st || st->kind != PyValue::Kind::object || st->s != kStorageObject) fail("tensor without a storage");
    bool ok;
    int64_t offset = to_int(a[1], ok);
    if (!ok || offset < 0) fail("bad tensor storage offset");
    TensorData t;
    t.shape = int_tuple(a[2], "tensor size");
    t.strides = int_tuple(a[3], "tensor stride");
    if (t.shape.size() != t.strides.size()) fail("tensor size and stride differ in length");
    if (t.shape.size() > 64) fail("tensor with more than 64 dimensions");
    const TensorData& s = st->tensor;
    int64_t storage_numel = s.shape.empty() ? 0 : s.shape[0];
    t.dtype = s.dtype;
    t.owner = s.owner;
    // Highest element index touched; every product and sum is checked for overflow.
    int64_t numel = 1, last = offset;
    bool empty = false;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (t.shape[i] == 0) empty = true;
      if (__builtin_mul_overflow(numel, t.shape[i], &numel)) fail("tensor size overflows");
    }
    if (!empty) {
      for (size_t i = 0; i < t.shape.size(); ++i) {
        int64_t span;
        if (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &span) || __builtin_add_overflow(last, span, &last))
          fail("tensor stride overflows");
      }
      if (last >= storage_numel)
        throw ModelError(what_ + ": tensor " + t.shape_str() + " at offset " + std::to_string(offset) +
                         " needs storage element " + std::to_string(last) + " but its storage holds only " +
                         std::to_string(storage_numel) + " elements (damaged file)");
    } else if (offset > storage_numel) {
      fail("empty tensor offset past its storage");
    }
    t.data = s.data ? s.data + size_t(offset) * dtype_size(t.dtype) : nullptr;
    return PyValue::from_tensor(std::move(t));
  }

  PyPtr call(const PyPtr& fn, const PyPtr& args_v) {
    if (!fn || fn->kind != PyValue::Kind::object || fn->s == kStorageObject) fail("REDUCE on a non-callable");
    if (!args_v || args_v->kind != PyValue::Kind::tuple) fail("REDUCE arguments are not a tuple");
    const std::vector<PyPtr>& a = args_v->items;
    const std::string& g = fn->s;
    auto pyname = [&](const char* n) { return g == std::string("builtins.") + n || g == std::string("__builtin__.") + n; };
    if (g == "collections.OrderedDict") {
      PyPtr d = make(PyValue::dict(true));
      if (!a.empty()) {
        if (a.size() != 1 || !a[0] || (a[0]->kind != PyValue::Kind::list && a[0]->kind != PyValue::Kind::tuple))
          fail("unsupported OrderedDict arguments");
        for (const auto& kv : a[0]->items) {
          if (!kv || (kv->kind != PyValue::Kind::tuple && kv->kind != PyValue::Kind::list) || kv->items.size() != 2)
            fail("OrderedDict item is not a pair");
          dict_set(*d, kv->items[0], kv->items[1]);
        }
      }
      return d;
    }
    if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor") return rebuild_tensor(a);
    if (g == "torch._utils._rebuild_parameter" || g == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || !a[0] || a[0]->kind != PyValue::Kind::tensor) fail("parameter without tensor data");
      return a[0];
    }
    if (g == "torch.device") {
      if (a.empty() || !a[0] || a[0]->kind != PyValue::Kind::string) fail("bad torch.device arguments");
      std::string dev = a[0]->s;
      bool ok;
      if (a.size() > 1 && a[1]) {
        int64_t idx = to_int(a[1], ok);
        if (ok) dev += ":" + std::to_string(idx);
      }
      return PyValue::str(dev);
    }
    if (g == "torch.Size") {
      if (a.size() != 1 || !a[0] || a[0]->kind != PyValue::Kind::tuple) fail("bad torch.Size arguments");
      return a[0];
    }
    if (g == "_codecs.encode") {
      if (a.empty() || !a[0] || a[0]->kind != PyValue::Kind::string) fail("bad _codecs.encode arguments");
      std::string enc = a.size() > 1 && a[1] && a[1]->kind == PyValue::Kind::string ? a[1]->s : "utf-8";
      auto v = std::make_shared<PyValue>();
      v->kind = PyValue::Kind::bytes;
      if (enc == "latin1" || enc == "latin-1") {
        if (!utf8_to_latin1(a[0]->s, v->s)) fail("text not encodable as latin-1");
      } else if (enc == "utf-8" || enc == "utf8") {
        v->s = a[0]->s;
      } else {
        fail("unsupported encoding '" + enc + "'");
      }
      return v;
    }
    if (pyname("bytes") || pyname("bytearray")) {
      auto v = std::make_shared<PyValue>();
      v->kind = PyValue::Kind::bytes;
      if (!a.empty()) {
        if (!a[0] || a[0]->kind != PyValue::Kind::bytes) fail("unsupported bytes() arguments");
        v->s = a[0]->s;
      }
      return v;
    }
    if (pyname("set") || pyname("frozenset")) {
      // Sets have no PyValue kind of their own: they come back as lists.
      PyPtr l = make(PyValue::list());
      if (!a.empty()) {
        if (!a[0] || (a[0]->kind != PyValue::Kind::list && a[0]->kind != PyValue::Kind::tuple)) fail("bad set() arguments");
        l->items = a[0]->items;
      }
      return l;
    }
    fail(g + " is not callable here");
  }

  static double parse_double(const std::string& s, bool& ok) {
    char* e = nullptr;
    double d = std::strtod(s.c_str(), &e);
    ok = !s.empty() && e && *e == '\0';
    return d;
  }

  int64_t parse_int(std::string s) {
    if (!s.empty() && s.back() == 'L') s.pop_back();
    if (s.empty()) fail("empty integer");
    errno = 0;
    char* e = nullptr;
    long long v = std::strtoll(s.c_str(), &e, 10);
    if (!e || *e || (errno && errno != ERANGE)) fail("bad integer '" + s.substr(0, 40) + "'");
    if (errno == ERANGE) big_integer("the text integer " + s.substr(0, 40) + (s.size() > 40 ? "..." : ""));
    return v;
  }

  // LONG1/LONG4: n bytes of little-endian two's complement. Python writes the minimal length, so
  // 2^63 and above take 9 bytes; a longer encoding whose high bytes only extend the sign still fits.
  int64_t read_long(uint64_t n, const char* op) {
    const uint8_t* b = take(n);
    if (n > 8) {
      const uint8_t ext = (b[7] & 0x80) ? 0xFF : 0x00;
      for (uint64_t i = 8; i < n; ++i)
        if (b[i] != ext)
          big_integer(std::string(op) + " of " + std::to_string(n) + " bytes, more than the 64 bits (8 bytes) supported");
      n = 8;
    }
    if (n == 0) return 0;
    uint64_t v = 0;
    for (uint64_t i = 0; i < n; ++i) v |= uint64_t(b[i]) << (8 * i);
    if (n < 8 && (b[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
    return int64_t(v);
  }

  PyPtr string_value(std::string s, bool is_bytes) {
    auto v = std::make_shared<PyValue>();
    v->kind = is_bytes ? PyValue::Kind::bytes : PyValue::Kind::string;
    v->s = std::move(s);
    return v;
  }

  PyPtr loop() {
    for (;;) {
      op_pos_ = size_t(p_ - begin_);
      uint8_t op = u8();
      switch (op) {
        case 0x80: {  // PROTO
          uint8_t proto = u8();
          if (proto > 5) fail("unsupported pickle protocol " + std::to_string(proto));
          break;
        }
        case 0x95:  // FRAME: frames are transparent for a reader holding the whole stream
          if (u64() > uint64_t(end_ - p_)) fail("frame longer than the data");
          break;
        case '.': {  // STOP
          PyPtr r = pop();
          return r ? r : PyValue::none();
        }
        case '(':
          if (marks_.size() >= kMaxStack) fail("more than " + std::to_string(kMaxStack) + " open MARKs");
          marks_.push_back(stack_.size());
          break;
        case '0': pop(); break;
        case '1': pop_mark(); break;
        case '2': push(top()); break;
        case 'N': push(PyValue::none()); break;
        case 0x88: push(PyValue::boolean(true)); break;
        case 0x89: push(PyValue::boolean(false)); break;
        case 'I': {
          std::string s = line();
          if (s == "00") push(PyValue::boolean(false));
          else if (s == "01") push(PyValue::boolean(true));
          else push(PyValue::integer(parse_int(s)));
          break;
        }
        case 'L': push(PyValue::integer(parse_int(line()))); break;
        case 'J': push(PyValue::integer(int32_t(u32()))); break;
        case 'K': push(PyValue::integer(u8())); break;
        case 'M': push(PyValue::integer(u16())); break;
        case 0x8a: push(PyValue::integer(read_long(u8(), "LONG1"))); break;
        case 0x8b: {
          int32_t n = int32_t(u32());
          if (n < 0) fail("negative LONG4 length");
          push(PyValue::integer(read_long(uint64_t(n), "LONG4")));
          break;
        }
        case 'G': {
          const uint8_t* b = take(8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];
          double d;
          std::memcpy(&d, &bits, 8);
          push(PyValue::floating(d));
          break;
        }
        case 'F': {
          bool ok;
          double d = parse_double(line(), ok);
          if (!ok) fail("bad FLOAT");
          push(PyValue::floating(d));
          break;
        }
        case 'X': push(string_value(bytes(u32()), false)); break;
        case 0x8c: push(string_value(bytes(u8()), false)); break;
        case 0x8d: push(string_value(bytes(u64()), false)); break;
        case 'T': {  // BINSTRING (Python 2 str): kept as text
          int32_t n = int32_t(u32());
          if (n < 0) fail("negative BINSTRING length");
          push(string_value(latin1_to_utf8(bytes(uint64_t(n))), false));
          break;
        }
        case 'U': push(string_value(latin1_to_utf8(bytes(u8())), false)); break;
        case 'B': push(string_value(bytes(u32()), true)); break;
        case 'C': push(string_value(bytes(u8()), true)); break;
        case 0x8e: push(string_value(bytes(u64()), true)); break;
        case 0x96: push(string_value(bytes(u64()), true)); break;
        case ']': push(make(PyValue::list())); break;
        case 'l': push(make(PyValue::list(pop_mark()))); break;
        case 'a': {
          PyPtr v = pop();
          list_append(*top(), std::move(v));
          break;
        }
        case 'e': {
          std::vector<PyPtr> items = pop_mark();
          PyPtr& l = top();
          for (auto& v : items) list_append(*l, std::move(v));
          break;
        }
        case ')': push(PyValue::tuple()); break;
        case 't': push(make(PyValue::tuple(pop_mark()))); break;
        case 0x85: {
          PyPtr a = pop();
          push(make(PyValue::tuple({a})));
          break;
        }
        case 0x86: {
          PyPtr b = pop(), a = pop();
          push(make(PyValue::tuple({a, b})));
          break;
        }
        case 0x87: {
          PyPtr c = pop(), b = pop(), a = pop();
          push(make(PyValue::tuple({a, b, c})));
          break;
        }
        case '}': push(make(PyValue::dict())); break;
        case 'd': {
          std::vector<PyPtr> items = pop_mark();
          if (items.size() % 2) fail("DICT with an odd number of items");
          PyPtr d = make(PyValue::dict());
          for (size_t i = 0; i < items.size(); i += 2) dict_set(*d, items[i], items[i + 1]);
          push(d);
          break;
        }
        case 's': {
          PyPtr v = pop(), k = pop();
          dict_set(*top(), std::move(k), std::move(v));
          break;
        }
        case 'u': {
          std::vector<PyPtr> items = pop_mark();
          if (items.size() % 2) fail("SETITEMS with an odd number of items");
          PyPtr& d = top();
          for (size_t i = 0; i < items.size(); i += 2) dict_set(*d, items[i], items[i + 1]);
          break;
        }
        case 0x8f: push(make(PyValue::list())); break;  // EMPTY_SET (as a list)
        case 0x90: {                                    // ADDITEMS
          std::vector<PyPtr> items = pop_mark();
          PyPtr& s = top();
          for (auto& v : items) list_append(*s, std::move(v));
          break;
        }
        case 0x91: push(make(PyValue::list(pop_mark()))); break;  // FROZENSET
        case 'c': {
          std::string module = line();
          std::string name = line();
          push(global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          PyPtr name = pop(), module = pop();
          if (name->kind != PyValue::Kind::string || module->kind != PyValue::Kind::string) fail("STACK_GLOBAL needs strings");
          push(global(module->s, name->s));
          break;
        }
        case 'R': {
          PyPtr args = pop(), fn = pop();
          push(call(fn, args));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args) -- only for the same allow-listed data types
          PyPtr args = pop(), cls = pop();
          push(call(cls, args));
          break;
        }
        case 0x92: {  // NEWOBJ_EX
          PyPtr kwargs = pop(), args = pop(), cls = pop();
          if (kwargs->kind != PyValue::Kind::dict || !kwargs->entries.empty()) fail("NEWOBJ_EX with keyword arguments");
          push(call(cls, args));
          break;
        }
        case 'b': {
          // BUILD: sets object state. For an OrderedDict state_dict this is {'_metadata': ...}
          // (module versions), which loading does not need; tensors carry none worth keeping.
          PyPtr state = pop();
          PyPtr& obj = top();
          if (obj->kind != PyValue::Kind::dict && obj->kind != PyValue::Kind::tensor) fail("BUILD on an unsupported object");
          break;
        }
        case 'Q': {
          PyPtr pid = pop();
          if (!persistent_load_) fail("persistent id without a persistent loader");
          push(persistent_load_(pid));
          break;
        }
        case 'P': {
          PyPtr pid = PyValue::str(line());
          if (!persistent_load_) fail("persistent id without a persistent loader");
          push(persistent_load_(pid));
          break;
        }
        case 'q': memo_put(u8()); break;
        case 'r': memo_put(u32()); break;
        case 'p': memo_put(uint64_t(parse_int(line()))); break;
        case 0x94: memo_put(memo_.size()); break;
        case 'h': push(memo_get(u8())); break;
        case 'j': push(memo_get(u32())); break;
        case 'g': push(memo_get(uint64_t(parse_int(line())))); break;
        default: {
          char buf[8];
          std::snprintf(buf, sizeof buf, "0x%02x", op);
          fail(std::string("unsupported opcode ") + buf);
        }
      }
    }
  }

  // Rejects self-references and nesting deeper than kMaxDepth (iteratively: the structure may be
  // hostile). Shared sub-objects (the same tuple referenced twice through the memo) are fine.
  std::unordered_map<const PyValue*, int> check_structure(const PyPtr& root) {
    std::unordered_map<const PyValue*, int> state;  // 1 = on the current path, 2 = done
    struct Frame {
      const PyValue* v;
      size_t next;
    };
    std::vector<Frame> path;
    auto children = [](const PyValue* v) { return v->items.size() + 2 * v->entries.size(); };
    auto child = [](const PyValue* v, size_t i) -> const PyValue* {
      if (i < v->items.size()) return v->items[i].get();
      i -= v->items.size();
      return (i % 2 ? v->entries[i / 2].second : v->entries[i / 2].first).get();
    };
    path.push_back({root.get(), 0});
    state[root.get()] = 1;
    while (!path.empty()) {
      Frame& f = path.back();
      if (f.next == children(f.v)) {
        state[f.v] = 2;
        path.pop_back();
        continue;
      }
      const PyValue* c = child(f.v, f.next++);
      if (!c || (c->items.empty() && c->entries.empty())) continue;
      int& s = state[c];
      if (s == 1) throw ModelError(what_ + ": pickle data refers to itself (not a checkpoint torch.save writes)");
      if (s == 2) continue;
      s = 1;
      if (path.size() >= kMaxDepth) throw ModelError(what_ + ": pickle data nested deeper than " + std::to_string(kMaxDepth) + " levels");
      path.push_back({c, 0});
    }
    return state;
  }
};

// ---------------------------------------------------------------------------------------------
// Writer

class Pickler {
 public:
  Pickler(std::vector<const TensorData*>& tensors, const std::string& location) : tensors_(tensors), location_(location) {}

  std::string run(const PyPtr& root) {
    out_ += "\x80\x02";
    save(root, 0);
    out_ += '.';
    return std::move(out_);
  }

 private:
  std::string out_;
  std::vector<const TensorData*>& tensors_;
  const std::string& location_;

  void op(char c) { out_.push_back(c); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(char((v >> (8 * i)) & 0xFF));
  }
  void global(const char* module, const char* name) {
    op('c');
    out_ += module;
    op('\n');
    out_ += name;
    op('\n');
  }
  void str(const std::string& s) {
    if (s.size() > 0xFFFFFFFFu) throw ModelError("string too long to pickle");
    op('X');
    u32(uint32_t(s.size()));
    out_ += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v <= 0xFF) {
      op('K');
      out_.push_back(char(v));
    } else if (v >= 0 && v <= 0xFFFF) {
      op('M');
      out_.push_back(char(v & 0xFF));
      out_.push_back(char(v >> 8));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      u32(uint32_t(int32_t(v)));
    } else {
      // LONG1: minimal little-endian two's complement
      uint8_t b[8];
      for (int i = 0; i < 8; ++i) b[i] = uint8_t((uint64_t(v) >> (8 * i)) & 0xFF);
      int n = 8;
      while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) || (b[n - 1] == 0xFF && (b[n - 2] & 0x80)))) --n;
      out_.push_back(char(0x8a));
      out_.push_back(char(n));
      out_.append(reinterpret_cast<const char*>(b), size_t(n));
    }
  }
  void int_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      op(')');
      return;
    }
    if (v.size() > 3) op('(');
    for (int64_t x : v) integer(x);
    op(v.size() == 1 ? '\x85' : v.size() == 2 ? '\x86' : v.size() == 3 ? '\x87' : 't');
  }

  void save(const PyPtr& v, size_t depth) {
    if (depth > kMaxDepth) throw ModelError("cannot save: value nested deeper than " + std::to_string(kMaxDepth) + " levels (or refers to itself)");
    if (!v) {
      op('N');
      return;
    }
    switch (v->kind) {
      case PyValue::Kind::none: op('N'); break;
      case PyValue::Kind::boolean: op(v->b ? '\x88' : '\x89'); break;
      case PyValue::Kind::integer: integer(v->i); break;
      case PyValue::Kind::floating: {
        uint64_t bits;
        std::memcpy(&bits, &v->f, 8);
        op('G');
        for (int i = 7; i >= 0; --i) out_.push_back(char((bits >> (8 * i)) & 0xFF));
        break;
      }
      case PyValue::Kind::string: str(v->s); break;
      case PyValue::Kind::bytes:
        // Protocol 2 has no bytes opcode: Python 3 writes _codecs.encode(<latin-1 text>, 'latin1').
        if (v->s.empty()) {
          global("__builtin__", "bytes");
          op(')');
          op('R');
        } else {
          global("_codecs", "encode");
          str(latin1_to_utf8(v->s));
          str("latin1");
          op('\x86');
          op('R');
        }
        break;
      case PyValue::Kind::tuple:
        if (v->items.empty()) {
          op(')');
        } else {
          if (v->items.size() > 3) op('(');
          for (const auto& x : v->items) save(x, depth + 1);
          size_t n = v->items.size();
          op(n == 1 ? '\x85' : n == 2 ? '\x86' : n == 3 ? '\x87' : 't');
        }
        break;
      case PyValue::Kind::list:
        op(']');
        for (size_t i = 0; i < v->items.size(); i += 1000) {
          op('(');
          for (size_t j = i; j < std::min(v->items.size(), i + 1000); ++j) save(v->items[j], depth + 1);
          op('e');
        }
        break;
      case PyValue::Kind::dict:
        if (v->ordered) {
          global("collections", "OrderedDict");
          op(')');
          op('R');
        } else {
          op('}');
        }
        for (size_t i = 0; i < v->entries.size(); i += 1000) {
          op('(');
          for (size_t j = i; j < std::min(v->entries.size(), i + 1000); ++j) {
            save(v->entries[j].first, depth + 1);
            save(v->entries[j].second, depth + 1);
          }
          op('u');
        }
        break;
      case PyValue::Kind::tensor: tensor(v->tensor); break;
      case PyValue::Kind::object:
        throw ModelError("cannot save a Python object of type " + v->s + " (only plain data and tensors)");
    }
  }

  void tensor(const TensorData& t) {
    if (t.shape.size() != t.strides.size() && !t.strides.empty())
      throw ModelError("cannot save tensor " + t.shape_str() + ": strides do not match its shape");
    size_t key = tensors_.size();
    tensors_.push_back(&t);
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(');
    str("storage");
    global("torch", storage_type_name(t.dtype).c_str());
    str(std::to_string(key));
    str(location_);
    integer(t.numel());
    op('t');
    op('Q');
    integer(0);
    int_tuple(t.shape);
    std::vector<int64_t> strides(t.shape.size());
    int64_t s = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      strides[i] = s;
      s *= std::max<int64_t>(t.shape[i], 1);
    }
    int_tuple(strides);
    op('\x89');
    global("collections", "OrderedDict");
    op(')');
    op('R');
    op('t');
    op('R');
  }
};

}  // namespace

bool storage_type_dtype(const std::string& global, DType& out) {
  if (global.rfind("torch.", 0) != 0) return false;
  std::string n = global.substr(6);
  for (const auto& s : kStorageNames)
    if (n == s.name) {
      out = s.dtype;
      return true;
    }
  return false;
}

std::string storage_type_name(DType t) {
  for (const auto& s : kStorageNames)
    if (s.dtype == t) return s.name;
  return "FloatStorage";
}

PyPtr unpickle(const uint8_t* data, size_t size, const std::string& what, const PersistentLoader& persistent_load) {
  Unpickler u(data, size, what, persistent_load);
  return u.run();
}

std::string pickle_torch(const PyPtr& root, std::vector<const TensorData*>& tensors_out, const std::string& location) {
  Pickler p(tensors_out, location);
  return p.run(root);
}

}  // namespace clip
