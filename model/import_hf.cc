// Hugging Face import: config.json + model.safetensors or sharded safetensors with
// model.safetensors.index.json, plus tokenizer.model (SentencePiece).
//
// Every input here is untrusted (a downloaded model directory), so: shard names from the index
// must be relative paths inside the directory (no absolute paths, no ".."), a tensor may appear
// in only one shard (and where the index says), JSON objects may not repeat a key, and every
// config value is checked for its JSON type and range (no silent truncation of 3.7 or 1e10).
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "base/error.h"
#include "model/import.h"

namespace mxlm {

namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail_file(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kFormat, "'" + path + "': " + what);
}

std::string shown(const std::string& s) { return s.size() > 64 ? s.substr(0, 64) + "..." : s; }

// Parses JSON text, rejecting a key repeated inside one object (nlohmann would keep the last
// one silently: a second "lm_head.weight" entry could shadow the first).
nlohmann::json parse_json_strict(const char* first, const char* last, const std::string& path) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    switch (ev) {
      case nlohmann::json::parse_event_t::object_start: keys.emplace_back(); break;
      case nlohmann::json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second) {
          fail_file(path, "JSON key '" + shown(parsed.get<std::string>()) + "' appears twice in one object");
        }
        break;
      default: break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(first, last, cb);
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, std::string("not valid JSON: ") + e.what());
  }
}

// An integer config field: absent or null gives the fallback (or an error when there is none);
// a list (eos_token_id: [2, 32000]) gives its first element.
int config_int(const nlohmann::json& cfg, const char* key, const std::string& path, int64_t lo, int64_t hi,
               std::optional<int> fallback = std::nullopt) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail_file(path, std::string("missing '") + key + "'");
  }
  const nlohmann::json* v = &*it;
  if (v->is_array()) {
    if (v->empty()) fail_file(path, std::string("'") + key + "' is an empty list");
    v = &(*v)[0];
  }
  try {
    return static_cast<int>(json_int(*v, std::string("config ") + key, lo, hi));
  } catch (const Error& e) {
    fail_file(path, e.what());
  }
}

// A typed optional field: absent or null gives the fallback.
template <typename T, typename Get>
T config_opt(const nlohmann::json& obj, const char* key, const std::string& path, T fallback, Get get) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  try {
    return get(*it, std::string("config ") + key);
  } catch (const Error& e) {
    fail_file(path, e.what());
  }
}

std::string opt_string(const nlohmann::json& obj, const char* key, const std::string& path, const std::string& fallback) {
  return config_opt<std::string>(obj, key, path, fallback, json_string);
}

}  // namespace

namespace hf {

void read_safetensors(const MappedFile& map, std::map<std::string, SafeTensor>* out) {
  const std::string& path = map.path();
  const uint64_t size = map.size();
  if (size < 8) fail_file(path, "truncated: " + std::to_string(size) + " bytes, a safetensors file has at least 8");
  uint64_t hlen;
  std::memcpy(&hlen, map.data(), 8);
  if (hlen > size - 8 || hlen > (uint64_t{100} << 20)) {
    fail_file(path, "header length " + std::to_string(hlen) + " exceeds the file (" + std::to_string(size) +
                        " bytes) or the 100 MiB limit");
  }
  const auto* text = reinterpret_cast<const char*>(map.data() + 8);
  const nlohmann::json h = parse_json_strict(text, text + hlen, path);
  if (!h.is_object()) fail_file(path, "header is not a JSON object");
  const uint64_t base = 8 + hlen;
  const uint64_t data_bytes = size - base;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = "tensor '" + shown(it.key()) + "'";
    const auto& j = it.value();
    if (!j.is_object() || !j.contains("dtype") || !j.contains("shape") || !j.contains("data_offsets")) {
      fail_file(path, where + ": expected an object with dtype, shape and data_offsets");
    }
    SafeTensor t;
    t.file = path;
    const std::string dtype = [&] {
      try {
        return json_string(j["dtype"], where + " dtype");
      } catch (const Error& e) {
        fail_file(path, e.what());
      }
    }();
    if (dtype == "F32") t.type = QType::kF32;
    else if (dtype == "F16") t.type = QType::kF16;
    else if (dtype == "BF16") t.type = QType::kBF16;
    else throw Error(ErrorCode::kUnsupported, "'" + path + "': " + where + " has dtype " + shown(dtype) + " (supported: F32, F16, BF16)");
    const auto& jshape = j["shape"];
    const auto& joffs = j["data_offsets"];
    if (!jshape.is_array() || jshape.size() > 8) fail_file(path, where + ": shape " + shown(jshape.dump()) + " is not a list of up to 8 sizes");
    if (!joffs.is_array() || joffs.size() != 2) fail_file(path, where + ": data_offsets " + shown(joffs.dump()) + " is not a pair");
    uint64_t begin = 0, end = 0;
    try {
      for (const auto& d : jshape) t.shape.push_back(json_int(d, where + " dimension", 1, int64_t{1} << 40));
      begin = json_uint(joffs[0], where + " data_offsets[0]", data_bytes);
      end = json_uint(joffs[1], where + " data_offsets[1]", data_bytes);
    } catch (const Error& e) {
      fail_file(path, std::string(e.what()) + " (the file has " + std::to_string(data_bytes) + " data bytes)");
    }
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) fail_file(path, where + ": the element count overflows 64 bits");
    }
    if (begin > end) fail_file(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ") are reversed");
    const uint64_t elem = static_cast<uint64_t>(qtype_info(t.type).block_bytes);
    uint64_t expect;
    if (__builtin_mul_overflow(n, elem, &expect) || expect != end - begin) {
      fail_file(path, where + ": " + std::to_string(end - begin) + " data bytes do not match its shape and dtype");
    }
    // The data may sit at any alignment (the header length is arbitrary): readers of SourceTensor
    // data copy it out (read_source_row) and never dereference it as uint16_t/float in place.
    t.data = map.data() + base + begin;
    t.bytes = expect;
    auto [pos, inserted] = out->emplace(it.key(), t);
    if (!inserted) {
      fail_file(path, where + " is also in '" + pos->second.file + "': a tensor may appear in only one shard");
    }
  }
}

ModelConfig parse_config(const std::string& text, const std::string& path, std::string* arch_name) {
  const nlohmann::json cfg = parse_json_strict(text.data(), text.data() + text.size(), path);
  if (!cfg.is_object()) fail_file(path, "not a JSON object");
  const std::string model_type = opt_string(cfg, "model_type", path, "");
  std::string arch;
  if (auto it = cfg.find("architectures"); it != cfg.end() && !it->is_null()) {
    if (!it->is_array()) fail_file(path, "'architectures' is not a list: " + shown(it->dump()));
    if (!it->empty()) {
      try {
        arch = json_string((*it)[0], "config architectures[0]");
      } catch (const Error& e) {
        fail_file(path, e.what());
      }
    }
  }
  static const std::set<std::string> kLlamaArchs = {"LlamaForCausalLM", "MistralForCausalLM"};
  if (!kLlamaArchs.count(arch) && model_type != "llama" && model_type != "mistral") {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': unknown architecture '" + shown(arch) + "' (model_type '" +
                                             shown(model_type) + "'); supported: LlamaForCausalLM, MistralForCausalLM");
  }
  if (config_opt<bool>(cfg, "attention_bias", path, false, json_bool) || config_opt<bool>(cfg, "mlp_bias", path, false, json_bool)) {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': attention/MLP biases are not supported");
  }
  if (const std::string act = opt_string(cfg, "hidden_act", path, "silu"); act != "silu") {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': hidden_act '" + shown(act) + "' is not supported (silu)");
  }
  // Sizes are bounded by int here; validate() applies the model limits with their own message.
  constexpr int64_t kMax = INT32_MAX;
  ModelConfig c;
  c.n_vocab = config_int(cfg, "vocab_size", path, 1, kMax);
  c.n_embd = config_int(cfg, "hidden_size", path, 1, kMax);
  c.n_layers = config_int(cfg, "num_hidden_layers", path, 1, kMax);
  c.n_heads = config_int(cfg, "num_attention_heads", path, 1, kMax);
  c.n_kv_heads = config_int(cfg, "num_key_value_heads", path, 1, kMax, c.n_heads);
  c.head_dim = config_int(cfg, "head_dim", path, 1, kMax, c.n_embd / c.n_heads);
  c.n_ff = config_int(cfg, "intermediate_size", path, 1, kMax);
  c.n_ctx = config_int(cfg, "max_position_embeddings", path, 1, kMax, 2048);
  c.norm_eps = config_opt<float>(cfg, "rms_norm_eps", path, 1e-6f, json_float);
  c.bos_id = config_int(cfg, "bos_token_id", path, -1, kMax, 1);
  c.eos_id = config_int(cfg, "eos_token_id", path, -1, kMax, 2);
  c.tied_embeddings = config_opt<bool>(cfg, "tie_word_embeddings", path, false, json_bool);
  // RoPE: the classic "rope_theta" or the transformers-5 "rope_parameters" object.
  nlohmann::json rope = nlohmann::json::object();
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) continue;
    if (!it->is_object()) fail_file(path, std::string("'") + key + "' is not an object: " + shown(it->dump()));
    rope.update(*it);
  }
  const std::string rope_type = opt_string(rope, "rope_type", path, opt_string(rope, "type", path, "default"));
  if (rope_type != "default") {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': RoPE scaling '" + shown(rope_type) + "' is not supported yet");
  }
  c.rope_theta = config_opt<float>(rope, "rope_theta", path, config_opt<float>(cfg, "rope_theta", path, 10000.0f, json_float),
                                   json_float);
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.code(), "'" + path + "': " + e.what());
  }
  if (arch_name) *arch_name = arch;
  return c;
}

void check_shard_name(const std::string& name, const std::string& index_path) {
  auto bad = [&](const std::string& why) {
    fail_file(index_path, "shard path '" + shown(name) + "' " + why + "; shards must be relative paths inside the model directory");
  };
  if (name.empty()) bad("is empty");
  if (name.find('\0') != std::string::npos) bad("contains a NUL byte");
  const fs::path p(name);
  if (p.is_absolute() || p.has_root_path() || name[0] == '/') bad("is absolute");
  for (const auto& part : p) {
    if (part == "..") bad("contains '..'");
  }
}

std::vector<std::string> parse_index(const std::string& text, const std::string& path,
                                     std::map<std::string, std::string>* weight_map) {
  const nlohmann::json index = parse_json_strict(text.data(), text.data() + text.size(), path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail_file(path, "no weight_map object");
  }
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) fail_file(path, "weight_map entry '" + shown(name) + "' is not a file name: " + shown(file.dump()));
    const std::string f = file.get<std::string>();
    check_shard_name(f, path);
    if (seen.insert(f).second) shards.push_back(f);
    if (weight_map) (*weight_map)[name] = f;
  }
  if (shards.empty()) fail_file(path, "weight_map is empty");
  return shards;
}

}  // namespace hf

namespace hf {

std::string read_chat_template(const std::string& dir) {
  const std::string jinja_path = (fs::path(dir) / "chat_template.jinja").string();
  if (file_exists(jinja_path)) return read_file(jinja_path);
  const std::string cfg_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (!file_exists(cfg_path)) return "";
  const nlohmann::json cfg = nlohmann::json::parse(read_file(cfg_path), nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) throw Error(ErrorCode::kFormat, "'" + cfg_path + "' is not a JSON object");
  const auto it = cfg.find("chat_template");
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    std::string first;
    for (const auto& e : *it) {
      if (!e.is_object() || !e.contains("template") || !e["template"].is_string()) continue;
      if (e.value("name", "") == "default") return e["template"].get<std::string>();
      if (first.empty()) first = e["template"].get<std::string>();
    }
    return first;
  }
  throw Error(ErrorCode::kFormat, "'" + cfg_path + "': \"chat_template\" is neither a string nor a list of named templates");
}

}  // namespace hf

ImportedModel import_hf(const std::string& dir, const ImportOptions& options) {
  ImportedModel m;
  m.format = SourceFormat::kHf;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!file_exists(cfg_path)) throw Error(ErrorCode::kIo, "'" + dir + "' has no config.json (not a Hugging Face model directory)");
  std::string arch_name;
  m.config = hf::parse_config(read_file(cfg_path), cfg_path, &arch_name);
  ModelConfig& c = m.config;

  // Tensors: sharded through the index, or one model.safetensors.
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const bool sharded = fs::exists(index_path);
  std::vector<std::string> shard_files;
  std::map<std::string, std::string> weight_map;
  if (sharded) {
    shard_files = hf::parse_index(read_file(index_path.string()), index_path.string(), &weight_map);
  } else {
    shard_files.push_back("model.safetensors");
  }
  std::map<std::string, hf::SafeTensor> all;
  for (const std::string& f : shard_files) {
    const std::string p = (fs::path(dir) / f).string();
    if (!file_exists(p)) {
      throw Error(ErrorCode::kIo, "missing shard '" + p + "'" + (sharded ? " (listed in model.safetensors.index.json)" : ""));
    }
    auto map = std::make_shared<MappedFile>(p);
    hf::read_safetensors(*map, &all);
    m.files.push_back(map);
  }
  // A tensor must be in the shard the index names (a mismatch means a stale or forged index).
  for (const auto& [name, f] : weight_map) {
    auto it = all.find(name);
    if (it != all.end() && it->second.file != (fs::path(dir) / f).string()) {
      fail_file(index_path.string(), "tensor '" + shown(name) + "' is listed in '" + f + "' but found in '" + it->second.file + "'");
    }
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
      throw Error(ErrorCode::kUnsupported, "'" + dir + "': unexpected tensor '" + shown(name) + "' (not part of a Llama model)");
    }
  }

  std::string tok_path = options.tokenizer_path.empty() ? (fs::path(dir) / "tokenizer.model").string() : options.tokenizer_path;
  if (!file_exists(tok_path)) {
    throw Error(ErrorCode::kIo, "'" + dir + "' has no tokenizer.model (only SentencePiece tokenizers are supported so far)");
  }
  m.tokenizer_proto = read_file(tok_path);
  m.chat_template = hf::read_chat_template(dir);
  m.provenance = {{"source", dir}, {"architecture", arch_name}};
  return m;
}

}  // namespace mxlm
