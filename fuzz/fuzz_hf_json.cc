// Fuzz target: the JSON files of a Hugging Face model directory, config.json and
// model.safetensors.index.json. Each input goes to both parsers (each rejects the other's
// files); an accepted index may name only relative shard paths inside the directory.
#include <filesystem>
#include <map>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/import.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_parse_or_error([&] {
    std::string arch;
    const ModelConfig c = hf::parse_config(text, "config.json", &arch);
    c.validate();  // parse_config returns only validated configs
  });
  fuzz::expect_parse_or_error([&] {
    std::map<std::string, std::string> weight_map;
    for (const std::string& f : hf::parse_index(text, "model.safetensors.index.json", &weight_map)) {
      MXLM_FUZZ_CHECK(!f.empty());
      const std::filesystem::path p(f);
      MXLM_FUZZ_CHECK(!p.is_absolute());
      for (const auto& part : p) MXLM_FUZZ_CHECK(part != "..");
    }
  });
  return 0;
}
