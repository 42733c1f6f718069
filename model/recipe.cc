// Recipe parsing and matching (recipe.h).
//
// Parsing uses nlohmann::ordered_json, so rules keep the order of the file ("the first matching
// glob wins" would otherwise follow std::map's alphabetical order). A parse callback rejects
// duplicate keys: nlohmann keeps only one of them, so a hand-edited recipe that names a tensor
// twice would silently lose a rule.
//
// Glob matching is the linear two-pointer scan: on a mismatch, back up to the last '*' and let it
// swallow one more character. Each '*' restarts at most |name| times, so O(|pattern|·|name|).
#include "model/recipe.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace mxlm {
namespace {

using ojson = nlohmann::ordered_json;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, "recipe " + path + ": " + what);
}

std::string format_names() {
  std::string s;
  for (const QTypeInfo& q : kQTypes) s += (s.empty() ? "" : ", ") + std::string(q.name);
  return s;
}

// A JSON value for a message: its kind and at most 40 characters of its text.
std::string shown(const ojson& v) {
  std::string d = v.dump(-1, ' ', false, ojson::error_handler_t::replace);
  if (d.size() > 40) d = d.substr(0, 40) + "...";
  return std::string(v.type_name()) + " " + d;
}

QType format_value(const ojson& v, const std::string& path, const std::string& key) {
  if (!v.is_string()) fail(path, key + " must be a format name string, not " + shown(v) + " (formats: " + format_names() + ")");
  const std::string name = v.get<std::string>();
  const std::optional<QType> q = qtype_from_name(name);
  if (!q) fail(path, key + ": unknown format '" + name + "' (formats: " + format_names() + ")");
  return *q;
}

bool has_wildcard(const std::string& p) { return p.find_first_of("*?") != std::string::npos; }

// "blk.12.attn_q" -> "blk.*.attn_q": each dot-separated all-digit component becomes '*'.
std::string fold_layers(const std::string& name) {
  std::string out, part;
  auto flush = [&] {
    const bool digits = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
    out += digits ? "*" : part;
    part.clear();
  };
  for (char ch : name) {
    if (ch == '.') flush(), out += '.';
    else part += ch;
  }
  flush();
  return out;
}

}  // namespace

bool recipe_glob_match(const std::string& pattern, const std::string& name) {
  size_t p = 0, n = 0;
  size_t star = std::string::npos, star_n = 0;  // the last '*' seen and where it began matching
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || (pattern[p] != '*' && pattern[p] == name[n]))) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++, star_n = n;
    } else if (star != std::string::npos) {
      p = star + 1, n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Recipe parse_recipe(const std::string& json_text, const std::string& path) {
  std::vector<std::set<std::string>> keys;  // per open object: the keys seen so far
  const ojson::parser_callback_t dup_check = [&](int, ojson::parse_event_t ev, ojson& parsed) {
    using E = ojson::parse_event_t;
    if (ev == E::object_start) keys.emplace_back();
    if (ev == E::object_end && !keys.empty()) keys.pop_back();
    if (ev == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
      fail(path, "duplicate key \"" + parsed.get<std::string>() + "\" (each key may appear once)");
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(json_text, dup_check);
  } catch (const ojson::exception& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object())
    fail(path, "must be a JSON object like {\"default\": \"q4_g32\", \"tensors\": {\"blk.*.ffn_down\": \"q6_g32\"}}, not " + shown(j));
  Recipe r;
  for (const auto& [key, value] : j.items()) {
    if (key == "default") {
      r.default_format = format_value(value, path, "\"default\"");
    } else if (key == "tensors") {
      if (!value.is_object())
        fail(path, "\"tensors\" must be an object mapping tensor names or globs to format names, not " + shown(value));
      for (const auto& [pattern, fmt] : value.items()) {
        if (pattern.empty()) fail(path, "\"tensors\" has an empty tensor name");
        r.rules.emplace_back(pattern, format_value(fmt, path, "\"tensors\".\"" + pattern + "\""));
      }
    } else {
      fail(path, "unknown key \"" + key + "\" (allowed keys: \"default\", \"tensors\")");
    }
  }
  if (r.rules.empty() && !r.default_format)
    fail(path, "the recipe is empty: give a \"default\" format, \"tensors\" rules, or both");
  return r;
}

std::optional<QType> recipe_format(const Recipe& r, const std::string& tensor_name) {
  for (const auto& [pattern, q] : r.rules)
    if (pattern == tensor_name) return q;
  for (const auto& [pattern, q] : r.rules)
    if (has_wildcard(pattern) && recipe_glob_match(pattern, tensor_name)) return q;
  return r.default_format;
}

void check_recipe(const Recipe& r, const std::vector<std::string>& tensor_names, const std::string& path) {
  for (const auto& rule : r.rules) {
    const std::string& pattern = rule.first;
    bool hit = false;
    for (const std::string& n : tensor_names) {
      if (pattern == n || (has_wildcard(pattern) && recipe_glob_match(pattern, n))) {
        hit = true;
        break;
      }
    }
    if (hit) continue;
    std::vector<std::string> scheme;  // distinct folded names, in model order
    for (const std::string& n : tensor_names) {
      const std::string f = fold_layers(n);
      if (std::find(scheme.begin(), scheme.end(), f) == scheme.end()) scheme.push_back(f);
    }
    std::string list;
    for (size_t i = 0; i < scheme.size() && i < 12; ++i) list += (i ? ", " : "") + scheme[i];
    if (scheme.size() > 12) list += ", ...";
    if (list.empty()) list = "(the model has no tensors)";
    else if (scheme.size() < tensor_names.size()) list += " ('*' a layer number, e.g. " + tensor_names.back() + ")";
    fail(path, "rule \"" + pattern + "\" matches none of the model's " + std::to_string(tensor_names.size()) +
                   " tensors; the names look like: " + list);
  }
}

std::string recipe_to_json(const std::vector<std::pair<std::string, QType>>& per_tensor) {
  if (per_tensor.empty()) throw Error(ErrorCode::kInvalidArgument, "recipe_to_json: no tensors (an empty recipe would not parse)");
  ojson tensors = ojson::object();
  for (const auto& [name, q] : per_tensor) {
    if (name.empty()) throw Error(ErrorCode::kInvalidArgument, "recipe_to_json: an empty tensor name");
    if (tensors.contains(name)) throw Error(ErrorCode::kInvalidArgument, "recipe_to_json: tensor '" + name + "' is listed twice");
    tensors[name] = std::string(qtype_info(q).name);
  }
  ojson j = ojson::object();
  j["tensors"] = std::move(tensors);
  return j.dump(2) + "\n";
}

}  // namespace mxlm
