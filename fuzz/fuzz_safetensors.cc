// Fuzz target: one safetensors file (u64 header length, JSON header, data offsets), from bytes.
// Every tensor the parser accepts must lie inside the input, and its rows must convert.
#include <map>

#include "fuzz/fuzz_util.h"
#include "model/file_util.h"
#include "model/import.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_parse_or_error([&] {
    const MappedFile map = MappedFile::from_memory("fuzz.safetensors", data, size);
    std::map<std::string, hf::SafeTensor> tensors;
    hf::read_safetensors(map, &tensors);
    std::vector<float> row;
    for (const auto& [name, t] : tensors) {
      MXLM_FUZZ_CHECK(t.data >= map.data() && t.data + t.bytes <= map.data() + map.size());
      (void)fuzz::touch(t.data, t.bytes);
      SourceTensor s;
      s.name = name;
      s.shape = {1, static_cast<int64_t>(t.bytes / qtype_info(t.type).block_bytes)};
      s.src_type = t.type;
      s.data = t.data;
      if (s.shape[1] > 0 && s.shape[1] <= (1 << 20)) {
        row.resize(static_cast<size_t>(s.shape[1]));
        read_source_row(s, 0, row.data());  // unaligned data must convert without UB
      }
    }
    // A second parse into the same map: every name is now a duplicate and must be rejected.
    if (!tensors.empty()) {
      bool rejected = false;
      try {
        hf::read_safetensors(map, &tensors);
      } catch (const Error&) {
        rejected = true;
      }
      MXLM_FUZZ_CHECK(rejected);
    }
  });
  return 0;
}
