// Fuzz target: prompts. UTF-8 validation, then encoding with a fixed small tokenizer
// (stories260K's tok512.model from the shared folder) and streaming the ids back: invalid UTF-8
// must be rejected with kInvalidArgument at the offset find_invalid_utf8 reports, valid text
// must encode to in-range ids whose streamed text is valid UTF-8.
#include <memory>

#include "fuzz/fuzz_util.h"
#include "model/file_util.h"
#include "tokenizer/tokenizer.h"

using namespace mxlm;

namespace {
std::unique_ptr<Tokenizer> g_tok;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string path = fuzz::shared_path("models/stories260K/tok512.model");
  try {
    g_tok = Tokenizer::from_spm_proto(read_file(path));
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz_prompt: cannot load %s: %s (set MXLM_SHARED)\n", path.c_str(), e.what());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t bad = find_invalid_utf8(text);
  std::vector<int> ids;
  try {
    ids = g_tok->encode(text, true);
  } catch (const Error& e) {
    MXLM_FUZZ_CHECK(bad != std::string_view::npos && e.code() == ErrorCode::kInvalidArgument);
    return 0;
  }
  MXLM_FUZZ_CHECK(bad == std::string_view::npos);
  MXLM_FUZZ_CHECK(!ids.empty() && ids[0] == g_tok->bos_id());
  StreamDecoder dec(*g_tok);
  std::string out;
  for (int id : ids) {
    MXLM_FUZZ_CHECK(id >= 0 && id < g_tok->n_vocab());
    out += dec.push(id);
  }
  out += dec.flush();
  MXLM_FUZZ_CHECK(find_invalid_utf8(out) == std::string_view::npos);
  (void)g_tok->decode(ids);
  return 0;
}
