// A Jinja2 interpreter for chat templates: the subset of the language that models' chat
// templates use, with the semantics of Python Jinja2 3.x under Hugging Face transformers'
// apply_chat_template environment (trim_blocks and lstrip_blocks on, loop controls, the filters
// and globals it adds: tojson, raise_exception, strftime_now), so that a template renders here
// byte for byte as it renders there (tests/chat_template_test.cc checks real templates against
// renderings made with Jinja2 itself, tests/data/chat_templates).
//
// Why an interpreter rather than recognizing template families: templates of one family differ
// in their details (system-message handling, BOS placement, tools, dates, whitespace), and a
// renderer that recognizes a family renders a variant of it wrongly without noticing; the
// interpreter renders the model's own text, including templates written after this code.
//
// Covered: {{ }}, {% %}, {# #} with -/+ whitespace control; for (tuple targets, `if` filters,
// else, loop.*, break/continue), if/elif/else, set (also ns.attr and block set), macro and call
// of macros, raw, filter blocks, generation blocks (rendered as their body); literals (strings,
// numbers, lists, dicts, tuples), attribute and item access, slices, calls with keyword
// arguments, filters, tests, `a if c else b`, and the Python operators including `in`, `~` and
// `**`; string, list and dict methods (strip, split, startswith, items, get, ...). Values print
// as Python's str() prints them. Templates come from model files and are untrusted: recursion,
// output size and ranges are bounded, and every failure is an Error (kFormat for a template
// that does not parse, kInvalidArgument for one that raises or fails while rendering) naming
// the line.
#pragma once

#include <ctime>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace mxlm::jinja {

struct Node;

class Template {
 public:
  // Parses the template; throws Error (kFormat) with the line of the problem.
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the top-level variables of `context` (an object: messages,
  // add_generation_prompt, bos_token, ...; ordered, since dicts iterate in insertion order). `now` is the time strftime_now() formats (the
  // caller's local time; tests fix it). Throws Error (kInvalidArgument) when the template raises
  // (raise_exception) or fails, naming the line.
  std::string render(const nlohmann::ordered_json& context, const std::tm& now) const;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace mxlm::jinja
