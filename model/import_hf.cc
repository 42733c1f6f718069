// Hugging Face import: config.json + model.safetensors or sharded safetensors with
// model.safetensors.index.json, plus tokenizer.model (SentencePiece).
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "kernels/common.h"
#include "model/import.h"

namespace mxlm {

namespace {

namespace fs = std::filesystem;

struct SafeTensor {
  QType type;
  std::vector<int64_t> shape;
  const uint8_t* data;
  uint64_t bytes;
  std::string file;
};

[[noreturn]] void fail_file(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kFormat, "'" + path + "': " + what);
}

// Parses one safetensors file: u64 header length, JSON header, data.
void read_safetensors(const std::shared_ptr<MappedFile>& map, std::map<std::string, SafeTensor>* out) {
  const std::string& path = map->path();
  const uint64_t size = map->size();
  if (size < 8) fail_file(path, "truncated: " + std::to_string(size) + " bytes, a safetensors file has at least 8");
  uint64_t hlen;
  std::memcpy(&hlen, map->data(), 8);
  if (hlen > size - 8 || hlen > (uint64_t{100} << 20)) {
    fail_file(path, "header length " + std::to_string(hlen) + " exceeds the file (" + std::to_string(size) + " bytes)");
  }
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(map->data() + 8, map->data() + 8 + hlen);
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) fail_file(path, "header is not a JSON object");
  const uint64_t base = 8 + hlen;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = "tensor '" + it.key() + "'";
    const auto& j = it.value();
    SafeTensor t;
    t.file = path;
    std::string dtype;
    std::vector<uint64_t> offs;
    try {
      dtype = j.at("dtype").get<std::string>();
      for (auto d : j.at("shape").get<std::vector<int64_t>>()) t.shape.push_back(d);
      offs = j.at("data_offsets").get<std::vector<uint64_t>>();
    } catch (const nlohmann::json::exception& e) {
      fail_file(path, where + ": bad entry: " + e.what());
    }
    if (dtype == "F32") t.type = QType::kF32;
    else if (dtype == "F16") t.type = QType::kF16;
    else if (dtype == "BF16") t.type = QType::kBF16;
    else throw Error(ErrorCode::kUnsupported, "'" + path + "': " + where + " has dtype " + dtype + " (supported: F32, F16, BF16)");
    if (offs.size() != 2 || offs[0] > offs[1] || offs[1] > size - base) {
      fail_file(path, where + ": data offsets lie outside the file (" + std::to_string(size - base) + " data bytes)");
    }
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d <= 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) fail_file(path, where + ": bad shape");
    }
    const uint64_t elem = qtype_info(t.type).block_bytes;
    uint64_t expect;
    if (__builtin_mul_overflow(n, elem, &expect) || expect != offs[1] - offs[0]) {
      fail_file(path, where + ": " + std::to_string(offs[1] - offs[0]) + " data bytes do not match its shape and dtype");
    }
    t.data = map->data() + base + offs[0];
    t.bytes = expect;
    (*out)[it.key()] = t;
  }
}

int get_int(const nlohmann::json& cfg, const char* key, const std::string& path, std::optional<int> fallback = std::nullopt) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail_file(path, std::string("missing '") + key + "'");
  }
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) return (*it)[0].get<int>();  // e.g. eos_token_id list
  if (!it->is_number_integer()) fail_file(path, std::string("'") + key + "' is not an integer: " + it->dump());
  return it->get<int>();
}

}  // namespace

ImportedModel import_hf(const std::string& dir, const ImportOptions& options) {
  ImportedModel m;
  m.format = SourceFormat::kHf;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!file_exists(cfg_path)) throw Error(ErrorCode::kIo, "'" + dir + "' has no config.json (not a Hugging Face model directory)");
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    fail_file(cfg_path, std::string("not valid JSON: ") + e.what());
  }
  std::string model_type = cfg.value("model_type", "");
  std::string arch_name;
  if (cfg.contains("architectures") && cfg["architectures"].is_array() && !cfg["architectures"].empty()) {
    arch_name = cfg["architectures"][0].get<std::string>();
  }
  static const std::set<std::string> kLlamaArchs = {"LlamaForCausalLM", "MistralForCausalLM"};
  if (!kLlamaArchs.count(arch_name) && model_type != "llama" && model_type != "mistral") {
    throw Error(ErrorCode::kUnsupported, "'" + cfg_path + "': unknown architecture '" + arch_name + "' (model_type '" +
                                             model_type + "'); supported: LlamaForCausalLM, MistralForCausalLM");
  }
  if (cfg.value("attention_bias", false) || cfg.value("mlp_bias", false)) {
    throw Error(ErrorCode::kUnsupported, "'" + cfg_path + "': attention/MLP biases are not supported");
  }
  if (cfg.contains("hidden_act") && cfg["hidden_act"] != "silu") {
    throw Error(ErrorCode::kUnsupported, "'" + cfg_path + "': hidden_act " + cfg["hidden_act"].dump() + " is not supported (silu)");
  }
  ModelConfig& c = m.config;
  c.n_vocab = get_int(cfg, "vocab_size", cfg_path);
  c.n_embd = get_int(cfg, "hidden_size", cfg_path);
  c.n_layers = get_int(cfg, "num_hidden_layers", cfg_path);
  c.n_heads = get_int(cfg, "num_attention_heads", cfg_path);
  c.n_kv_heads = get_int(cfg, "num_key_value_heads", cfg_path, c.n_heads);
  c.head_dim = get_int(cfg, "head_dim", cfg_path, c.n_heads > 0 ? c.n_embd / c.n_heads : 0);
  c.n_ff = get_int(cfg, "intermediate_size", cfg_path);
  c.n_ctx = get_int(cfg, "max_position_embeddings", cfg_path, 2048);
  c.norm_eps = cfg.value("rms_norm_eps", 1e-6f);
  c.bos_id = get_int(cfg, "bos_token_id", cfg_path, 1);
  c.eos_id = get_int(cfg, "eos_token_id", cfg_path, 2);
  c.tied_embeddings = cfg.value("tie_word_embeddings", false);
  // RoPE: the classic "rope_theta" or the transformers-5 "rope_parameters" object.
  nlohmann::json rope = cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object() ? cfg["rope_parameters"]
                                                                                             : nlohmann::json::object();
  if (cfg.contains("rope_scaling") && cfg["rope_scaling"].is_object()) rope.update(cfg["rope_scaling"]);
  const std::string rope_type = rope.value("rope_type", rope.value("type", std::string("default")));
  if (rope_type != "default") {
    throw Error(ErrorCode::kUnsupported, "'" + cfg_path + "': RoPE scaling '" + rope_type + "' is not supported yet");
  }
  c.rope_theta = rope.value("rope_theta", cfg.value("rope_theta", 10000.0f));
  c.validate();

  // Tensors: sharded through the index, or one model.safetensors.
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shard_files;
  if (fs::exists(index_path)) {
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_file(index_path.string()));
    } catch (const nlohmann::json::exception& e) {
      fail_file(index_path.string(), std::string("not valid JSON: ") + e.what());
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) fail_file(index_path.string(), "no weight_map");
    std::set<std::string> seen;
    for (auto& [name, file] : index["weight_map"].items()) {
      (void)name;
      const std::string f = file.get<std::string>();
      if (seen.insert(f).second) shard_files.push_back(f);
    }
  } else {
    shard_files.push_back("model.safetensors");
  }
  std::map<std::string, SafeTensor> all;
  for (const std::string& f : shard_files) {
    const std::string p = (fs::path(dir) / f).string();
    if (!file_exists(p)) {
      throw Error(ErrorCode::kIo, "missing shard '" + p + "'" +
                                      (fs::exists(index_path) ? " (listed in model.safetensors.index.json)" : ""));
    }
    auto map = std::make_shared<MappedFile>(p);
    read_safetensors(map, &all);
    m.files.push_back(map);
  }

  auto take = [&](const std::string& hf_name, const std::string& name) {
    auto it = all.find(hf_name);
    if (it == all.end()) throw Error(ErrorCode::kFormat, "'" + dir + "': tensor '" + hf_name + "' is missing from the safetensors files");
    SourceTensor t;
    t.name = name;
    t.shape = it->second.shape;
    t.src_type = it->second.type;
    t.data = it->second.data;
    m.tensors.push_back(t);
    all.erase(it);
  };
  using namespace tensor_names;
  take("model.embed_tokens.weight", kTokEmbd);
  take("model.norm.weight", kOutputNorm);
  if (all.count("lm_head.weight")) {
    take("lm_head.weight", kOutput);
    c.tied_embeddings = false;
  } else {
    c.tied_embeddings = true;
  }
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    take(p + "input_layernorm.weight", layer(i, kAttnNorm));
    take(p + "self_attn.q_proj.weight", layer(i, kAttnQ));
    take(p + "self_attn.k_proj.weight", layer(i, kAttnK));
    take(p + "self_attn.v_proj.weight", layer(i, kAttnV));
    take(p + "self_attn.o_proj.weight", layer(i, kAttnO));
    take(p + "post_attention_layernorm.weight", layer(i, kFfnNorm));
    take(p + "mlp.gate_proj.weight", layer(i, kFfnGate));
    take(p + "mlp.up_proj.weight", layer(i, kFfnUp));
    take(p + "mlp.down_proj.weight", layer(i, kFfnDown));
  }
  for (const auto& [name, t] : all) {
    (void)t;
    if (name.find("rotary_emb.inv_freq") == std::string::npos) {
      throw Error(ErrorCode::kUnsupported, "'" + dir + "': unexpected tensor '" + name + "' (not part of a Llama model)");
    }
  }

  std::string tok_path = options.tokenizer_path.empty() ? (fs::path(dir) / "tokenizer.model").string() : options.tokenizer_path;
  if (!file_exists(tok_path)) {
    throw Error(ErrorCode::kIo, "'" + dir + "' has no tokenizer.model (only SentencePiece tokenizers are supported so far)");
  }
  m.tokenizer_proto = read_file(tok_path);
  m.provenance = {{"source", dir}, {"architecture", arch_name}};
  return m;
}

}  // namespace mxlm
