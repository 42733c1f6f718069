// Fuzz target: llama2.c tokenizer.bin, from bytes. The input is a u16 vocabulary size (the
// model's, which the file itself does not hold) followed by the file. An accepted vocabulary
// goes on as the importer uses it: into a SentencePiece model proto, loaded and run once.
#include <cstring>

#include "fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint16_t n;
  std::memcpy(&n, data, 2);
  const std::string_view file(reinterpret_cast<const char*>(data) + 2, size - 2);
  fuzz::expect_parse_or_error([&] {
    const std::vector<VocabEntry> vocab = parse_llama2c_tokenizer(file, n, "fuzz.bin");
    MXLM_FUZZ_CHECK(vocab.size() == n);
    const std::string proto = build_spm_model_proto(vocab, SpmBuildOptions{});
    auto tok = Tokenizer::from_spm_proto(proto);
    const std::vector<int> ids = tok->encode("Once upon a time, \xE2\x96\x81 <0x0A>\n", true);
    for (int id : ids) MXLM_FUZZ_CHECK(id >= 0 && id < tok->n_vocab());
    (void)tok->decode(ids);
  });
  return 0;
}
