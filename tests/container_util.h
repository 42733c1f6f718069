// Helpers of the container and parser tests: the smallest valid config and header rewriting of
// .mxlm files (kept apart from test_util.h, which the kernels-only NEON build includes without
// the model library).
#pragma once

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "model/checksum.h"
#include "model/config.h"
#include "tests/test_util.h"

namespace mxlm::test {

// A valid config of the smallest shape (8-token vocabulary, 4-wide, one layer) for container
// and parser tests.
inline ModelConfig tiny_config(int n_vocab = 8) {
  ModelConfig c;
  c.n_vocab = n_vocab;
  c.n_embd = 4;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.n_ff = 6;
  c.n_ctx = 16;
  return c;
}

// A whole file as bytes, and bytes written as a whole file.
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
inline void dump(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Copies the .mxlm file `src` to scratch_dir()/name with its JSON header rewritten by `edit` and,
// when `data_edit` is given, the bytes before the header too; sizes and the header checksum are
// fixed up, so that only the edited content is wrong. Returns the copy's path.
inline std::string edited_mxlm(const std::string& src, const std::string& name, const std::function<void(nlohmann::json&)>& edit,
                               const std::function<void(std::string&)>& data_edit = {}) {
  std::string bytes = slurp(src);
  uint64_t hoff, hlen;
  std::memcpy(&hoff, bytes.data() + 16, 8);
  std::memcpy(&hlen, bytes.data() + 24, 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(hoff, hlen));
  bytes.resize(hoff);
  edit(h);
  if (data_edit) data_edit(bytes);
  const std::string text = h.dump();
  bytes += text;
  const uint64_t n = text.size(), total = bytes.size();
  const uint32_t crc = crc32c(text.data(), text.size());
  std::memcpy(bytes.data() + 24, &n, 8);
  std::memcpy(bytes.data() + 40, &total, 8);
  std::memcpy(bytes.data() + 48, &crc, 4);
  const std::string out = scratch_dir() + "/" + name;
  dump(out, bytes);
  return out;
}

}  // namespace mxlm::test
