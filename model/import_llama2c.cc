// llama2.c checkpoints: the legacy header (7 int32, weights in f32, a negative vocab size marks
// an unshared classifier) and the v1 "ak42" header (256 bytes, f32 weights, a shared-classifier
// flag). The tokenizer comes from --tokenizer: a sentencepiece .model or a llama2.c .bin.
#include <cstdint>
#include <cstring>

#include "base/error.h"
#include "model/import.h"
#include "tokenizer/tokenizer.h"

namespace mxlm {

namespace {

constexpr uint32_t kAk42Magic = 0x616b3432;

std::string load_tokenizer_proto(const std::string& path, int n_vocab) {
  if (path.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "a llama2.c checkpoint holds no vocabulary: pass --tokenizer with a .model or llama2.c .bin tokenizer");
  }
  const bool bin = path.size() >= 4 && path.compare(path.size() - 4, 4, ".bin") == 0;
  if (!bin) return read_file(path);
  std::vector<VocabEntry> vocab = read_llama2c_tokenizer(path, n_vocab);
  SpmBuildOptions opt;
  return build_spm_model_proto(vocab, opt);
}

}  // namespace

ImportedModel import_llama2c(const std::string& path, const ImportOptions& options) {
  return import_llama2c(std::make_shared<const MappedFile>(path), options);
}

ImportedModel import_llama2c(std::shared_ptr<const MappedFile> map, const ImportOptions& options) {
  const std::string& path = map->path();
  const uint64_t size = map->size();
  if (size < 28) {
    throw Error(ErrorCode::kFormat, "'" + path + "': " + std::to_string(size) +
                                        " bytes is too short for a model file (not GGUF, .mxlm, or a llama2.c checkpoint)");
  }
  int32_t h[7];
  uint32_t magic;
  std::memcpy(&magic, map->data(), 4);
  bool v1 = false, shared = false;
  uint64_t offset = 0;
  if (magic == kAk42Magic) {
    int32_t version;
    std::memcpy(&version, map->data() + 4, 4);
    if (version != 1) {
      throw Error(ErrorCode::kUnsupported, "'" + path + "': llama2.c checkpoint version " + std::to_string(version) +
                                               " is not supported (only the f32 version 1; version 2 is its int8 format)");
    }
    if (size < 256) throw Error(ErrorCode::kFormat, "'" + path + "': truncated llama2.c v1 header");
    std::memcpy(h, map->data() + 8, sizeof(h));
    shared = map->data()[36] != 0;
    offset = 256;
    v1 = true;
  } else {
    std::memcpy(h, map->data(), sizeof(h));
    shared = h[5] > 0;
    // -INT32_MIN overflows: such a header is no model anyway (validate() rejects 0).
    h[5] = h[5] == INT32_MIN ? 0 : h[5] < 0 ? -h[5] : h[5];
    offset = 28;
  }
  ModelConfig c;
  c.n_embd = h[0];
  c.n_ff = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.n_vocab = h[5];
  c.n_ctx = h[6];
  c.tied_embeddings = shared;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  if (c.n_heads <= 0 || c.n_embd % c.n_heads != 0) {
    throw Error(ErrorCode::kFormat, "'" + path + "': not a llama2.c checkpoint (dim " + std::to_string(c.n_embd) +
                                        ", heads " + std::to_string(c.n_heads) + " do not describe a model)");
  }
  c.head_dim = c.n_embd / c.n_heads;
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(ErrorCode::kFormat, "'" + path + "': not a valid llama2.c checkpoint: " + e.what());
  }

  ImportedModel m;
  m.format = SourceFormat::kLlama2c;
  m.config = c;
  const int64_t dim = c.n_embd, kv = int64_t{c.n_kv_heads} * c.head_dim, q = int64_t{c.n_heads} * c.head_dim;
  // Walks the file in order, checking that each tensor fits.
  auto next = [&](const std::string& name, std::vector<int64_t> shape, int rope_head_dim = 0) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    const uint64_t bytes = n * 4;
    if (offset > size || bytes > size - offset) {
      throw Error(ErrorCode::kFormat, "'" + path + "': truncated: tensor '" + name + "' needs bytes [" + std::to_string(offset) +
                                          ", " + std::to_string(offset + bytes) + "), the file has " + std::to_string(size));
    }
    if (!name.empty()) {
      SourceTensor t;
      t.name = name;
      t.shape = std::move(shape);
      t.src_type = QType::kF32;
      t.data = map->data() + offset;
      t.rope_unpermute_head_dim = rope_head_dim;
      m.tensors.push_back(t);
    }
    offset += bytes;
  };
  using namespace tensor_names;
  const int L = c.n_layers;
  auto per_layer = [&](const char* suffix, std::vector<int64_t> shape, int rope = 0) {
    for (int i = 0; i < L; ++i) next(layer(i, suffix), shape, rope);
  };
  if (v1) {
    per_layer(kAttnNorm, {dim});
    per_layer(kFfnNorm, {dim});
    next(kOutputNorm, {dim});
    next(kTokEmbd, {c.n_vocab, dim});
    per_layer(kAttnQ, {q, dim}, c.head_dim);
    per_layer(kAttnK, {kv, dim}, c.head_dim);
    per_layer(kAttnV, {kv, dim});
    per_layer(kAttnO, {dim, q});
    per_layer(kFfnGate, {c.n_ff, dim});
    per_layer(kFfnDown, {dim, c.n_ff});
    per_layer(kFfnUp, {c.n_ff, dim});
    if (!shared) next(kOutput, {c.n_vocab, dim});
  } else {
    next(kTokEmbd, {c.n_vocab, dim});
    per_layer(kAttnNorm, {dim});
    per_layer(kAttnQ, {q, dim}, c.head_dim);
    per_layer(kAttnK, {kv, dim}, c.head_dim);
    per_layer(kAttnV, {kv, dim});
    per_layer(kAttnO, {dim, q});
    per_layer(kFfnNorm, {dim});
    per_layer(kFfnGate, {c.n_ff, dim});
    per_layer(kFfnDown, {dim, c.n_ff});
    per_layer(kFfnUp, {c.n_ff, dim});
    next(kOutputNorm, {dim});
    next("", {c.n_ctx, c.head_dim / 2});  // freq_cis_real (unused: RoPE is recomputed)
    next("", {c.n_ctx, c.head_dim / 2});  // freq_cis_imag
    if (!shared) next(kOutput, {c.n_vocab, dim});
  }
  if (offset != size) {
    throw Error(ErrorCode::kFormat, "'" + path + "': " + std::to_string(size - offset) +
                                        " unexpected bytes after the last tensor (not a llama2.c checkpoint of this shape?)");
  }
  m.tokenizer_proto = load_tokenizer_proto(options.tokenizer_path, c.n_vocab);
  m.files.push_back(map);
  m.provenance = {{"source", path}, {"llama2c_header", v1 ? "v1" : "legacy"}};
  if (!options.tokenizer_path.empty()) m.provenance["tokenizer_source"] = options.tokenizer_path;
  return m;
}

}  // namespace mxlm
