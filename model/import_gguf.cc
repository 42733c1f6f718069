// GGUF import (architecture "llama", tensors F32/F16/BF16, SentencePiece-style vocabulary).
#include <cmath>
#include <limits>
#include <map>

#include "base/error.h"
#include "model/gguf.h"
#include "model/import.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

ImportedModel import_gguf(const std::string& path, const ImportOptions& options) {
  return import_gguf(std::make_shared<const gguf::File>(path), options);
}

ImportedModel import_gguf(std::shared_ptr<const gguf::File> file, const ImportOptions& options) {
  const gguf::File& g = *file;
  const std::string& path = g.path();
  const std::string arch = g.get("general.architecture").as_string("general.architecture");
  if (arch != "llama") {
    throw Error(ErrorCode::kUnsupported, "'" + path + "': unknown architecture '" + arch + "' (supported: llama)");
  }
  auto int_key = [&](const std::string& key, std::optional<int64_t> fallback = std::nullopt) -> int {
    const gguf::Value* v = g.find(key);
    if (!v) {
      if (fallback) return static_cast<int>(*fallback);
      throw Error(ErrorCode::kFormat, "'" + path + "': missing key '" + key + "'");
    }
    const int64_t x = v->as_int(key);
    if (x < -1 || x > (int64_t{1} << 30)) throw Error(ErrorCode::kFormat, "'" + path + "': " + key + " = " + std::to_string(x) + " is out of range");
    return static_cast<int>(x);
  };
  ModelConfig c;
  c.n_embd = int_key("llama.embedding_length");
  c.n_layers = int_key("llama.block_count");
  c.n_ff = int_key("llama.feed_forward_length");
  c.n_heads = int_key("llama.attention.head_count");
  c.n_kv_heads = int_key("llama.attention.head_count_kv", c.n_heads);
  c.n_ctx = int_key("llama.context_length", 2048);
  c.head_dim = c.n_heads > 0 ? c.n_embd / c.n_heads : 0;
  if (const gguf::Value* v = g.find("llama.rope.dimension_count")) {
    const int64_t rot = v->as_int("llama.rope.dimension_count");
    if (rot != c.head_dim) {
      throw Error(ErrorCode::kUnsupported, "'" + path + "': partial RoPE (dimension_count " + std::to_string(rot) +
                                               " != head_dim " + std::to_string(c.head_dim) + ") is not supported");
    }
  }
  // A double outside the float range does not convert (undefined behaviour): check first.
  auto float_key = [&](const std::string& key, float* out) {
    const gguf::Value* v = g.find(key);
    if (!v) return;
    const double x = v->as_float(key);
    if (!(std::fabs(x) <= static_cast<double>(std::numeric_limits<float>::max()))) {
      throw Error(ErrorCode::kFormat, "'" + path + "': " + key + " = " + std::to_string(x) + " is not a finite float32");
    }
    *out = static_cast<float>(x);
  };
  float_key("llama.attention.layer_norm_rms_epsilon", &c.norm_eps);
  float_key("llama.rope.freq_base", &c.rope_theta);

  std::vector<VocabEntry> vocab;
  SpmBuildOptions spm;
  gguf::read_spm_vocab(g, &vocab, &spm);
  c.n_vocab = int_key("llama.vocab_size", static_cast<int64_t>(vocab.size()));
  c.bos_id = spm.bos_id;
  c.eos_id = spm.eos_id;

  ImportedModel m;
  m.format = SourceFormat::kGguf;
  std::map<std::string, const gguf::TensorInfo*> by_name;
  for (const auto& t : g.tensors()) by_name[t.name] = &t;
  c.tied_embeddings = by_name.count("output.weight") == 0;
  m.config = c;
  try {
    m.config.validate();
  } catch (const Error& e) {
    throw Error(e.code(), "'" + path + "': " + e.what());
  }

  auto take = [&](const std::string& gname, const std::string& name, int rope_head_dim = 0) {
    auto it = by_name.find(gname);
    if (it == by_name.end()) throw Error(ErrorCode::kFormat, "'" + path + "': tensor '" + gname + "' is missing");
    const gguf::TensorInfo& ti = *it->second;
    SourceTensor t;
    t.name = name;
    switch (ti.type) {
      case gguf::kGgmlF32: t.src_type = QType::kF32; break;
      case gguf::kGgmlF16: t.src_type = QType::kF16; break;
      case gguf::kGgmlBF16: t.src_type = QType::kBF16; break;
      default:
        throw Error(ErrorCode::kUnsupported, "'" + path + "': tensor '" + gname + "' has type " + gguf::ggml_type_name(ti.type) +
                                                 "; mxlm imports F32, F16 and BF16 GGUF tensors");
    }
    if (ti.ne.empty() || ti.ne.size() > 2) {
      throw Error(ErrorCode::kFormat, "'" + path + "': tensor '" + gname + "' has " + std::to_string(ti.ne.size()) + " dimensions");
    }
    // ggml order: ne[0] is the row length (K), ne[1] the number of rows (N).
    for (auto it2 = ti.ne.rbegin(); it2 != ti.ne.rend(); ++it2) t.shape.push_back(static_cast<int64_t>(*it2));
    t.data = g.tensor_data(ti);
    t.rope_unpermute_head_dim = rope_head_dim;
    m.tensors.push_back(t);
    by_name.erase(it);
  };
  using namespace tensor_names;
  take("token_embd.weight", kTokEmbd);
  take("output_norm.weight", kOutputNorm);
  if (!c.tied_embeddings) take("output.weight", kOutput);
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    take(p + "attn_norm.weight", layer(i, kAttnNorm));
    take(p + "attn_q.weight", layer(i, kAttnQ), c.head_dim);
    take(p + "attn_k.weight", layer(i, kAttnK), c.head_dim);
    take(p + "attn_v.weight", layer(i, kAttnV));
    take(p + "attn_output.weight", layer(i, kAttnO));
    take(p + "ffn_norm.weight", layer(i, kFfnNorm));
    take(p + "ffn_gate.weight", layer(i, kFfnGate));
    take(p + "ffn_up.weight", layer(i, kFfnUp));
    take(p + "ffn_down.weight", layer(i, kFfnDown));
  }
  for (const auto& [name, ti] : by_name) {
    (void)ti;
    if (name != "rope_freqs.weight") throw Error(ErrorCode::kUnsupported, "'" + path + "': unexpected tensor '" + name + "'");
  }
  (void)options;
  m.tokenizer_proto = build_spm_model_proto(vocab, spm);
  m.provenance = {{"source", path}, {"gguf_version", g.version()}};
  if (const gguf::Value* v = g.find("general.name")) m.provenance["name"] = v->as_string("general.name");
  if (const gguf::Value* v = g.find("tokenizer.chat_template")) m.chat_template = v->as_string("tokenizer.chat_template");
  // Keep the mapping alive through a MappedFile-owning holder.
  m.files.push_back(file);
  return m;
}

}  // namespace mxlm
