// Fuzz target: a serialized SentencePiece ModelProto (a tokenizer.model, or the blob embedded
// in a .mxlm file) loaded by Tokenizer::from_spm_proto, then used: encode, decode, pieces and
// streamed bytes of every id, which must come out as valid UTF-8 through StreamDecoder.
#include "fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_parse_or_error([&] {
    auto tok = Tokenizer::from_spm_proto(std::string_view(reinterpret_cast<const char*>(data), size));
    const int n = tok->n_vocab();
    MXLM_FUZZ_CHECK(n > 0);
    StreamDecoder dec(*tok);
    std::string out;
    for (int id = 0; id < n && id < 4096; ++id) {
      (void)tok->piece(id);
      (void)tok->is_control(id);
      out += dec.push(id);
    }
    out += dec.flush();
    MXLM_FUZZ_CHECK(find_invalid_utf8(out) == std::string_view::npos);
    fuzz::expect_parse_or_error([&] {
      const std::vector<int> ids = tok->encode("Hello world \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 1234\n\t<s>", tok->bos_id() >= 0);
      for (int id : ids) MXLM_FUZZ_CHECK(id >= 0 && id < n);
      (void)tok->decode(ids);
    });
  });
  return 0;
}
