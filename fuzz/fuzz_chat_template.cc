// Fuzz target: chat templates (runtime/jinja.h), which come from model files. Any input must
// parse or fail with Error (kFormat), and a parsed template must render a fixed conversation or
// fail with Error (kInvalidArgument): no crash, hang (the work budget bounds loops and
// recursion) or unbounded allocation. Seeds: the real templates of tests/data/chat_templates.
#include <ctime>
#include <string>

#include "fuzz/fuzz_util.h"
#include "runtime/jinja.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string src(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<jinja::Template> t;
  try {
    t = std::make_unique<jinja::Template>(src);
  } catch (const Error& e) {
    MXLM_FUZZ_CHECK(e.code() == ErrorCode::kFormat);
    return 0;
  }
  static const nlohmann::ordered_json ctx = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "Hi \xc3\xa9"}},
        {{"role", "assistant"}, {"content", "Hello."}},
        {{"role", "user"}, {"content", "Why?"}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"tools", nullptr},
      {"documents", nullptr}};
  std::tm now{};
  now.tm_year = 126;
  try {
    const std::string out = t->render(ctx, now);
    (void)fuzz::touch(reinterpret_cast<const uint8_t*>(out.data()), out.size());
  } catch (const Error& e) {
    MXLM_FUZZ_CHECK(e.code() == ErrorCode::kInvalidArgument);
  }
  return 0;
}
