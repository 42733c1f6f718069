// Quantization recipes: `--recipe FILE.json` fixes the format of some or all tensors, to
// reproduce a known mix or to hand-edit one that the allocator printed (`--dry-run`).
//
//   {"default": "q4_g32",
//    "tensors": {"blk.*.ffn_down": "q6_g32", "output": "q8_g32", "blk.0.attn_?": "q8_g32"}}
//
// Keys of "tensors" are tensor names as stored in .mxlm files (model/config.h tensor_names:
// "tok_embd", "output", "blk.3.ffn_down", ...) or globs over them: '*' matches any run of
// characters (including none, and including dots: "blk.1*" matches blk.1 and blk.10..19), '?'
// matches exactly one character; there is no escaping. Values and "default" are format names
// (kernels/qtype.h kQTypes: "q4_g32", "q8_g32", "f16", ...). Both keys are optional, but a recipe
// must say something. Rule order is kept as written: the first matching glob wins.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/qtype.h"

namespace mxlm {

struct Recipe {
  std::vector<std::pair<std::string, QType>> rules;  // (name or glob, format), in file order
  std::optional<QType> default_format;               // for tensors that no rule matches
};

// Parses a recipe. Throws Error (kInvalidArgument) naming `path_for_messages`, the key and the
// allowed values when the text is not JSON, not an object, has an unknown top-level key (allowed:
// "default", "tensors"), a duplicate key, a non-string or unknown format name (the message lists
// the valid names), an empty pattern, or no rules and no default at all.
Recipe parse_recipe(const std::string& json_text, const std::string& path_for_messages);

// True when glob `pattern` matches all of `name` ('*' any run, '?' one character).
bool recipe_glob_match(const std::string& pattern, const std::string& name);

// The format for a tensor: a rule equal to the name first, else the first glob rule that matches
// (in file order), else the default, else nullopt (the caller decides: allocate or fail).
std::optional<QType> recipe_format(const Recipe& r, const std::string& tensor_name);

// Throws Error (kInvalidArgument) when a rule matches none of `tensor_names` (a typo would
// otherwise silently leave the tensor to the default): the message names the file and the rule
// and shows the model's name scheme, layer numbers folded into '*' ("blk.*.attn_q").
void check_recipe(const Recipe& r, const std::vector<std::string>& tensor_names, const std::string& path);

// A recipe with one exact rule per tensor, in the given order, that parse_recipe reads back to
// the same rules (pretty-printed, one rule per line). Throws Error (kInvalidArgument) when the
// list is empty (an empty recipe would not parse) or names a tensor twice.
std::string recipe_to_json(const std::vector<std::pair<std::string, QType>>& per_tensor);

}  // namespace mxlm
