// The Jinja2 interpreter for chat templates: see runtime/jinja.h.
//
// Three stages. scan() splits the source into text, {{ output }} and {% statement %} pieces,
// applying Jinja2's lexer rules for whitespace: newlines normalized and one trailing newline
// dropped (keep_trailing_newline off), `-` strips the whitespace beside a tag, trim_blocks drops
// the newline after a block or comment tag, lstrip_blocks the spaces and tabs before one on its
// line (`+` turns either off). parse() builds statement and expression trees with Jinja2's
// precedence (or < and < not < comparisons and `in` < `~` < + - < * / // % < ** < unary <
// filters, tests and postfix). render() walks them over Python-like values.
#include "runtime/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "base/error.h"

namespace mxlm::jinja {

// ---------------------------------------------------------------------------------------------
// Values

struct Value;
using List = std::vector<Value>;
struct Dict;
struct Ctx;
struct Args;
using Fn = std::function<Value(Args&, Ctx&)>;

struct Value {
  enum class K : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kStr, kList, kDict, kFunc } k = K::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // a string, or the name an undefined value stands for
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Fn> fn;
  bool ns = false;  // a namespace(): attributes are its keys and can be set

  static Value none() { Value v; v.k = K::kNone; return v; }
  static Value boolean(bool x) { Value v; v.k = K::kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.k = K::kInt; v.i = x; return v; }
  static Value real(double x) { Value v; v.k = K::kFloat; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.k = K::kStr; v.s = std::move(x); return v; }
  static Value undefined(std::string name) { Value v; v.s = std::move(name); return v; }
  static Value of_list(List l) { Value v; v.k = K::kList; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value of_dict(std::shared_ptr<Dict> d) { Value v; v.k = K::kDict; v.dict = std::move(d); return v; }
  static Value func(Fn f) { Value v; v.k = K::kFunc; v.fn = std::make_shared<Fn>(std::move(f)); return v; }

  bool undef() const { return k == K::kUndefined; }
  bool is_str() const { return k == K::kStr; }
  bool is_num() const { return k == K::kInt || k == K::kFloat || k == K::kBool; }
  double num() const { return k == K::kFloat ? f : k == K::kBool ? double(b) : double(i); }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const {
    for (const auto& [k, v] : items) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  void set(const std::string& key, Value v) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(v);
        return;
      }
    }
    items.emplace_back(key, std::move(v));
  }
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  int line = 0;
  // Positional i, else keyword `name`, else nullopt.
  std::optional<Value> get(size_t i, const char* name) const {
    if (i < pos.size()) return pos[i];
    for (const auto& [k, v] : kw) {
      if (k == name) return v;
    }
    return std::nullopt;
  }
};

namespace {

constexpr int kMaxDepth = 1000;
constexpr size_t kMaxOutput = size_t{64} << 20;
// Work a render may do, counted in evaluated nodes, loop iterations and elements of lists and
// strings it builds: every real template of tests/data/chat_templates renders a 2,000-message
// conversation within it (ChatTemplates.LongConversationsFitTheWorkBudget); nested loops over
// large ranges would take
// forever, and growing lists or strings would take all memory.
constexpr int64_t kMaxSteps = 250'000;
constexpr int64_t kMaxRange = kMaxSteps;

[[noreturn]] void parse_error(int line, const std::string& msg) {
  throw Error(ErrorCode::kFormat, "chat template, line " + std::to_string(line) + ": " + msg);
}
[[noreturn]] void render_error(int line, const std::string& msg) {
  throw Error(ErrorCode::kInvalidArgument, "chat template, line " + std::to_string(line) + ": " + msg);
}

// The code points of UTF-8 text, one string each (strings index and slice by code point).
std::vector<std::string> chars_of(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  // Python's repr: the shortest round-trip digits, positional for 1e-4 <= |x| < 1e16.
  const double ax = std::fabs(x);
  std::to_chars_result r;
  if (ax != 0 && (ax < 1e-4 || ax >= 1e16)) {
    r = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  } else {
    r = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::fixed);
  }
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  if (size_t e = s.find('e'); e != std::string::npos) {
    // Python writes at least two exponent digits: 1e-05, 1e+16.
    std::string mant = s.substr(0, e), ex = s.substr(e + 1);
    const char sign = ex[0] == '-' ? '-' : '+';
    if (ex[0] == '-' || ex[0] == '+') ex.erase(0, 1);
    if (ex.size() < 2) ex = "0" + ex;
    s = mant + "e" + sign + ex;
  }
  return s;
}

std::string str_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + char(q);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + char(q);
}

std::string repr(const Value& v);

// Python's str().
std::string to_str(const Value& v) {
  switch (v.k) {
    case Value::K::kUndefined: return "";
    case Value::K::kNone: return "None";
    case Value::K::kBool: return v.b ? "True" : "False";
    case Value::K::kInt: return std::to_string(v.i);
    case Value::K::kFloat: return float_repr(v.f);
    case Value::K::kStr: return v.s;
    case Value::K::kList: {
      std::string o = "[";
      for (size_t i = 0; i < v.list->size(); ++i) o += (i ? ", " : "") + repr((*v.list)[i]);
      return o + "]";
    }
    case Value::K::kDict: {
      if (v.ns) return "<Namespace>";
      std::string o = "{";
      for (size_t i = 0; i < v.dict->items.size(); ++i) {
        o += (i ? ", " : "") + str_repr(v.dict->items[i].first) + ": " + repr(v.dict->items[i].second);
      }
      return o + "}";
    }
    case Value::K::kFunc: return "<function>";
  }
  return "";
}

std::string repr(const Value& v) { return v.is_str() ? str_repr(v.s) : to_str(v); }

bool truthy(const Value& v) {
  switch (v.k) {
    case Value::K::kUndefined:
    case Value::K::kNone: return false;
    case Value::K::kBool: return v.b;
    case Value::K::kInt: return v.i != 0;
    case Value::K::kFloat: return v.f != 0;
    case Value::K::kStr: return !v.s.empty();
    case Value::K::kList: return !v.list->empty();
    case Value::K::kDict: return v.ns || !v.dict->items.empty();
    case Value::K::kFunc: return true;
  }
  return false;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_num() && b.is_num()) {
    if (a.k == Value::K::kFloat || b.k == Value::K::kFloat) return a.num() == b.num();
    return (a.k == Value::K::kBool ? int64_t(a.b) : a.i) == (b.k == Value::K::kBool ? int64_t(b.b) : b.i);
  }
  if (a.k != b.k) return false;
  switch (a.k) {
    case Value::K::kUndefined:
    case Value::K::kNone: return true;
    case Value::K::kStr: return a.s == b.s;
    case Value::K::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    case Value::K::kDict:
      if (a.dict == b.dict) return true;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equal(v, *o)) return false;
      }
      return true;
    default: return a.fn == b.fn;
  }
}

// a < b for numbers, strings and lists, as Python orders them.
bool less(const Value& a, const Value& b, int line) {
  if (a.is_num() && b.is_num()) return a.num() < b.num();
  if (a.is_str() && b.is_str()) return a.s < b.s;
  if (a.k == Value::K::kList && b.k == Value::K::kList) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t i = 0; i < n; ++i) {
      if (less((*a.list)[i], (*b.list)[i], line)) return true;
      if (less((*b.list)[i], (*a.list)[i], line)) return false;
    }
    return a.list->size() < b.list->size();
  }
  render_error(line, "cannot compare " + repr(a) + " and " + repr(b));
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::integer(int64_t(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: return Value::real(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value::str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value::of_list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->items.emplace_back(it.key(), from_json(it.value()));
      return Value::of_dict(d);
    }
    default: return Value::none();
  }
}

// json.dumps(ensure_ascii=False) of a value: indent < 0 for none (separators ", " and ": ").
void dump_json(const Value& v, int indent, int level, bool sort_keys, std::string& o, int line) {
  auto nl = [&](int lv) {
    if (indent >= 0) o += "\n" + std::string(size_t(indent) * size_t(lv), ' ');
  };
  switch (v.k) {
    case Value::K::kNone: o += "null"; return;
    case Value::K::kBool: o += v.b ? "true" : "false"; return;
    case Value::K::kInt: o += std::to_string(v.i); return;
    case Value::K::kFloat:
      o += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity") : float_repr(v.f);
      return;
    case Value::K::kStr: {
      o += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"': o += "\\\""; break;
          case '\\': o += "\\\\"; break;
          case '\n': o += "\\n"; break;
          case '\r': o += "\\r"; break;
          case '\t': o += "\\t"; break;
          case '\b': o += "\\b"; break;
          case '\f': o += "\\f"; break;
          default:
            if (c < 0x20) {
              char buf[8];
              std::snprintf(buf, sizeof(buf), "\\u%04x", c);
              o += buf;
            } else {
              o += char(c);
            }
        }
      }
      o += '"';
      return;
    }
    case Value::K::kList:
      if (v.list->empty()) {
        o += "[]";
        return;
      }
      o += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) o += indent >= 0 ? "," : ", ";
        nl(level + 1);
        dump_json((*v.list)[i], indent, level + 1, sort_keys, o, line);
      }
      nl(level);
      o += ']';
      return;
    case Value::K::kDict: {
      if (v.dict->items.empty()) {
        o += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (sort_keys) std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      o += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) o += indent >= 0 ? "," : ", ";
        nl(level + 1);
        dump_json(Value::str(items[i]->first), indent, level + 1, sort_keys, o, line);
        o += ": ";
        dump_json(items[i]->second, indent, level + 1, sort_keys, o, line);
      }
      nl(level);
      o += '}';
      return;
    }
    default: render_error(line, "tojson: " + (v.undef() ? "'" + v.s + "' is undefined" : std::string("a function is not JSON")));
  }
}

// Items of an iterable: a list's elements, a dict's keys, a string's characters; undefined: none.
List iterate(const Value& v, int line) {
  switch (v.k) {
    case Value::K::kUndefined: return {};
    case Value::K::kList: return *v.list;
    case Value::K::kDict: {
      List l;
      for (const auto& kv : v.dict->items) l.push_back(Value::str(kv.first));
      return l;
    }
    case Value::K::kStr: {
      List l;
      for (std::string& c : chars_of(v.s)) l.push_back(Value::str(std::move(c)));
      return l;
    }
    default: render_error(line, repr(v) + " is not iterable");
  }
}

int64_t length(const Value& v, int line) {
  switch (v.k) {
    case Value::K::kUndefined: return 0;
    case Value::K::kStr: return int64_t(chars_of(v.s).size());
    case Value::K::kList: return int64_t(v.list->size());
    case Value::K::kDict: return int64_t(v.dict->items.size());
    default: render_error(line, repr(v) + " has no length");
  }
}

// ---------------------------------------------------------------------------------------------
// Expression syntax

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class T {
    kLiteral, kName, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNeg, kPos, kNot, kAnd, kOr, kBin, kCond, kList, kDict
  } t;
  int line = 0;
  Value lit;                    // kLiteral
  std::string name;             // kName, kAttr, kFilter, kTest, kBin (operator)
  ExprP a, b, c, d;             // operands; kSlice: object, start, stop, step; kCond: then, cond, else
  std::vector<ExprP> args;      // kCall, kFilter, kTest arguments; kList items; kDict keys/values alternating
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negated = false;         // kTest: `is not`
};

struct Tok {
  enum class T { kName, kStr, kInt, kFloat, kOp, kEnd } t;
  std::string s;
  int64_t i = 0;
  double f = 0;
};

std::vector<Tok> lex_expr(std::string_view src, int line) {
  std::vector<Tok> out;
  size_t p = 0;
  while (p < src.size()) {
    const char c = src[p];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++p;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = p;
      while (e < src.size() && (std::isalnum(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
      out.push_back({Tok::T::kName, std::string(src.substr(p, e - p))});
      p = e;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t e = p;
      bool fl = false;
      while (e < src.size() && (std::isdigit(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
      if (e + 1 < src.size() && src[e] == '.' && std::isdigit(static_cast<unsigned char>(src[e + 1]))) {
        fl = true;
        ++e;
        while (e < src.size() && std::isdigit(static_cast<unsigned char>(src[e]))) ++e;
      }
      if (e < src.size() && (src[e] == 'e' || src[e] == 'E')) {
        size_t x = e + 1;
        if (x < src.size() && (src[x] == '+' || src[x] == '-')) ++x;
        if (x < src.size() && std::isdigit(static_cast<unsigned char>(src[x]))) {
          fl = true;
          e = x;
          while (e < src.size() && std::isdigit(static_cast<unsigned char>(src[e]))) ++e;
        }
      }
      std::string num(src.substr(p, e - p));
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      Tok t{fl ? Tok::T::kFloat : Tok::T::kInt, num};
      if (fl) t.f = std::strtod(num.c_str(), nullptr);
      else t.i = std::strtoll(num.c_str(), nullptr, 10);
      out.push_back(t);
      p = e;
      continue;
    }
    if (c == '\'' || c == '"') {
      std::string s;
      size_t e = p + 1;
      for (; e < src.size() && src[e] != c; ++e) {
        if (src[e] == '\\' && e + 1 < src.size()) {
          const char n = src[++e];
          switch (n) {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case '\\': s += '\\'; break;
            case '\'': s += '\''; break;
            case '"': s += '"'; break;
            case '0': s += '\0'; break;
            case 'b': s += '\b'; break;
            case 'f': s += '\f'; break;
            default: s += '\\'; s += n;
          }
        } else {
          s += src[e];
        }
      }
      if (e >= src.size()) parse_error(line, "unterminated string");
      out.push_back({Tok::T::kStr, s});
      p = e + 1;
      continue;
    }
    static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=",
                                "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
    bool found = false;
    for (const char* op : ops) {
      const size_t n = std::strlen(op);
      if (src.substr(p, n) == op) {
        out.push_back({Tok::T::kOp, op});
        p += n;
        found = true;
        break;
      }
    }
    if (!found) parse_error(line, std::string("unexpected character '") + c + "'");
  }
  out.push_back({Tok::T::kEnd, ""});
  return out;
}

class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, int line) : t_(std::move(toks)), line_(line) {}

  const Tok& peek(size_t ahead = 0) const { return t_[std::min(p_ + ahead, t_.size() - 1)]; }
  bool at_end() const { return peek().t == Tok::T::kEnd; }
  bool is_op(const char* op, size_t ahead = 0) const { return peek(ahead).t == Tok::T::kOp && peek(ahead).s == op; }
  bool is_name(const char* n, size_t ahead = 0) const { return peek(ahead).t == Tok::T::kName && peek(ahead).s == n; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    ++p_;
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    ++p_;
    return true;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) parse_error(line_, std::string("expected '") + op + "', found '" + peek().s + "'");
  }
  std::string expect_name() {
    if (peek().t != Tok::T::kName) parse_error(line_, "expected a name, found '" + peek().s + "'");
    return t_[p_++].s;
  }
  void expect_end() {
    if (!at_end()) parse_error(line_, "unexpected '" + peek().s + "'");
  }

  ExprP node(Expr::T t) {
    auto e = std::make_unique<Expr>();
    e->t = t;
    e->line = line_;
    return e;
  }

  // A full expression, with an unparenthesized tuple when `tuple` ("a, b").
  ExprP expression(bool tuple = false) {
    ExprP e = ternary();
    if (!tuple || !is_op(",")) return e;
    ExprP l = node(Expr::T::kList);
    l->args.push_back(std::move(e));
    while (accept_op(",")) {
      if (at_end() || is_op(")")) break;
      l->args.push_back(ternary());
    }
    return l;
  }

  ExprP ternary() {
    ExprP e = or_expr();
    while (accept_name("if")) {
      ExprP c = node(Expr::T::kCond);
      c->b = or_expr();
      c->a = std::move(e);
      if (accept_name("else")) c->c = ternary();
      e = std::move(c);
    }
    return e;
  }
  ExprP or_expr() {
    ExprP e = and_expr();
    while (accept_name("or")) {
      ExprP o = node(Expr::T::kOr);
      o->a = std::move(e);
      o->b = and_expr();
      e = std::move(o);
    }
    return e;
  }
  ExprP and_expr() {
    ExprP e = not_expr();
    while (accept_name("and")) {
      ExprP o = node(Expr::T::kAnd);
      o->a = std::move(e);
      o->b = not_expr();
      e = std::move(o);
    }
    return e;
  }
  ExprP not_expr() {
    if (is_name("not") && !is_name("in", 1)) {
      ++p_;
      ExprP n = node(Expr::T::kNot);
      n->a = not_expr();
      return n;
    }
    return compare();
  }
  ExprP compare() {
    ExprP e = concat();
    for (;;) {
      std::string op;
      if (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">=")) {
        op = t_[p_++].s;
      } else if (accept_name("in")) {
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        p_ += 2;
        op = "not in";
      } else {
        return e;
      }
      ExprP b = node(Expr::T::kBin);
      b->name = op;
      b->a = std::move(e);
      b->b = concat();
      e = std::move(b);
    }
  }
  ExprP binary_chain(ExprP (ExprParser::*next)(), std::initializer_list<const char*> ops) {
    ExprP e = (this->*next)();
    for (;;) {
      const char* hit = nullptr;
      for (const char* op : ops) {
        if (is_op(op)) hit = op;
      }
      if (!hit) return e;
      ExprP b = node(Expr::T::kBin);
      b->name = t_[p_++].s;
      b->a = std::move(e);
      b->b = (this->*next)();
      e = std::move(b);
    }
  }
  ExprP concat() { return binary_chain(&ExprParser::math1, {"~"}); }
  ExprP math1() { return binary_chain(&ExprParser::math2, {"+", "-"}); }
  ExprP math2() { return binary_chain(&ExprParser::power, {"*", "/", "//", "%"}); }
  ExprP power() { return binary_chain(&ExprParser::unary, {"**"}); }
  ExprP unary() {
    if (accept_op("-")) {
      ExprP n = node(Expr::T::kNeg);
      n->a = unary();
      return n;
    }
    if (accept_op("+")) {
      ExprP n = node(Expr::T::kPos);
      n->a = unary();
      return n;
    }
    return filters(postfix(primary()));
  }

  void call_args(std::vector<ExprP>& args, std::vector<std::pair<std::string, ExprP>>& kwargs) {
    // after '('
    while (!accept_op(")")) {
      if (peek().t == Tok::T::kName && is_op("=", 1)) {
        std::string k = t_[p_].s;
        p_ += 2;
        kwargs.emplace_back(std::move(k), ternary());
      } else {
        args.push_back(ternary());
      }
      if (!accept_op(",")) {
        expect_op(")");
        break;
      }
    }
  }

  ExprP filters(ExprP e) {
    for (;;) {
      if (accept_op("|")) {
        ExprP f = node(Expr::T::kFilter);
        f->name = expect_name();
        while (accept_op(".")) {
          f->name += '.';
          f->name += expect_name();
        }
        if (accept_op("(")) call_args(f->args, f->kwargs);
        f->a = std::move(e);
        e = std::move(f);
      } else if (accept_name("is")) {
        ExprP t = node(Expr::T::kTest);
        t->negated = accept_name("not");
        t->name = expect_name();
        if (accept_op("(")) {
          call_args(t->args, t->kwargs);
        } else if ((peek().t == Tok::T::kStr || peek().t == Tok::T::kInt || peek().t == Tok::T::kFloat ||
                    (peek().t == Tok::T::kName && !is_name("else") && !is_name("and") && !is_name("or") && !is_name("if") &&
                     !is_name("in") && !is_name("is") && !is_name("not")) ||
                    is_op("[") || is_op("{"))) {
          t->args.push_back(postfix(primary()));
        }
        t->a = std::move(e);
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  ExprP postfix(ExprP e) {
    for (;;) {
      if (accept_op(".")) {
        ExprP a = node(Expr::T::kAttr);
        if (peek().t == Tok::T::kInt) {  // x.0 is x[0]
          a->t = Expr::T::kItem;
          ExprP k = node(Expr::T::kLiteral);
          k->lit = Value::integer(t_[p_++].i);
          a->b = std::move(k);
        } else {
          a->name = expect_name();
        }
        a->a = std::move(e);
        e = std::move(a);
      } else if (accept_op("[")) {
        ExprP start, stop, step;
        bool slice = false;
        if (!is_op(":")) start = expression();
        if (accept_op(":")) {
          slice = true;
          if (!is_op(":") && !is_op("]")) stop = expression();
          if (accept_op(":") && !is_op("]")) step = expression();
        }
        expect_op("]");
        ExprP s = node(slice ? Expr::T::kSlice : Expr::T::kItem);
        s->a = std::move(e);
        s->b = std::move(start);
        s->c = std::move(stop);
        s->d = std::move(step);
        e = std::move(s);
      } else if (accept_op("(")) {
        ExprP c = node(Expr::T::kCall);
        call_args(c->args, c->kwargs);
        c->a = std::move(e);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprP primary() {
    const Tok& k = peek();
    if (k.t == Tok::T::kStr) {
      std::string s = k.s;
      ++p_;
      while (peek().t == Tok::T::kStr) s += t_[p_++].s;  // adjacent literals concatenate
      ExprP e = node(Expr::T::kLiteral);
      e->lit = Value::str(std::move(s));
      return e;
    }
    if (k.t == Tok::T::kInt || k.t == Tok::T::kFloat) {
      ExprP e = node(Expr::T::kLiteral);
      e->lit = k.t == Tok::T::kInt ? Value::integer(k.i) : Value::real(k.f);
      ++p_;
      return e;
    }
    if (k.t == Tok::T::kName) {
      const std::string n = k.s;
      ++p_;
      ExprP e = node(Expr::T::kLiteral);
      if (n == "true" || n == "True") e->lit = Value::boolean(true);
      else if (n == "false" || n == "False") e->lit = Value::boolean(false);
      else if (n == "none" || n == "None") e->lit = Value::none();
      else {
        e->t = Expr::T::kName;
        e->name = n;
      }
      return e;
    }
    if (accept_op("(")) {
      if (accept_op(")")) return node(Expr::T::kList);  // ()
      ExprP e = expression();
      if (is_op(",")) {
        ExprP l = node(Expr::T::kList);
        l->args.push_back(std::move(e));
        while (accept_op(",")) {
          if (is_op(")")) break;
          l->args.push_back(expression());
        }
        e = std::move(l);
      }
      expect_op(")");
      return e;
    }
    if (accept_op("[")) {
      ExprP l = node(Expr::T::kList);
      while (!accept_op("]")) {
        l->args.push_back(expression());
        if (!accept_op(",")) {
          expect_op("]");
          break;
        }
      }
      return l;
    }
    if (accept_op("{")) {
      ExprP d = node(Expr::T::kDict);
      while (!accept_op("}")) {
        d->args.push_back(expression());
        expect_op(":");
        d->args.push_back(expression());
        if (!accept_op(",")) {
          expect_op("}");
          break;
        }
      }
      return d;
    }
    parse_error(line_, k.t == Tok::T::kEnd ? "unexpected end of expression" : "unexpected '" + k.s + "'");
  }

  std::vector<Tok> t_;
  size_t p_ = 0;
  int line_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Statements

struct Node {
  enum class T { kBody, kText, kOut, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kFilterBlock } t = T::kBody;
  int line = 0;
  std::string text;                     // kText; kSet/kSetBlock/kMacro: the name; kFilterBlock: the filter
  std::vector<std::string> targets;     // kFor, kSet: names; kSet with attr: {ns, attr}
  bool attr = false;                    // kSet: ns.attr = ...
  ExprP expr;                           // kOut, kFor (iterable), kSet (value)
  ExprP cond;                           // kFor: `if` filter
  std::vector<std::pair<ExprP, std::vector<std::shared_ptr<Node>>>> branches;  // kIf: (cond or null, body)
  std::vector<std::shared_ptr<Node>> body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // kMacro: names with defaults (null: none)
};

namespace {

using NodeP = std::shared_ptr<Node>;

struct Piece {
  enum class T { kText, kOut, kStmt } t;
  std::string s;
  int line;
};

std::vector<Piece> scan(std::string_view source) {
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();  // keep_trailing_newline off

  std::vector<Piece> out;
  size_t pos = 0;
  int line = 1;
  auto count_lines = [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) line += src[i] == '\n';
  };
  bool strip_next = false;  // the previous tag ended with '-'
  while (pos <= src.size()) {
    size_t open = pos;
    for (;;) {
      open = src.find('{', open);
      if (open == std::string::npos || open + 1 >= src.size()) {
        open = std::string::npos;
        break;
      }
      const char k = src[open + 1];
      if (k == '{' || k == '%' || k == '#') break;
      ++open;
    }
    std::string text = src.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    if (strip_next) {
      const size_t b = text.find_first_not_of(" \t\n\r\f\v");
      text = b == std::string::npos ? "" : text.substr(b);
    }
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Piece::T::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    size_t inner = open + 2;
    const char mod = inner < src.size() ? src[inner] : 0;
    if (mod == '-') {
      const size_t e = text.find_last_not_of(" \t\n\r\f\v");
      text = e == std::string::npos ? "" : text.substr(0, e + 1);
      ++inner;
    } else if (mod == '+') {
      ++inner;
    } else if (kind != '{') {
      // lstrip_blocks: spaces and tabs between the line's start and a block or comment tag.
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      const bool line_start = nl != std::string::npos || pos == 0 || src[pos - 1] == '\n';
      if (line_start && text.find_first_not_of(" \t", l_pos) == std::string::npos) text.resize(l_pos);
    }
    if (!text.empty()) out.push_back({Piece::T::kText, text, line});
    count_lines(pos, open);
    const int tag_line = line;
    // The tag's end, outside string literals (comments: the first "#}").
    const char close = kind == '{' ? '}' : kind;
    size_t end = inner;
    char quote = 0;
    for (; end + 1 < src.size(); ++end) {
      const char ch = src[end];
      if (kind != '#' && quote) {
        if (ch == '\\') ++end;
        else if (ch == quote) quote = 0;
        continue;
      }
      if (kind != '#' && (ch == '\'' || ch == '"')) {
        quote = ch;
        continue;
      }
      if (ch == close && src[end + 1] == '}') break;
    }
    if (end + 1 >= src.size()) parse_error(tag_line, std::string("unclosed '{") + kind + "'");
    size_t body_end = end;
    bool strip_after = false, keep_newline = false;
    if (body_end > inner && src[body_end - 1] == '-') {
      strip_after = true;
      --body_end;
    } else if (body_end > inner && src[body_end - 1] == '+' && kind != '{') {
      keep_newline = true;
      --body_end;
    }
    std::string body = src.substr(inner, body_end - inner);
    size_t next = end + 2;
    count_lines(open, next);
    if (kind == '%') {
      // {% raw %} ... {% endraw %}: the text between, verbatim.
      std::string word = body;
      const size_t b = word.find_first_not_of(" \t\n");
      const size_t e = word.find_last_not_of(" \t\n");
      word = b == std::string::npos ? "" : word.substr(b, e - b + 1);
      if (word == "raw") {
        size_t r = next;
        size_t found = std::string::npos, after = 0;
        while ((r = src.find("{%", r)) != std::string::npos) {
          size_t q = r + 2;
          if (q < src.size() && (src[q] == '-' || src[q] == '+')) ++q;
          while (q < src.size() && std::isspace(static_cast<unsigned char>(src[q]))) ++q;
          if (src.compare(q, 6, "endraw") == 0) {
            const size_t c = src.find("%}", q);
            if (c == std::string::npos) break;
            found = r;
            after = c + 2;
            break;
          }
          r += 2;
        }
        if (found == std::string::npos) parse_error(tag_line, "{% raw %} without {% endraw %}");
        std::string raw = src.substr(next, found - next);
        if (!strip_after && !keep_newline && !raw.empty() && raw[0] == '\n') raw.erase(0, 1);
        if (strip_after) {
          const size_t b2 = raw.find_first_not_of(" \t\n\r\f\v");
          raw = b2 == std::string::npos ? "" : raw.substr(b2);
        }
        if (src[found + 2] == '-') {
          const size_t e2 = raw.find_last_not_of(" \t\n\r\f\v");
          raw = e2 == std::string::npos ? "" : raw.substr(0, e2 + 1);
        }
        if (!raw.empty()) out.push_back({Piece::T::kText, raw, line});
        count_lines(next, after);
        next = after;
        strip_next = src[after - 3] == '-';
        if (!strip_next && next < src.size() && src[next] == '\n') {
          ++next;
          ++line;
        }
        pos = next;
        continue;
      }
    }
    if (kind == '{') out.push_back({Piece::T::kOut, body, tag_line});
    else if (kind == '%') out.push_back({Piece::T::kStmt, body, tag_line});
    strip_next = strip_after;
    if (kind != '{' && !strip_after && !keep_newline && next < src.size() && src[next] == '\n') {  // trim_blocks
      ++next;
      ++line;
    }
    pos = next;
    if (pos == src.size()) break;
  }
  return out;
}

class Parser {
 public:
  explicit Parser(std::vector<Piece> pieces) : p_(std::move(pieces)) {}

  std::vector<NodeP> parse_all() {
    std::string end;
    std::vector<NodeP> body = parse_body({}, &end);
    return body;
  }

 private:
  // Parses until one of `ends` (a statement keyword); *found receives it ("" at the end).
  std::vector<NodeP> parse_body(std::initializer_list<const char*> ends, std::string* found) {
    std::vector<NodeP> out;
    while (i_ < p_.size()) {
      const Piece& pc = p_[i_];
      if (pc.t == Piece::T::kText) {
        auto n = std::make_shared<Node>();
        n->t = Node::T::kText;
        n->text = pc.s;
        n->line = pc.line;
        out.push_back(n);
        ++i_;
        continue;
      }
      if (pc.t == Piece::T::kOut) {
        ExprParser ep(lex_expr(pc.s, pc.line), pc.line);
        auto n = std::make_shared<Node>();
        n->t = Node::T::kOut;
        n->line = pc.line;
        n->expr = ep.expression(true);
        ep.expect_end();
        out.push_back(n);
        ++i_;
        continue;
      }
      ExprParser ep(lex_expr(pc.s, pc.line), pc.line);
      const std::string kw = ep.peek().t == Tok::T::kName ? ep.peek().s : "";
      for (const char* e : ends) {
        if (kw == e) {
          *found = kw;
          return out;
        }
      }
      ++i_;
      ep.p_++;
      out.push_back(statement(kw, ep, pc.line));
    }
    if (ends.size()) parse_error(p_.empty() ? 1 : p_.back().line, std::string("missing {% ") + *(ends.end() - 1) + " %}");
    *found = "";
    return out;
  }

  // The current piece is the end tag found: consume it (it must hold nothing else).
  void close_tag() {
    ExprParser ep(lex_expr(p_[i_].s, p_[i_].line), p_[i_].line);
    ep.p_++;
    ep.expect_end();
    ++i_;
  }

  NodeP statement(const std::string& kw, ExprParser& ep, int line) {
    auto n = std::make_shared<Node>();
    n->line = line;
    std::string found;
    if (kw == "if") {
      n->t = Node::T::kIf;
      ExprP cond = ep.expression(true);
      ep.expect_end();
      for (;;) {
        std::vector<NodeP> body = parse_body({"elif", "else", "endif"}, &found);
        n->branches.emplace_back(std::move(cond), std::move(body));
        if (found == "endif") {
          close_tag();
          break;
        }
        ExprParser e2(lex_expr(p_[i_].s, p_[i_].line), p_[i_].line);
        e2.p_++;
        ++i_;
        if (found == "elif") {
          cond = e2.expression(true);
          e2.expect_end();
        } else {
          e2.expect_end();
          n->branches.emplace_back(nullptr, parse_body({"endif"}, &found));
          close_tag();
          break;
        }
      }
    } else if (kw == "for") {
      n->t = Node::T::kFor;
      n->targets.push_back(ep.expect_name());
      while (ep.accept_op(",")) n->targets.push_back(ep.expect_name());
      if (!ep.accept_name("in")) parse_error(line, "expected 'in' in for");
      n->expr = ep.or_expr();
      if (ep.is_op(",")) {  // for x in a, b
        ExprP l = ep.node(Expr::T::kList);
        l->args.push_back(std::move(n->expr));
        while (ep.accept_op(",")) l->args.push_back(ep.or_expr());
        n->expr = std::move(l);
      }
      if (ep.accept_name("if")) n->cond = ep.expression();
      ep.accept_name("recursive");
      ep.expect_end();
      n->body = parse_body({"else", "endfor"}, &found);
      if (found == "else") {
        close_tag();
        n->else_body = parse_body({"endfor"}, &found);
      }
      close_tag();
    } else if (kw == "set") {
      std::string first = ep.expect_name();
      if (ep.accept_op(".")) {
        n->attr = true;
        n->targets = {first, ep.expect_name()};
      } else {
        n->targets.push_back(first);
        while (ep.accept_op(",")) n->targets.push_back(ep.expect_name());
      }
      if (ep.accept_op("=")) {
        n->t = Node::T::kSet;
        n->expr = ep.expression(true);
        ep.expect_end();
      } else {
        // {% set x %}...{% endset %}, optionally through filters: {% set x | trim %}.
        n->t = Node::T::kSetBlock;
        if (n->attr || n->targets.size() != 1) parse_error(line, "a block set takes one name");
        if (!ep.at_end()) {
          ExprP dummy = ep.node(Expr::T::kLiteral);
          n->expr = ep.filters(std::move(dummy));
        }
        ep.expect_end();
        n->body = parse_body({"endset"}, &found);
        close_tag();
      }
    } else if (kw == "macro") {
      n->t = Node::T::kMacro;
      n->text = ep.expect_name();
      ep.expect_op("(");
      while (!ep.accept_op(")")) {
        std::string p = ep.expect_name();
        ExprP def;
        if (ep.accept_op("=")) def = ep.ternary();
        n->params.emplace_back(std::move(p), std::move(def));
        if (!ep.accept_op(",")) {
          ep.expect_op(")");
          break;
        }
      }
      ep.expect_end();
      n->body = parse_body({"endmacro"}, &found);
      close_tag();
    } else if (kw == "break" || kw == "continue") {
      n->t = kw == "break" ? Node::T::kBreak : Node::T::kContinue;
      ep.expect_end();
    } else if (kw == "generation") {  // transformers' AssistantTracker: renders its body
      ep.expect_end();
      n->t = Node::T::kBody;
      n->body = parse_body({"endgeneration"}, &found);
      close_tag();
    } else if (kw == "filter") {
      n->t = Node::T::kFilterBlock;
      // "name(args) | name2 ...": the chain of filters applied to the body's text.
      ep.t_.insert(ep.t_.begin() + long(ep.p_), Tok{Tok::T::kOp, "|"});
      n->expr = ep.filters(ep.node(Expr::T::kLiteral));
      ep.expect_end();
      n->body = parse_body({"endfilter"}, &found);
      close_tag();
    } else if (kw == "do") {
      n->t = Node::T::kSet;  // evaluated, result dropped
      n->expr = ep.expression(true);
      ep.expect_end();
    } else {
      parse_error(line, kw.empty() ? "empty statement" : "unknown statement '" + kw + "'");
    }
    return n;
  }

  std::vector<Piece> p_;
  size_t i_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Rendering

struct Scope {
  std::map<std::string, Value> vars;
  Scope* parent = nullptr;
  const Value* find(const std::string& n) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->vars.find(n);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

struct Ctx {
  Scope* scope;
  Scope* root;
  std::string* out;
  int depth = 0;
  std::tm now{};
  int64_t steps = 0;
};

namespace {

enum class Flow { kNormal, kBreak, kContinue };

Value eval(const Expr& e, Ctx& c);
Flow exec(const std::vector<NodeP>& body, Ctx& c);

void charge(Ctx& c, int64_t n, int line) {
  c.steps += n;
  if (c.steps > kMaxSteps) render_error(line, "the template does more than " + std::to_string(kMaxSteps) + " steps of work (runaway loop?)");
}

// What a value costs to have built: its elements or bytes.
int64_t size_cost(const Value& v) {
  if (v.k == Value::K::kList) return int64_t(v.list->size());
  if (v.k == Value::K::kStr) return int64_t(v.s.size() / 16);
  if (v.k == Value::K::kDict) return int64_t(v.dict->items.size());
  return 0;
}

struct DepthGuard {
  Ctx& c;
  DepthGuard(Ctx& ctx, int line) : c(ctx) {
    if (++c.depth > kMaxDepth) render_error(line, "nesting deeper than " + std::to_string(kMaxDepth) + " (runaway recursion?)");
    charge(c, 1, line);
  }
  ~DepthGuard() { --c.depth; }
};

int64_t to_int(const Value& v, int line) {
  if (v.k == Value::K::kInt) return v.i;
  if (v.k == Value::K::kBool) return v.b;
  if (v.k == Value::K::kFloat) return int64_t(v.f);
  render_error(line, repr(v) + " is not an integer");
}

Value str_method(const std::string& s, const std::string& name, int line);
Value dict_method(const Value& d, const std::string& name, int line);

// Jinja's getattr: attributes first (methods), then items.
Value get_attr(const Value& obj, const std::string& name, int line) {
  switch (obj.k) {
    case Value::K::kUndefined: render_error(line, "'" + obj.s + "' is undefined (reading ." + name + ")");
    case Value::K::kDict: {
      if (obj.ns) {
        const Value* v = obj.dict->find(name);
        return v ? *v : Value::undefined(name);
      }
      Value m = dict_method(obj, name, line);
      if (!m.undef()) return m;
      const Value* v = obj.dict->find(name);
      return v ? *v : Value::undefined(name);
    }
    case Value::K::kStr: return str_method(obj.s, name, line);
    default: return Value::undefined(name);
  }
}

Value get_item(const Value& obj, const Value& key, int line) {
  switch (obj.k) {
    case Value::K::kUndefined: render_error(line, "'" + obj.s + "' is undefined (reading [" + repr(key) + "])");
    case Value::K::kDict: {
      if (key.is_str()) {
        const Value* v = obj.dict->find(key.s);
        if (v) return *v;
        return obj.ns ? Value::undefined(key.s) : dict_method(obj, key.s, line);
      }
      const Value* v = obj.dict->find(to_str(key));
      return v ? *v : Value::undefined(to_str(key));
    }
    case Value::K::kList:
    case Value::K::kStr: {
      if (key.is_str()) return obj.is_str() ? str_method(obj.s, key.s, line) : Value::undefined(key.s);
      if (!key.is_num() || key.k == Value::K::kFloat) return Value::undefined(repr(key));
      int64_t i = to_int(key, line);
      if (obj.k == Value::K::kList) {
        const int64_t n = int64_t(obj.list->size());
        if (i < 0) i += n;
        return i >= 0 && i < n ? (*obj.list)[size_t(i)] : Value::undefined("[" + std::to_string(i) + "]");
      }
      const std::vector<std::string> ch = chars_of(obj.s);
      const int64_t n = int64_t(ch.size());
      if (i < 0) i += n;
      return i >= 0 && i < n ? Value::str(ch[size_t(i)]) : Value::undefined("[" + std::to_string(i) + "]");
    }
    default: return Value::undefined(repr(key));
  }
}

Value slice(const Value& obj, const std::optional<int64_t>& a, const std::optional<int64_t>& b, const std::optional<int64_t>& st,
            int line) {
  const int64_t step = st.value_or(1);
  if (step == 0) render_error(line, "slice step cannot be zero");
  List items;
  std::vector<std::string> ch;
  if (obj.is_str()) {
    ch = chars_of(obj.s);
  } else if (obj.k == Value::K::kList) {
    items = *obj.list;
  } else {
    render_error(line, repr(obj) + " cannot be sliced");
  }
  const int64_t n = obj.is_str() ? int64_t(ch.size()) : int64_t(items.size());
  auto clamp = [&](std::optional<int64_t> v, int64_t def_pos, int64_t def_neg) {
    if (!v) return step > 0 ? def_pos : def_neg;
    int64_t x = *v;
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t lo = clamp(a, 0, n - 1), hi = clamp(b, n, -1);
  std::string s;
  List l;
  for (int64_t i = lo; step > 0 ? i < hi : i > hi; i += step) {
    if (obj.is_str()) s += ch[size_t(i)];
    else l.push_back(items[size_t(i)]);
  }
  return obj.is_str() ? Value::str(s) : Value::of_list(std::move(l));
}

std::string strip_chars(const std::string& s, const std::optional<Value>& chars, bool left, bool right) {
  const std::string set = chars && chars->is_str() ? chars->s : std::string(" \t\n\r\f\v");
  size_t b = 0, e = s.size();
  if (left) {
    while (b < e && set.find(s[b]) != std::string::npos) ++b;
  }
  if (right) {
    while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
  }
  return s.substr(b, e - b);
}

std::string lower(std::string s) {
  for (char& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}
std::string upper(std::string s) {
  for (char& ch : s) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}
std::string title(const std::string& s) {
  std::string o = s;
  bool start = true;
  for (char& ch : o) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(ch));
    ch = alpha ? char(start ? std::toupper(static_cast<unsigned char>(ch)) : std::tolower(static_cast<unsigned char>(ch))) : ch;
    start = !alpha && !std::isdigit(static_cast<unsigned char>(ch));
  }
  return o;
}
std::string capitalize(const std::string& s) {
  std::string o = lower(s);
  if (!o.empty()) o[0] = char(std::toupper(static_cast<unsigned char>(o[0])));
  return o;
}

std::vector<std::string> split(const std::string& s, const std::optional<Value>& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->k == Value::K::kNone) {
    size_t i = 0;
    while (i < s.size()) {
      while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
      if (i >= s.size()) break;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        size_t e = s.size();
        while (e > i && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
        out.push_back(s.substr(i, e - i));
        break;
      }
      size_t e = i;
      while (e < s.size() && !std::isspace(static_cast<unsigned char>(s[e]))) ++e;
      out.push_back(s.substr(i, e - i));
      i = e;
    }
    return out;
  }
  const std::string d = sep->s;
  if (d.empty()) throw Error(ErrorCode::kInvalidArgument, "chat template: split() with an empty separator");
  size_t i = 0;
  for (;;) {
    if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) break;
    const size_t at = s.find(d, i);
    if (at == std::string::npos) break;
    out.push_back(s.substr(i, at - i));
    i = at + d.size();
  }
  out.push_back(s.substr(i));
  return out;
}

Value str_list(const std::vector<std::string>& v) {
  List l;
  for (const std::string& s : v) l.push_back(Value::str(s));
  return Value::of_list(std::move(l));
}

bool starts_or_ends(const std::string& s, const Value& arg, bool start) {
  auto one = [&](const std::string& p) {
    return p.size() <= s.size() && (start ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0);
  };
  if (arg.k == Value::K::kList) {
    for (const Value& v : *arg.list) {
      if (v.is_str() && one(v.s)) return true;
    }
    return false;
  }
  return arg.is_str() && one(arg.s);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {
    std::string o;
    int64_t n = 0;
    for (const std::string& ch : chars_of(s)) {
      if (count < 0 || n < count) {
        o += to;
        ++n;
      }
      o += ch;
    }
    if (count < 0 || n < count) o += to;
    return o;
  }
  std::string o;
  size_t i = 0;
  int64_t n = 0;
  for (;;) {
    const size_t at = s.find(from, i);
    if (at == std::string::npos || (count >= 0 && n >= count)) break;
    o += s.substr(i, at - i) + to;
    i = at + from.size();
    ++n;
  }
  return o + s.substr(i);
}

Value str_method(const std::string& s, const std::string& name, int line) {
  auto m = [&](std::function<Value(Args&)> f) { return Value::func([f](Args& a, Ctx&) { return f(a); }); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return m([s, name](Args& a) { return Value::str(strip_chars(s, a.get(0, "chars"), name != "rstrip", name != "lstrip")); });
  }
  if (name == "upper") return m([s](Args&) { return Value::str(upper(s)); });
  if (name == "lower") return m([s](Args&) { return Value::str(lower(s)); });
  if (name == "title") return m([s](Args&) { return Value::str(title(s)); });
  if (name == "capitalize") return m([s](Args&) { return Value::str(capitalize(s)); });
  if (name == "startswith" || name == "endswith") {
    return m([s, name](Args& a) {
      const auto p = a.get(0, "prefix");
      return Value::boolean(p && starts_or_ends(s, *p, name == "startswith"));
    });
  }
  if (name == "split" || name == "rsplit") {
    return m([s, line](Args& a) {
      const auto mx = a.get(1, "maxsplit");
      return str_list(split(s, a.get(0, "sep"), mx ? to_int(*mx, line) : -1));
    });
  }
  if (name == "splitlines") return m([s](Args&) { return str_list(split(s, Value::str("\n"), -1)); });
  if (name == "replace") {
    return m([s, line](Args& a) {
      const auto f = a.get(0, "old"), t = a.get(1, "new"), n = a.get(2, "count");
      if (!f || !t) render_error(line, "replace() needs two arguments");
      return Value::str(replace_all(s, to_str(*f), to_str(*t), n ? to_int(*n, line) : -1));
    });
  }
  if (name == "find") {
    return m([s](Args& a) {
      const auto p = a.get(0, "sub");
      const size_t at = p ? s.find(to_str(*p)) : std::string::npos;
      return Value::integer(at == std::string::npos ? -1 : int64_t(chars_of(s.substr(0, at)).size()));
    });
  }
  if (name == "count") {
    return m([s](Args& a) {
      const auto p = a.get(0, "sub");
      const std::string sub = p ? to_str(*p) : "";
      if (sub.empty()) return Value::integer(int64_t(chars_of(s).size()) + 1);
      int64_t n = 0;
      for (size_t i = s.find(sub); i != std::string::npos; i = s.find(sub, i + sub.size())) ++n;
      return Value::integer(n);
    });
  }
  if (name == "join") {
    return m([s, line](Args& a) {
      const auto l = a.get(0, "iterable");
      std::string o;
      if (l) {
        const List items = iterate(*l, line);
        for (size_t i = 0; i < items.size(); ++i) o += (i ? s : "") + to_str(items[i]);
      }
      return Value::str(o);
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum") {
    return m([s, name](Args&) {
      bool ok = !s.empty();
      for (unsigned char ch : s) {
        const bool r = name == "isdigit" ? std::isdigit(ch) : name == "isalpha" ? std::isalpha(ch) : name == "isspace" ? std::isspace(ch) : std::isalnum(ch);
        ok = ok && r;
      }
      return Value::boolean(ok);
    });
  }
  return Value::undefined(name);
}

Value dict_method(const Value& d, const std::string& name, int line) {
  (void)line;
  auto m = [&](std::function<Value(Args&)> f) { return Value::func([f](Args& a, Ctx&) { return f(a); }); };
  const std::shared_ptr<Dict> dict = d.dict;
  if (name == "items") {
    return m([dict](Args&) {
      List l;
      for (const auto& [k, v] : dict->items) l.push_back(Value::of_list({Value::str(k), v}));
      return Value::of_list(std::move(l));
    });
  }
  if (name == "keys") {
    return m([dict](Args&) {
      List l;
      for (const auto& kv : dict->items) l.push_back(Value::str(kv.first));
      return Value::of_list(std::move(l));
    });
  }
  if (name == "values") {
    return m([dict](Args&) {
      List l;
      for (const auto& kv : dict->items) l.push_back(kv.second);
      return Value::of_list(std::move(l));
    });
  }
  if (name == "get") {
    return m([dict](Args& a) {
      const auto k = a.get(0, "key");
      const Value* v = k ? dict->find(to_str(*k)) : nullptr;
      if (v) return *v;
      const auto def = a.get(1, "default");
      return def ? *def : Value::none();
    });
  }
  return Value::undefined(name);
}

bool run_test(const std::string& name, const Value& v, const std::vector<Value>& args, int line) {
  auto arg = [&](size_t i) -> const Value& {
    if (i >= args.size()) render_error(line, "test '" + name + "' needs an argument");
    return args[i];
  };
  if (name == "defined") return !v.undef();
  if (name == "undefined") return v.undef();
  if (name == "none") return v.k == Value::K::kNone;
  if (name == "boolean") return v.k == Value::K::kBool;
  if (name == "true") return v.k == Value::K::kBool && v.b;
  if (name == "false") return v.k == Value::K::kBool && !v.b;
  if (name == "integer") return v.k == Value::K::kInt;
  if (name == "float") return v.k == Value::K::kFloat;
  if (name == "number") return v.is_num();
  if (name == "string") return v.is_str();
  if (name == "mapping") return v.k == Value::K::kDict;
  if (name == "iterable") return v.k == Value::K::kList || v.k == Value::K::kDict || v.is_str() || v.undef();
  if (name == "sequence") return v.k == Value::K::kList || v.k == Value::K::kDict || v.is_str();
  if (name == "callable") return v.k == Value::K::kFunc;
  if (name == "eq" || name == "equalto" || name == "==") return equal(v, arg(0));
  if (name == "ne" || name == "!=") return !equal(v, arg(0));
  if (name == "sameas") {
    const Value& o = arg(0);
    if (v.k != o.k) return false;
    if (v.k == Value::K::kList) return v.list == o.list;
    if (v.k == Value::K::kDict) return v.dict == o.dict;
    return equal(v, o);
  }
  if (name == "lt" || name == "lessthan" || name == "<") return less(v, arg(0), line);
  if (name == "le" || name == "<=") return !less(arg(0), v, line);
  if (name == "gt" || name == "greaterthan" || name == ">") return less(arg(0), v, line);
  if (name == "ge" || name == ">=") return !less(v, arg(0), line);
  if (name == "in") {
    const Value& c = arg(0);
    if (c.is_str()) return c.s.find(to_str(v)) != std::string::npos;
    if (c.k == Value::K::kDict) return c.dict->find(to_str(v)) != nullptr;
    for (const Value& x : iterate(c, line)) {
      if (equal(x, v)) return true;
    }
    return false;
  }
  if (name == "divisibleby") return to_int(arg(0), line) != 0 && to_int(v, line) % to_int(arg(0), line) == 0;
  if (name == "even") return to_int(v, line) % 2 == 0;
  if (name == "odd") return to_int(v, line) % 2 != 0;
  if (name == "lower") return v.is_str() && lower(v.s) == v.s;
  if (name == "upper") return v.is_str() && upper(v.s) == v.s;
  render_error(line, "unknown test '" + name + "'");
}

Value binary(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "==") return Value::boolean(equal(a, b));
  if (op == "!=") return Value::boolean(!equal(a, b));
  if (op == "<") return Value::boolean(less(a, b, line));
  if (op == ">") return Value::boolean(less(b, a, line));
  if (op == "<=") return Value::boolean(!less(b, a, line));
  if (op == ">=") return Value::boolean(!less(a, b, line));
  if (op == "in" || op == "not in") {
    if (b.undef()) render_error(line, "'" + b.s + "' is undefined (testing 'in')");
    return Value::boolean(run_test("in", a, {b}, line) == (op == "in"));
  }
  if (op == "~") return Value::str(to_str(a) + to_str(b));
  if (a.undef() || b.undef()) render_error(line, "'" + (a.undef() ? a.s : b.s) + "' is undefined (in '" + op + "')");
  if (op == "+") {
    if (a.is_str() && b.is_str()) return Value::str(a.s + b.s);
    if (a.k == Value::K::kList && b.k == Value::K::kList) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::of_list(std::move(l));
    }
  }
  if (op == "*" && ((a.is_str() && b.k == Value::K::kInt) || (b.is_str() && a.k == Value::K::kInt))) {
    const std::string& s = a.is_str() ? a.s : b.s;
    const int64_t n = a.is_str() ? b.i : a.i;
    if (n > 0 && s.size() * size_t(n) > kMaxOutput) render_error(line, "string repetition too large");
    std::string o;
    for (int64_t i = 0; i < n; ++i) o += s;
    return Value::str(o);
  }
  if (!a.is_num() || !b.is_num()) render_error(line, "unsupported operand types for " + op + ": " + repr(a) + " and " + repr(b));
  const bool fl = a.k == Value::K::kFloat || b.k == Value::K::kFloat;
  const int64_t ai = a.k == Value::K::kBool ? a.b : a.i, bi = b.k == Value::K::kBool ? b.b : b.i;
  if (op == "+") return fl ? Value::real(a.num() + b.num()) : Value::integer(ai + bi);
  if (op == "-") return fl ? Value::real(a.num() - b.num()) : Value::integer(ai - bi);
  if (op == "*") return fl ? Value::real(a.num() * b.num()) : Value::integer(ai * bi);
  if (op == "/") {
    if (b.num() == 0) render_error(line, "division by zero");
    return Value::real(a.num() / b.num());
  }
  if (op == "//" || op == "%") {
    if (b.num() == 0) render_error(line, "division by zero");
    if (fl) {
      const double q = std::floor(a.num() / b.num());
      return op == "//" ? Value::real(q) : Value::real(a.num() - q * b.num());
    }
    int64_t q = ai / bi;
    if ((ai % bi != 0) && ((ai < 0) != (bi < 0))) --q;
    return op == "//" ? Value::integer(q) : Value::integer(ai - q * bi);
  }
  if (op == "**") {
    if (!fl && bi >= 0) {
      int64_t r = 1;
      for (int64_t i = 0; i < bi && i < 64; ++i) r *= ai;
      return Value::integer(r);
    }
    return Value::real(std::pow(a.num(), b.num()));
  }
  render_error(line, "unknown operator " + op);
}

Value call(const Value& f, Args& args, Ctx& c, int line) {
  if (f.k != Value::K::kFunc) {
    render_error(line, (f.undef() ? "'" + f.s + "' is undefined" : repr(f) + " is not callable") + " (called)");
  }
  args.line = line;
  return (*f.fn)(args, c);
}

Value attr_of(const Value& v, const std::string& path, int line) {
  Value r = v;
  size_t i = 0;
  while (i <= path.size()) {
    const size_t dot = path.find('.', i);
    const std::string part = path.substr(i, dot == std::string::npos ? std::string::npos : dot - i);
    r = get_attr(r, part, line);
    if (dot == std::string::npos) break;
    i = dot + 1;
  }
  return r;
}

Value apply_filter(const std::string& name, const Value& v, Args& a, Ctx& c, int line);

Value eval_args_and_filter(const Expr& e, const Value& v, Ctx& c) {
  Args a;
  for (const ExprP& x : e.args) a.pos.push_back(eval(*x, c));
  for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, eval(*x, c));
  a.line = e.line;
  return apply_filter(e.name, v, a, c, e.line);
}

List sorted(List items, bool reverse, bool case_sensitive, const std::string& attribute, int line) {
  auto key = [&](const Value& v) {
    Value k = attribute.empty() ? v : attr_of(v, attribute, line);
    if (k.is_str() && !case_sensitive) k.s = lower(k.s);
    return k;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    return reverse ? less(key(y), key(x), line) : less(key(x), key(y), line);
  });
  return items;
}

Value apply_filter(const std::string& name, const Value& v, Args& a, Ctx& c, int line) {
  auto flag = [&](size_t i, const char* n, bool def) {
    const auto x = a.get(i, n);
    return x ? truthy(*x) : def;
  };
  if (name == "trim") return Value::str(strip_chars(to_str(v), a.get(0, "chars"), true, true));
  if (name == "length" || name == "count") return Value::integer(length(v, line));
  if (name == "upper") return Value::str(upper(to_str(v)));
  if (name == "lower") return Value::str(lower(to_str(v)));
  if (name == "title") return Value::str(title(to_str(v)));
  if (name == "capitalize") return Value::str(capitalize(to_str(v)));
  if (name == "string") return Value::str(to_str(v));
  if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
    if (name == "safe") return v.is_str() ? v : Value::str(to_str(v));
    std::string o;
    for (char ch : to_str(v)) {
      switch (ch) {
        case '&': o += "&amp;"; break;
        case '<': o += "&lt;"; break;
        case '>': o += "&gt;"; break;
        case '"': o += "&#34;"; break;
        case '\'': o += "&#39;"; break;
        default: o += ch;
      }
    }
    return Value::str(o);
  }
  if (name == "default" || name == "d") {
    const auto def = a.get(0, "default_value");
    const bool boolean = flag(1, "boolean", false);
    if (v.undef() || (boolean && !truthy(v))) return def ? *def : Value::str("");
    return v;
  }
  if (name == "tojson") {
    const auto ind = a.get(1, "indent");  // transformers' tojson(x, ensure_ascii, indent, separators, sort_keys)
    std::string o;
    dump_json(v, ind && ind->k != Value::K::kNone ? int(to_int(*ind, line)) : -1, 0, flag(3, "sort_keys", false), o, line);
    return Value::str(o);
  }
  if (name == "join") {
    const auto sep = a.get(0, "d");
    const auto attr = a.get(1, "attribute");
    std::string o;
    const List items = iterate(v, line);
    for (size_t i = 0; i < items.size(); ++i) {
      o += (i && sep ? to_str(*sep) : "") + to_str(attr ? attr_of(items[i], to_str(*attr), line) : items[i]);
    }
    return Value::str(o);
  }
  if (name == "first" || name == "last") {
    const List items = iterate(v, line);
    if (items.empty()) return Value::undefined(name);
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::of_list(iterate(v, line));
  if (name == "reverse") {
    if (v.is_str()) {
      std::vector<std::string> ch = chars_of(v.s);
      std::string o;
      for (auto it = ch.rbegin(); it != ch.rend(); ++it) o += *it;
      return Value::str(o);
    }
    List items = iterate(v, line);
    std::reverse(items.begin(), items.end());
    return Value::of_list(std::move(items));
  }
  if (name == "items") {
    if (v.undef()) return Value::of_list({});
    if (v.k != Value::K::kDict) render_error(line, "items: " + repr(v) + " is not a mapping");
    Args none;
    return call(dict_method(v, "items", line), none, c, line);
  }
  if (name == "dictsort") {
    if (v.k != Value::K::kDict) render_error(line, "dictsort: " + repr(v) + " is not a mapping");
    List l;
    for (const auto& [k, x] : v.dict->items) l.push_back(Value::of_list({Value::str(k), x}));
    std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) { return lower((*x.list)[0].s) < lower((*y.list)[0].s); });
    return Value::of_list(std::move(l));
  }
  if (name == "sort") {
    const auto attr = a.get(2, "attribute");
    return Value::of_list(sorted(iterate(v, line), flag(0, "reverse", false), flag(1, "case_sensitive", false), attr ? to_str(*attr) : "", line));
  }
  if (name == "unique") {
    List out;
    for (const Value& x : iterate(v, line)) {
      bool seen = false;
      for (const Value& y : out) seen = seen || (x.is_str() && y.is_str() ? lower(x.s) == lower(y.s) : equal(x, y));
      if (!seen) out.push_back(x);
    }
    return Value::of_list(std::move(out));
  }
  if (name == "replace") {
    const auto f = a.get(0, "old"), t = a.get(1, "new"), n = a.get(2, "count");
    if (!f || !t) render_error(line, "replace needs two arguments");
    return Value::str(replace_all(to_str(v), to_str(*f), to_str(*t), n && n->k != Value::K::kNone ? to_int(*n, line) : -1));
  }
  if (name == "int") {
    if (v.is_str()) {
      int64_t x = 0;
      const std::string s = strip_chars(v.s, std::nullopt, true, true);
      const auto r = std::from_chars(s.data(), s.data() + s.size(), x);
      if (r.ec == std::errc() && r.ptr == s.data() + s.size()) return Value::integer(x);
      const auto def = a.get(0, "default");
      return def ? *def : Value::integer(0);
    }
    return v.is_num() ? Value::integer(to_int(v, line)) : Value::integer(0);
  }
  if (name == "float") {
    if (v.is_str()) {
      char* end = nullptr;
      const double x = std::strtod(v.s.c_str(), &end);
      return Value::real(end && *end == 0 && !v.s.empty() ? x : 0.0);
    }
    return Value::real(v.is_num() ? v.num() : 0.0);
  }
  if (name == "abs") {
    if (v.k == Value::K::kInt) return Value::integer(v.i < 0 ? -v.i : v.i);
    return Value::real(std::fabs(v.num()));
  }
  if (name == "round") {
    const auto p = a.get(0, "precision");
    const double m = std::pow(10.0, p ? double(to_int(*p, line)) : 0.0);
    return Value::real(std::round(v.num() * m) / m);
  }
  if (name == "sum") {
    Value acc = Value::integer(0);
    const auto attr = a.get(0, "attribute");
    for (const Value& x : iterate(v, line)) acc = binary("+", acc, attr ? attr_of(x, to_str(*attr), line) : x, line);
    return acc;
  }
  if (name == "min" || name == "max") {
    const List items = iterate(v, line);
    if (items.empty()) return Value::undefined(name);
    Value best = items[0];
    for (const Value& x : items) {
      if (name == "min" ? less(x, best, line) : less(best, x, line)) best = x;
    }
    return best;
  }
  if (name == "map") {
    List out;
    const auto attr = a.get(99, "attribute");
    if (attr) {
      const auto def = a.get(99, "default");
      for (const Value& x : iterate(v, line)) {
        Value r = attr_of(x, to_str(*attr), line);
        out.push_back(r.undef() && def ? *def : r);
      }
    } else {
      if (a.pos.empty()) render_error(line, "map needs a filter name or attribute=");
      const std::string f = to_str(a.pos[0]);
      Args rest;
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      rest.kw = a.kw;
      for (const Value& x : iterate(v, line)) out.push_back(apply_filter(f, x, rest, c, line));
    }
    return Value::of_list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    const bool by_attr = name.size() > 6;
    const bool keep = name[0] == 's';
    size_t at = 0;
    std::string attr;
    if (by_attr) {
      if (a.pos.empty()) render_error(line, name + " needs an attribute");
      attr = to_str(a.pos[at++]);
    }
    const std::string test = at < a.pos.size() ? to_str(a.pos[at++]) : "";
    const std::vector<Value> targs(a.pos.begin() + long(at), a.pos.end());
    List out;
    for (const Value& x : iterate(v, line)) {
      const Value probe = by_attr ? attr_of(x, attr, line) : x;
      const bool pass = test.empty() ? truthy(probe) : run_test(test, probe, targs, line);
      if (pass == keep) out.push_back(x);
    }
    return Value::of_list(std::move(out));
  }
  if (name == "indent") {
    const auto w = a.get(0, "width");
    const std::string pad = w && w->is_str() ? w->s : std::string(size_t(w ? to_int(*w, line) : 4), ' ');
    const bool first = flag(1, "first", false), blank = flag(2, "blank", false);
    std::vector<std::string> lines = split(to_str(v), Value::str("\n"), -1);
    std::string o;
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) o += "\n";
      if ((i > 0 || first) && (blank || !lines[i].empty())) o += pad;
      o += lines[i];
    }
    return Value::str(o);
  }
  if (name == "wordcount") return Value::integer(int64_t(split(to_str(v), std::nullopt, -1).size()));
  if (name == "batch" || name == "slice") render_error(line, "filter '" + name + "' is not supported");
  render_error(line, "unknown filter '" + name + "'");
}

Value eval(const Expr& e, Ctx& c) {
  DepthGuard g(c, e.line);
  switch (e.t) {
    case Expr::T::kLiteral: return e.lit;
    case Expr::T::kName: {
      const Value* v = c.scope->find(e.name);
      return v ? *v : Value::undefined(e.name);
    }
    case Expr::T::kAttr: return get_attr(eval(*e.a, c), e.name, e.line);
    case Expr::T::kItem: return get_item(eval(*e.a, c), eval(*e.b, c), e.line);
    case Expr::T::kSlice: {
      const Value obj = eval(*e.a, c);
      auto opt = [&](const ExprP& x) -> std::optional<int64_t> {
        if (!x) return std::nullopt;
        const Value v = eval(*x, c);
        if (v.k == Value::K::kNone) return std::nullopt;
        return to_int(v, e.line);
      };
      return slice(obj, opt(e.b), opt(e.c), opt(e.d), e.line);
    }
    case Expr::T::kCall: {
      const Value f = eval(*e.a, c);
      Args a;
      for (const ExprP& x : e.args) a.pos.push_back(eval(*x, c));
      for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, eval(*x, c));
      Value r = call(f, a, c, e.line);
      charge(c, size_cost(r), e.line);
      return r;
    }
    case Expr::T::kFilter: {
      Value r = eval_args_and_filter(e, eval(*e.a, c), c);
      charge(c, size_cost(r), e.line);
      return r;
    }
    case Expr::T::kTest: {
      const Value v = eval(*e.a, c);
      std::vector<Value> args;
      for (const ExprP& x : e.args) args.push_back(eval(*x, c));
      return Value::boolean(run_test(e.name, v, args, e.line) != e.negated);
    }
    case Expr::T::kNeg: {
      const Value v = eval(*e.a, c);
      if (!v.is_num()) render_error(e.line, "bad operand for unary -: " + repr(v));
      return v.k == Value::K::kFloat ? Value::real(-v.f) : Value::integer(-to_int(v, e.line));
    }
    case Expr::T::kPos: return eval(*e.a, c);
    case Expr::T::kNot: return Value::boolean(!truthy(eval(*e.a, c)));
    case Expr::T::kAnd: {
      Value a = eval(*e.a, c);
      return truthy(a) ? eval(*e.b, c) : a;
    }
    case Expr::T::kOr: {
      Value a = eval(*e.a, c);
      return truthy(a) ? a : eval(*e.b, c);
    }
    case Expr::T::kBin: {
      Value r = binary(e.name, eval(*e.a, c), eval(*e.b, c), e.line);
      charge(c, size_cost(r), e.line);
      return r;
    }
    case Expr::T::kCond:
      if (truthy(eval(*e.b, c))) return eval(*e.a, c);
      return e.c ? eval(*e.c, c) : Value::undefined("(if without else)");
    case Expr::T::kList: {
      List l;
      for (const ExprP& x : e.args) l.push_back(eval(*x, c));
      return Value::of_list(std::move(l));
    }
    case Expr::T::kDict: {
      auto d = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) d->set(to_str(eval(*e.args[i], c)), eval(*e.args[i + 1], c));
      return Value::of_dict(d);
    }
  }
  return Value::undefined("?");
}

void emit(Ctx& c, const std::string& s, int line) {
  if (c.out->size() + s.size() > kMaxOutput) render_error(line, "output larger than 64 MiB");
  *c.out += s;
}

void assign(Ctx& c, const std::vector<std::string>& targets, const Value& v, int line) {
  if (targets.size() == 1) {
    c.scope->vars[targets[0]] = v;
    return;
  }
  const List items = iterate(v, line);
  if (items.size() != targets.size()) {
    render_error(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
  }
  for (size_t i = 0; i < targets.size(); ++i) c.scope->vars[targets[i]] = items[i];
}

Flow exec_node(const Node& n, Ctx& c) {
  charge(c, 1, n.line);
  switch (n.t) {
    case Node::T::kBody: return exec(n.body, c);
    case Node::T::kText: emit(c, n.text, n.line); return Flow::kNormal;
    case Node::T::kOut: emit(c, to_str(eval(*n.expr, c)), n.line); return Flow::kNormal;
    case Node::T::kIf:
      for (const auto& [cond, body] : n.branches) {
        if (!cond || truthy(eval(*cond, c))) return exec(body, c);
      }
      return Flow::kNormal;
    case Node::T::kFor: {
      const Value seq = eval(*n.expr, c);
      List items = iterate(seq, n.line);
      Scope loop_scope;
      loop_scope.parent = c.scope;
      Scope* outer = c.scope;
      if (n.cond) {  // the `if` filter runs before loop.* are counted
        List kept;
        for (const Value& x : items) {
          c.scope = &loop_scope;
          assign(c, n.targets, x, n.line);
          const bool ok = truthy(eval(*n.cond, c));
          c.scope = outer;
          if (ok) kept.push_back(x);
        }
        items = std::move(kept);
      }
      const int64_t len = int64_t(items.size());
      Flow result = Flow::kNormal;
      charge(c, len, n.line);
      for (int64_t i = 0; i < len; ++i) {
        charge(c, 1, n.line);
        loop_scope.vars.clear();
        auto loop = std::make_shared<Dict>();
        loop->set("index", Value::integer(i + 1));
        loop->set("index0", Value::integer(i));
        loop->set("revindex", Value::integer(len - i));
        loop->set("revindex0", Value::integer(len - i - 1));
        loop->set("first", Value::boolean(i == 0));
        loop->set("last", Value::boolean(i == len - 1));
        loop->set("length", Value::integer(len));
        loop->set("depth", Value::integer(1));
        loop->set("depth0", Value::integer(0));
        loop->set("previtem", i > 0 ? items[size_t(i - 1)] : Value::undefined("loop.previtem"));
        loop->set("nextitem", i + 1 < len ? items[size_t(i + 1)] : Value::undefined("loop.nextitem"));
        loop->set("cycle", Value::func([i](Args& a, Ctx&) {
          if (a.pos.empty()) render_error(a.line, "loop.cycle() needs arguments");
          return a.pos[size_t(i) % a.pos.size()];
        }));
        Value lv = Value::of_dict(loop);
        lv.ns = true;  // attribute access reads keys
        loop_scope.vars["loop"] = lv;
        c.scope = &loop_scope;
        assign(c, n.targets, items[size_t(i)], n.line);
        const Flow f = exec(n.body, c);
        c.scope = outer;
        if (f == Flow::kBreak) break;
      }
      c.scope = outer;
      if (len == 0 && !n.else_body.empty()) result = exec(n.else_body, c);
      return result;
    }
    case Node::T::kSet: {
      const Value v = eval(*n.expr, c);
      if (n.targets.empty()) return Flow::kNormal;  // {% do %}
      if (n.attr) {
        const Value* ns = c.scope->find(n.targets[0]);
        if (!ns || ns->k != Value::K::kDict || !ns->ns) render_error(n.line, "'" + n.targets[0] + "' is not a namespace");
        ns->dict->set(n.targets[1], v);
      } else {
        assign(c, n.targets, v, n.line);
      }
      return Flow::kNormal;
    }
    case Node::T::kSetBlock:
    case Node::T::kFilterBlock: {
      std::string buf;
      std::string* saved = c.out;
      c.out = &buf;
      exec(n.body, c);
      c.out = saved;
      Value v = Value::str(buf);
      if (n.expr) {
        // The filter chain was parsed over a placeholder: apply each filter in order.
        std::vector<const Expr*> chain;
        for (const Expr* x = n.expr.get(); x && x->t == Expr::T::kFilter; x = x->a.get()) chain.push_back(x);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) v = eval_args_and_filter(**it, v, c);
      }
      if (n.t == Node::T::kSetBlock) c.scope->vars[n.targets[0]] = v;
      else emit(c, to_str(v), n.line);
      return Flow::kNormal;
    }
    case Node::T::kMacro: {
      const Node* macro = &n;
      Scope* def_scope = c.root;
      c.scope->vars[n.text] = Value::func([macro, def_scope](Args& a, Ctx& cc) {
        DepthGuard g(cc, macro->line);
        Scope s;
        s.parent = def_scope;
        for (size_t i = 0; i < macro->params.size(); ++i) {
          const auto& [pname, def] = macro->params[i];
          std::optional<Value> v = a.get(i, pname.c_str());
          if (!v) {
            Scope* saved = cc.scope;
            cc.scope = &s;
            v = def ? eval(*def, cc) : Value::undefined(pname);
            cc.scope = saved;
          }
          s.vars[pname] = *v;
        }
        std::string buf;
        std::string* saved_out = cc.out;
        Scope* saved_scope = cc.scope;
        cc.out = &buf;
        cc.scope = &s;
        exec(macro->body, cc);
        cc.out = saved_out;
        cc.scope = saved_scope;
        return Value::str(buf);
      });
      return Flow::kNormal;
    }
    case Node::T::kBreak: return Flow::kBreak;
    case Node::T::kContinue: return Flow::kContinue;
  }
  return Flow::kNormal;
}

Flow exec(const std::vector<NodeP>& body, Ctx& c) {
  for (const NodeP& n : body) {
    const Flow f = exec_node(*n, c);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

}  // namespace

Template::Template(std::string_view source) {
  auto root = std::make_shared<Node>();
  root->t = Node::T::kBody;
  root->body = Parser(scan(source)).parse_all();
  root_ = root;
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context, const std::tm& now) const {
  Scope root;
  std::string out;
  Ctx c{&root, &root, &out, 0, now};
  root.vars["raise_exception"] = Value::func([](Args& a, Ctx&) -> Value {
    throw Error(ErrorCode::kInvalidArgument, "chat template raised: " + (a.pos.empty() ? std::string() : to_str(a.pos[0])));
  });
  root.vars["strftime_now"] = Value::func([](Args& a, Ctx& cc) {
    const std::tm tm = cc.now;
    char buf[256];
    const std::string fmt = a.pos.empty() ? std::string("%Y-%m-%d") : to_str(a.pos[0]);
    const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
    return Value::str(std::string(buf, n));
  });
  root.vars["namespace"] = Value::func([](Args& a, Ctx&) {
    auto d = std::make_shared<Dict>();
    for (const Value& p : a.pos) {
      if (p.k == Value::K::kDict) {
        for (const auto& kv : p.dict->items) d->set(kv.first, kv.second);
      }
    }
    for (const auto& [k, v] : a.kw) d->set(k, v);
    Value v = Value::of_dict(d);
    v.ns = true;
    return v;
  });
  root.vars["dict"] = Value::func([](Args& a, Ctx&) {
    auto d = std::make_shared<Dict>();
    for (const auto& [k, v] : a.kw) d->set(k, v);
    return Value::of_dict(d);
  });
  root.vars["range"] = Value::func([](Args& a, Ctx& cc) {
    int64_t lo = 0, hi = 0, step = 1;
    if (a.pos.size() == 1) hi = to_int(a.pos[0], a.line);
    else if (a.pos.size() >= 2) {
      lo = to_int(a.pos[0], a.line);
      hi = to_int(a.pos[1], a.line);
      if (a.pos.size() >= 3) step = to_int(a.pos[2], a.line);
    }
    if (step == 0) render_error(a.line, "range() step cannot be zero");
    const int64_t n = step > 0 ? (hi > lo ? (hi - lo + step - 1) / step : 0) : (lo > hi ? (lo - hi - step - 1) / -step : 0);
    if (n > kMaxRange) render_error(a.line, "range() longer than " + std::to_string(kMaxRange));
    charge(cc, n, a.line);  // before building it
    List l;
    l.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i) l.push_back(Value::integer(lo + i * step));
    return Value::of_list(std::move(l));
  });
  if (context.is_object()) {
    for (auto it = context.begin(); it != context.end(); ++it) root.vars[it.key()] = from_json(it.value());
  }
  exec(root_->body, c);
  return out;
}

}  // namespace mxlm::jinja
