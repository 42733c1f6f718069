// The Jinja2 interpreter (runtime/jinja.h) against Jinja2 itself: the real chat templates of
// widely used models (tests/data/chat_templates, with provenance in its README) rendered with the
// inputs of cases.json must equal, byte for byte, what Python Jinja2 rendered under
// transformers' apply_chat_template environment (scripts/render_chat_templates.py), and a case
// Jinja2 rejected (raise_exception) must fail here with the same message. Then the language
// features one by one, and bad templates as errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "base/error.h"
#include "runtime/jinja.h"

namespace mxlm {
namespace {

namespace fs = std::filesystem;

std::string data_dir() { return std::string(MXLM_SOURCE_DIR) + "/tests/data/chat_templates"; }

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

std::tm fixed_now() {
  std::tm t{};
  t.tm_year = 2026 - 1900;
  t.tm_mon = 6;
  t.tm_mday = 26;
  t.tm_wday = 0;  // a Sunday
  t.tm_yday = 206;
  return t;
}

std::string render(const std::string& src, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  return jinja::Template(src).render(ctx, fixed_now());
}

TEST(ChatTemplates, RealTemplatesRenderLikeJinja2) {
  const nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(slurp(data_dir() + "/cases.json"));
  int templates = 0, rendered = 0, raised = 0;
  for (const auto& entry : fs::directory_iterator(data_dir())) {
    if (entry.path().extension() != ".jinja") continue;
    const std::string name = entry.path().stem().string();
    ASSERT_TRUE(manifest["special_tokens"].contains(name)) << name << " has no special tokens in cases.json";
    ++templates;
    std::unique_ptr<jinja::Template> t;
    try {
      t = std::make_unique<jinja::Template>(slurp(entry.path()));
    } catch (const Error& e) {
      ADD_FAILURE() << name << ": " << e.what();
      continue;
    }
    for (const auto& [cname, c] : manifest["cases"].items()) {
      nlohmann::ordered_json ctx = manifest["special_tokens"][name];
      ctx["messages"] = c["messages"];
      ctx["add_generation_prompt"] = c["add_generation_prompt"];
      ctx["tools"] = nullptr;
      ctx["documents"] = nullptr;
      const fs::path want = data_dir() + "/" + name + "." + cname + ".txt";
      const fs::path err = data_dir() + "/" + name + "." + cname + ".error";
      if (fs::exists(want)) {
        try {
          EXPECT_EQ(t->render(ctx, fixed_now()), slurp(want)) << name << " / " << cname;
          ++rendered;
        } catch (const Error& e) {
          ADD_FAILURE() << name << " / " << cname << ": " << e.what();
        }
      } else {
        ASSERT_TRUE(fs::exists(err)) << name << "." << cname << " has neither .txt nor .error";
        try {
          t->render(ctx, fixed_now());
          ADD_FAILURE() << name << " / " << cname << " rendered; Jinja2 raised: " << slurp(err);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
          EXPECT_NE(std::string(e.what()).find(slurp(err)), std::string::npos) << e.what() << " vs " << slurp(err);
          ++raised;
        }
      }
    }
  }
  EXPECT_GE(templates, 15);
  EXPECT_GE(rendered, 60);
  std::printf("chat templates: %d, renderings equal to Jinja2's: %d, raised as Jinja2 did: %d\n", templates, rendered, raised);
}

// The work budget that stops runaway templates leaves room for long conversations: every real
// template renders 2,000 messages.
TEST(ChatTemplates, LongConversationsFitTheWorkBudget) {
  const nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(slurp(data_dir() + "/cases.json"));
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  for (int i = 0; i < 2000; ++i) msgs.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "message " + std::to_string(i)}});
  int n = 0;
  for (const auto& entry : fs::directory_iterator(data_dir())) {
    if (entry.path().extension() != ".jinja") continue;
    const std::string name = entry.path().stem().string();
    nlohmann::ordered_json ctx = manifest["special_tokens"][name];
    ctx["messages"] = msgs;
    ctx["add_generation_prompt"] = false;
    try {
      const std::string out = jinja::Template(slurp(entry.path())).render(ctx, fixed_now());
      EXPECT_NE(out.find("message 1999"), std::string::npos) << name;
      ++n;
    } catch (const Error& e) {
      ADD_FAILURE() << name << ": " << e.what();
    }
  }
  EXPECT_GE(n, 15);
}

TEST(Jinja, WhitespaceControl) {
  // trim_blocks and lstrip_blocks, as transformers sets them; '-' and '+' override.
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}"), "ab");
  EXPECT_EQ(render("x {{- ' y ' -}} z"), "x y z");
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif %}"), "a\n  b");
  EXPECT_EQ(render("{% if true +%}\nb{% endif %}"), "\nb");
  EXPECT_EQ(render("a {# note #}\nb"), "a b");
  EXPECT_EQ(render("line\n"), "line");         // one trailing newline dropped
  EXPECT_EQ(render("line\n\n"), "line\n");
  EXPECT_EQ(render("a\r\nb"), "a\nb");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
  EXPECT_EQ(render("{{ '%}' }}"), "%}");
}

TEST(Jinja, ExpressionsAndValues) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }}"), "7 3 -4 1 2 1024 3.5");
  EXPECT_EQ(render("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 3 / 1 }}"), "1.0 0.30000000000000004 1e+20 3.0");
  EXPECT_EQ(render("{{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': \"it's\"} }}"), "None True [1, 'a', None] {'k': \"it's\"}");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }}"), "a1None abab [1, 2]");
  EXPECT_EQ(render("{{ 'x' if false }}|{{ 'y' if true else 'z' }}|{{ undefined_thing }}"), "|y|");
  EXPECT_EQ(render("{{ 'abc'[1] }}{{ 'abc'[-1] }}{{ 'hello'[1:3] }}{{ 'hello'[::-1] }}{{ [1,2,3][1:] }}"), "bcelolleh[2, 3]");
  EXPECT_EQ(render("{{ '猫x'[0] }}{{ '猫x' | length }}"), "猫2");
  EXPECT_EQ(render("{{ 1 in [1, 2] }} {{ 'b' in 'abc' }} {{ 'k' not in {'k': 1} }} {{ not 0 }}"), "True True False True");
  EXPECT_EQ(render("{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ none == none }}"), "True True True True");
  EXPECT_EQ(render("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ '' or [] }}"), "x y []");
  EXPECT_EQ(render("{{ m.content }} {{ m['role'] }} {{ m.missing is defined }} {{ m.items() | list }}",
                   {{"m", {{"role", "user"}, {"content", "hi"}}}}),
            "hi user False [['role', 'user'], ['content', 'hi']]");
}

TEST(Jinja, StatementsAndLoops) {
  EXPECT_EQ(render("{% for x in [1, 2, 3] %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}"), "11,22,33");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in range(10) if x is odd %}{{ x }}{% endfor %}"), "13579");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for x in 'ab' %}{{ loop.revindex0 }}{{ loop.cycle('o', 'e') }}{{ loop.previtem is defined }}{% endfor %}"),
            "1oFalse0eTrue");
  // Loops scope their assignments; namespaces carry values out.
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(render("{% set ns = namespace(x=1) %}{% for i in [1] %}{% set ns.x = 2 %}{% endfor %}{{ ns.x }}"), "2");
  EXPECT_EQ(render("{% if false %}a{% elif 0 %}b{% elif 1 %}c{% else %}d{% endif %}"), "c");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set t %}  x  {% endset %}[{{ t }}]{% set u | trim %}  y  {% endset %}[{{ u }}]"), "[  x  ][y]");
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }}"),
            "Hi A! Hi B?");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
}

TEST(Jinja, FiltersTestsAndMethods) {
  EXPECT_EQ(render("{{ '  a b  ' | trim }}|{{ 'x' | upper }}|{{ 'Hello World' | lower }}|{{ 'ab cd' | title }}|{{ 'aBC' | capitalize }}"),
            "a b|X|hello world|Ab Cd|Abc");
  EXPECT_EQ(render("{{ [3, 1, 2] | sort | join(',') }} {{ ['b', 'A'] | sort | first }} {{ [1, 2] | last }} {{ [1, 2, 3] | sum }}"),
            "1,2,3 A 2 6");
  EXPECT_EQ(render("{{ x | default('d') }} {{ '' | default('e', true) }} {{ [1, 1, 2] | unique | list }} {{ [1, 2] | reverse | list }}"),
            "d e [1, 2] [2, 1]");
  EXPECT_EQ(render("{{ {'a': [1, 'é'], 'b': none, 'c': true} | tojson }}"), "{\"a\": [1, \"é\"], \"b\": null, \"c\": true}");
  EXPECT_EQ(render("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(render("{{ 'a\"\\n' | tojson }}"), "\"a\\\"\\n\"");
  EXPECT_EQ(render("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='c') | join }}",
                   {{"ms", {{{"role", "user"}, {"c", "1"}}, {{"role", "bot"}, {"c", "2"}}, {{"role", "user"}, {"c", "3"}}}}}),
            "13");
  EXPECT_EQ(render("{{ ms | rejectattr('x') | list | length }} {{ [0, 1, 2] | select | list }} {{ ['a'] | map('upper') | list }}",
                   {{"ms", {{{"x", true}}, {{"x", false}}}}}),
            "1 [1, 2] ['A']");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'xax'.strip('x') }} {{ 'abc'.startswith('ab') }} "
                   "{{ 'abc'.endswith(('x', 'c')) }} {{ 'aaa'.replace('a', 'b', 2) }} {{ '-'.join(['1', '2']) }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] a True True bba 1-2");
  EXPECT_EQ(render("{{ x is none }} {{ x is string }} {{ 3 is number }} {{ [] is iterable }} {{ {} is mapping }} {{ 4 is divisibleby 2 }} "
                   "{{ y is not defined }}",
                   {{"x", nullptr}}),
            "True False True True True True True");
  EXPECT_EQ(render("{{ 'x\ny' | indent(2) }}|{{ '%d items' | replace('%d', '3') }}|{{ 3.7 | int }}|{{ '4' | int + 1 }}"), "x\n  y|3 items|3|5");
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}"), "26 Jul 2026");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z', 0) }} {{ d.keys() | list }} {{ d | length }}", {{"d", {{"a", 1}}}}), "1 0 ['a'] 1");
}

TEST(Jinja, ErrorsNameTheProblemAndLine) {
  auto fails = [](const std::string& src, ErrorCode code, const std::string& words, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
    try {
      render(src, ctx);
      ADD_FAILURE() << src << " rendered";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << src << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << src << ": " << e.what();
    }
  };
  fails("a\n{% if x %}", ErrorCode::kFormat, "missing {% endif %}");
  fails("{{ 1 +", ErrorCode::kFormat, "unclosed");
  fails("a\nb\n{{ 1 + }}", ErrorCode::kFormat, "line 3");
  fails("{% frobnicate %}", ErrorCode::kFormat, "unknown statement 'frobnicate'");
  fails("{{ 'abc }}", ErrorCode::kFormat, "unclosed");
  fails("{{ x | nosuchfilter }}", ErrorCode::kInvalidArgument, "unknown filter 'nosuchfilter'");
  fails("{{ raise_exception('Roles must alternate') }}", ErrorCode::kInvalidArgument, "Roles must alternate");
  fails("{{ missing.attr }}", ErrorCode::kInvalidArgument, "'missing' is undefined");
  fails("{{ 1 / 0 }}", ErrorCode::kInvalidArgument, "division by zero");
  fails("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", ErrorCode::kInvalidArgument, "nesting deeper");
  fails("{% for i in range(100000000) %}{% endfor %}", ErrorCode::kInvalidArgument, "range() longer");
  fails("{{ 'x' * 100000000 }}", ErrorCode::kInvalidArgument, "too large");
  fails("{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}", ErrorCode::kInvalidArgument, "steps of work");
  fails("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", ErrorCode::kInvalidArgument,
        "steps of work");
}

}  // namespace
}  // namespace mxlm
