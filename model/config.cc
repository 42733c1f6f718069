#include "model/config.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace mxlm {

namespace {

void check_range(const char* field, long long v, long long lo, long long hi) {
  if (v < lo || v > hi) {
    throw Error(ErrorCode::kFormat, "model config: " + std::string(field) + " = " + std::to_string(v) +
                                        " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
}

// A JSON value for a message: at most 64 characters of its dump.
std::string shown(const nlohmann::json& v) {
  std::string d = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (d.size() > 64) d = d.substr(0, 64) + "...";
  return d;
}

[[noreturn]] void json_fail(const std::string& what, const nlohmann::json& v, const std::string& expected) {
  throw Error(ErrorCode::kFormat, what + " = " + shown(v) + " is not " + expected);
}

}  // namespace

int64_t json_int(const nlohmann::json& v, const std::string& what, int64_t lo, int64_t hi) {
  const std::string range = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (hi < 0 || u > static_cast<uint64_t>(hi) || static_cast<int64_t>(u) < lo) json_fail(what, v, range);
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (i < lo || i > hi) json_fail(what, v, range);
    return i;
  }
  json_fail(what, v, range);
}

uint64_t json_uint(const nlohmann::json& v, const std::string& what, uint64_t hi) {
  const std::string range = "an integer in [0, " + std::to_string(hi) + "]";
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > hi) json_fail(what, v, range);
    return u;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0 && static_cast<uint64_t>(v.get<int64_t>()) <= hi) {
    return static_cast<uint64_t>(v.get<int64_t>());
  }
  json_fail(what, v, range);
}

float json_float(const nlohmann::json& v, const std::string& what) {
  if (!v.is_number()) json_fail(what, v, "a number");
  const double d = v.get<double>();
  // Outside the float range the conversion is undefined behaviour, not infinity.
  if (!(std::fabs(d) <= static_cast<double>(std::numeric_limits<float>::max()))) json_fail(what, v, "a finite float32");
  return static_cast<float>(d);
}

bool json_bool(const nlohmann::json& v, const std::string& what) {
  if (!v.is_boolean()) json_fail(what, v, "true or false");
  return v.get<bool>();
}

std::string json_string(const nlohmann::json& v, const std::string& what) {
  if (!v.is_string()) json_fail(what, v, "a string");
  return v.get<std::string>();
}

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
  if (!(rope_theta > 1.0f && rope_theta <= 1e12f)) {
    throw Error(ErrorCode::kFormat, "model config: rope_theta = " + std::to_string(rope_theta) + " is out of range (1, 1e12]");
  }
}

nlohmann::json ModelConfig::to_json() const {
  return {{"arch", arch},           {"n_vocab", n_vocab},   {"n_embd", n_embd},     {"n_layers", n_layers},
          {"n_heads", n_heads},     {"n_kv_heads", n_kv_heads}, {"head_dim", head_dim}, {"n_ff", n_ff},
          {"n_ctx", n_ctx},         {"norm_eps", norm_eps}, {"rope_theta", rope_theta},
          {"tied_embeddings", tied_embeddings}, {"bos_id", bos_id}, {"eos_id", eos_id}};
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw Error(ErrorCode::kFormat, "model config: not a JSON object: " + shown(j));
  auto field = [&](const char* key) -> const nlohmann::json& {
    auto it = j.find(key);
    if (it == j.end()) throw Error(ErrorCode::kFormat, std::string("model config: missing field '") + key + "'");
    return *it;
  };
  auto int_field = [&](const char* key) {
    return static_cast<int>(json_int(field(key), std::string("model config: ") + key, INT32_MIN, INT32_MAX));
  };
  ModelConfig c;
  c.arch = json_string(field("arch"), "model config: arch");
  c.n_vocab = int_field("n_vocab");
  c.n_embd = int_field("n_embd");
  c.n_layers = int_field("n_layers");
  c.n_heads = int_field("n_heads");
  c.n_kv_heads = int_field("n_kv_heads");
  c.head_dim = int_field("head_dim");
  c.n_ff = int_field("n_ff");
  c.n_ctx = int_field("n_ctx");
  c.norm_eps = json_float(field("norm_eps"), "model config: norm_eps");
  c.rope_theta = json_float(field("rope_theta"), "model config: rope_theta");
  c.tied_embeddings = json_bool(field("tied_embeddings"), "model config: tied_embeddings");
  c.bos_id = int_field("bos_id");
  c.eos_id = int_field("eos_id");
  return c;
}

std::string tensor_names::layer(int i, const char* suffix) { return "blk." + std::to_string(i) + "." + suffix; }

}  // namespace mxlm
