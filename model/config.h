// Model hyper-parameters of the Llama family (Llama, Mistral-style GQA, tied or untied head).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace mxlm {

struct ModelConfig {
  std::string arch = "llama";  // the only architecture so far
  int n_vocab = 0;
  int n_embd = 0;      // hidden size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  // < n_heads: grouped-query attention
  int head_dim = 0;    // usually n_embd / n_heads
  int n_ff = 0;        // SwiGLU inner size
  int n_ctx = 0;       // trained context length
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tied_embeddings = false;  // the output head reuses tok_embd
  int bos_id = 1;
  int eos_id = 2;

  // Throws Error (kFormat) naming the field and value when a field is out of range or the
  // fields disagree (n_heads not a multiple of n_kv_heads, odd head_dim, ...).
  void validate() const;
  nlohmann::json to_json() const;
  // Throws Error (kFormat) on missing or mistyped fields.
  static ModelConfig from_json(const nlohmann::json& j);
};

// Strict readers of JSON values for the parsers of untrusted files (config.json, .mxlm
// headers, safetensors headers). nlohmann's get<int>() truncates 3.7 to 3 and wraps 1e10 and
// throws its own exception types; these instead throw Error (kFormat) "<what> = <value> ..."
// naming the field, the value found and the limit.
//   json_int:    a JSON integer (not 3.7, not 1e10, not "12", not true) within [lo, hi]
//   json_uint:   a non-negative JSON integer <= hi
//   json_float:  a JSON number (integers allowed) that is finite as a float32
//   json_bool / json_string: exactly that JSON type
int64_t json_int(const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi);
uint64_t json_uint(const nlohmann::json& v, const std::string& what, uint64_t hi = UINT64_MAX);
float json_float(const nlohmann::json& v, const std::string& what);
bool json_bool(const nlohmann::json& v, const std::string& what);
std::string json_string(const nlohmann::json& v, const std::string& what);

// Canonical tensor names inside .mxlm files. Weights are [N][K] row-major (N = out features).
namespace tensor_names {
inline constexpr const char* kTokEmbd = "tok_embd";       // [n_vocab][n_embd]
inline constexpr const char* kOutputNorm = "output_norm"; // [n_embd]
inline constexpr const char* kOutput = "output";          // [n_vocab][n_embd], absent when tied
std::string layer(int i, const char* suffix);             // "blk.<i>.<suffix>"
inline constexpr const char* kAttnNorm = "attn_norm";     // [n_embd]
inline constexpr const char* kAttnQ = "attn_q";           // [n_heads*head_dim][n_embd]
inline constexpr const char* kAttnK = "attn_k";           // [n_kv_heads*head_dim][n_embd]
inline constexpr const char* kAttnV = "attn_v";           // [n_kv_heads*head_dim][n_embd]
inline constexpr const char* kAttnO = "attn_o";           // [n_embd][n_heads*head_dim]
inline constexpr const char* kFfnNorm = "ffn_norm";       // [n_embd]
inline constexpr const char* kFfnGate = "ffn_gate";       // [n_ff][n_embd]
inline constexpr const char* kFfnUp = "ffn_up";           // [n_ff][n_embd]
inline constexpr const char* kFfnDown = "ffn_down";       // [n_embd][n_ff]
}  // namespace tensor_names

}  // namespace mxlm
