// Fuzz target: the GGUF reader (header, key/values, typed arrays, tensor infos), the
// SentencePiece vocabulary it carries, and the GGUF importer's config and tensor mapping,
// from bytes.
#include <memory>

#include "fuzz/fuzz_util.h"
#include "model/file_util.h"
#include "model/gguf.h"
#include "model/import.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_parse_or_error([&] {
    auto file = std::make_shared<const gguf::File>(MappedFile::from_memory("fuzz.gguf", data, size));
    double acc = 0;
    for (const auto& kv : file->kv()) {
      const std::string& key = kv.first;  // (clang 14 cannot capture structured bindings)
      const gguf::Value& v = kv.second;
      if (v.type == gguf::ValueType::kArray) {
        for (size_t i = 0; i < v.numbers.size(); ++i) acc += v.numbers[i];
        for (std::string_view s : v.strings) acc += static_cast<double>(s.size());
      }
      fuzz::expect_parse_or_error([&] { acc += static_cast<double>(v.as_int(key)); });
      fuzz::expect_parse_or_error([&] { acc += v.as_float(key); });
      fuzz::expect_parse_or_error([&] { acc += v.as_bool(key); });
      fuzz::expect_parse_or_error([&] { acc += static_cast<double>(v.as_string(key).size()); });
    }
    for (const gguf::TensorInfo& t : file->tensors()) acc += fuzz::touch(file->tensor_data(t), t.bytes);
    (void)acc;
    fuzz::expect_parse_or_error([&] {
      std::vector<VocabEntry> vocab;
      SpmBuildOptions opt;
      gguf::read_spm_vocab(*file, &vocab, &opt);
    });
    ImportedModel m = import_gguf(file, ImportOptions{});
    check_tensor_set(m);
    fuzz::read_edge_rows(m);
  });
  return 0;
}
