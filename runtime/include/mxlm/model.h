// The executor: Model (immutable weights, shareable across threads) and Context (KV cache and
// scratch; used by one thread at a time).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/isa.h"
#include "kernels/qtype.h"
#include "model/config.h"

namespace mxlm {

class MxlmFile;
class Tokenizer;

// A weight matrix [n][k] inside the mapped file, with the kernel-facing description.
struct Weight {
  const uint8_t* data = nullptr;
  QType qtype = QType::kF32;
  int64_t n = 0, k = 0;
  size_t row_bytes = 0;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  Weight wq, wk, wv, wo;
  const float* ffn_norm = nullptr;   // [n_embd]
  Weight gate, up, down;
};

struct LoadOptions {
  bool verify = false;  // recompute every tensor checksum at load
};

class Model {
 public:
  // Maps and validates a .mxlm file, binds every tensor (checking its shape against the config)
  // and loads the embedded tokenizer. Throws Error naming the file and the problem.
  static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& options = {});
  ~Model();

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const MxlmFile& file() const { return *file_; }
  Isa isa() const { return isa_; }
  const Weight& tok_embd() const { return tok_embd_; }
  const Weight& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  uint64_t weight_bytes() const;  // bytes of all tensors (what a token reads, roughly)

 private:
  Model() = default;
  ModelConfig config_;
  std::unique_ptr<MxlmFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Isa isa_ = Isa::kRef;
  Weight tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
};

struct ContextParams {
  int n_ctx = 0;      // 0: the model's trained context
  int n_batch = 512;  // tokens evaluated per forward pass
  int n_threads = 0;  // 0: all cores
};

class Context {
 public:
  explicit Context(std::shared_ptr<const Model> model, const ContextParams& params = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Evaluates `tokens` at positions n_past() .. n_past() + size - 1 (in batches of n_batch) and
  // returns their logits: [size][n_vocab] when all_logits, else [1][n_vocab] for the last token.
  // The pointer stays valid until the next eval. Throws Error (kContextFull) when the tokens do
  // not fit, (kInvalidArgument) for an empty list or an id outside the vocabulary.
  const float* eval(std::span<const int> tokens, bool all_logits = false);

  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  int n_threads() const { return n_threads_; }
  void reset() { n_past_ = 0; }
  const Model& model() const { return *model_; }

 private:
  void forward_batch(const int* tokens, int n, bool all_logits, float* logits_out);
  void matmul(const float* x, int m, const Weight& w, float* y);

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0, n_batch_ = 0, n_threads_ = 1, n_past_ = 0;
  // Per layer: keys [n_ctx][n_kv_heads * head_dim]; values transposed [n_kv_heads * head_dim][n_ctx].
  std::vector<float> k_cache_, v_cache_;
  std::vector<float> rope_cos_, rope_sin_;  // [n_ctx][head_dim / 2]
  std::vector<float> x_, xb_, xb2_, q_, k_, v_, att_out_, hb_, hb2_, scores_;
  std::vector<float> logits_;
};

}  // namespace mxlm
