#include "model/config.h"

#include <nlohmann/json.hpp>

#include "kernels/common.h"

namespace mxlm {

namespace {

void check_range(const char* field, long long v, long long lo, long long hi) {
  if (v < lo || v > hi) {
    throw Error(ErrorCode::kFormat, "model config: " + std::string(field) + " = " + std::to_string(v) +
                                        " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
}

}  // namespace

void ModelConfig::validate() const {
  if (arch != "llama") throw Error(ErrorCode::kUnsupported, "unknown architecture '" + arch + "' (supported: llama)");
  check_range("n_vocab", n_vocab, 1, 1 << 24);
  check_range("n_embd", n_embd, 1, 1 << 16);
  check_range("n_layers", n_layers, 1, 1024);
  check_range("n_heads", n_heads, 1, 1024);
  check_range("n_kv_heads", n_kv_heads, 1, n_heads);
  check_range("head_dim", head_dim, 2, 1024);
  check_range("n_ff", n_ff, 1, 1 << 20);
  check_range("n_ctx", n_ctx, 1, 1 << 22);
  check_range("bos_id", bos_id, -1, n_vocab - 1);
  check_range("eos_id", eos_id, -1, n_vocab - 1);
  if (n_heads % n_kv_heads != 0) {
    throw Error(ErrorCode::kFormat, "model config: n_heads = " + std::to_string(n_heads) +
                                        " is not a multiple of n_kv_heads = " + std::to_string(n_kv_heads));
  }
  if (head_dim % 2 != 0) throw Error(ErrorCode::kFormat, "model config: head_dim = " + std::to_string(head_dim) + " is odd");
  if (!(norm_eps > 0.0f && norm_eps < 1.0f)) throw Error(ErrorCode::kFormat, "model config: norm_eps = " + std::to_string(norm_eps) + " is out of range (0, 1)");
  if (!(rope_theta > 1.0f)) throw Error(ErrorCode::kFormat, "model config: rope_theta = " + std::to_string(rope_theta) + " must be > 1");
}

nlohmann::json ModelConfig::to_json() const {
  return {{"arch", arch},           {"n_vocab", n_vocab},   {"n_embd", n_embd},     {"n_layers", n_layers},
          {"n_heads", n_heads},     {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim}, {"n_ff", n_ff},
          {"n_ctx", n_ctx},         {"norm_eps", norm_eps}, {"rope_theta", rope_theta},
          {"tied_embeddings", tied_embeddings}, {"bos_id", bos_id}, {"eos_id", eos_id}};
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  ModelConfig c;
  try {
    c.arch = j.at("arch").get<std::string>();
    c.n_vocab = j.at("n_vocab").get<int>();
    c.n_embd = j.at("n_embd").get<int>();
    c.n_layers = j.at("n_layers").get<int>();
    c.n_heads = j.at("n_heads").get<int>();
    c.n_kv_heads = j.at("n_kv_heads").get<int>();
    c.head_dim = j.at("head_dim").get<int>();
    c.n_ff = j.at("n_ff").get<int>();
    c.n_ctx = j.at("n_ctx").get<int>();
    c.norm_eps = j.at("norm_eps").get<float>();
    c.rope_theta = j.at("rope_theta").get<float>();
    c.tied_embeddings = j.at("tied_embeddings").get<bool>();
    c.bos_id = j.at("bos_id").get<int>();
    c.eos_id = j.at("eos_id").get<int>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::kFormat, std::string("model config: ") + e.what());
  }
  return c;
}

std::string tensor_names::layer(int i, const char* suffix) { return "blk." + std::to_string(i) + "." + suffix; }

}  // namespace mxlm
