// Fuzz target: llama2.c checkpoints (legacy 28-byte header and the v1 "ak42" header), from
// bytes. An accepted checkpoint's tensors must read back row by row.
#include <memory>

#include "fuzz/fuzz_util.h"
#include "model/file_util.h"
#include "model/import.h"

using namespace mxlm;

namespace {
std::string g_tokenizer;  // tok512.model: the importer needs one to finish
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tokenizer = fuzz::shared_path("models/stories260K/tok512.model");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_parse_or_error([&] {
    auto map = std::make_shared<const MappedFile>(MappedFile::from_memory("fuzz.bin", data, size));
    ImportOptions opt;
    opt.tokenizer_path = g_tokenizer;
    ImportedModel m = import_llama2c(map, opt);
    m.config.validate();
    check_tensor_set(m);
    fuzz::read_edge_rows(m);
  });
  return 0;
}
