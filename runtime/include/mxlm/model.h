// The executor: Model (immutable weights, shareable across threads) and Context (KV cache and
// scratch; used by one thread at a time).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/isa.h"
#include "kernels/qtype.h"
#include "kernels/quant.h"
#include "model/mxlm_file.h"
#include "model/config.h"

namespace mxlm {

class Tokenizer;

// Rows [row_begin, row_end) of a weight in one format, bound to its kernel at load.
struct WeightSegment {
  int64_t row_begin = 0, row_end = 0;
  QType qtype = QType::kF32;
  const uint8_t* data = nullptr;  // first row of the segment, in the file's layout
  size_t row_bytes = 0;
  QGemmFn qgemm = nullptr;        // quantized formats: the kernel for the model's ISA
  const uint8_t* qdata = nullptr; // what qgemm reads: data, or the rows repacked at load
  std::shared_ptr<const uint8_t> packed;  // owns the repacked rows (kernels with a QPackFn)
  Isa kernel_isa = Isa::kRef;
};

// A weight matrix [n][k] inside the mapped file: row segments of one format each, an optional
// row map (stored row i is output row row_map[i]) and optional sparse f16 outliers.
struct Weight {
  int64_t n = 0, k = 0;
  std::vector<WeightSegment> segments;
  const uint8_t* row_map = nullptr;  // int32[n] or null
  TensorOutliers outliers;
  bool any_quantized = false;
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
  // The embedding of token `id` as floats (dequantized, outliers added): n_embd values.
  void embedding_row(int id, float* out) const;
  // "format:isa" of every distinct (format, kernel ISA) pair, for logs ("/repacked" when the
  // kernel reads rows repacked at load).
  std::string kernel_summary() const;

 private:
  Model() = default;
  ModelConfig config_;
  std::unique_ptr<MxlmFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Isa isa_ = Isa::kRef;
  Weight tok_embd_, output_;
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  std::vector<int32_t> embd_stored_row_;  // output row -> stored row, when tok_embd has a row map
};

struct ContextParams {
  int n_ctx = 0;      // 0: the model's trained context
  int n_batch = 512;  // tokens evaluated per forward pass
  int n_threads = 0;  // 0: all cores
  // Activation quantization for quantized weights: one int8 scale per token (row), or one per
  // block of 32 values.
  bool act_per_token = false;
  // Prefill (M >= 16) matmuls: the int8/f32 kernels, or oneDNN's bf16 matmul on weight panels
  // dequantized on each call (forced only; it needs oneDNN and AVX-512, else the Context throws).
  // Auto is a fixed rule, not a measurement, so results never depend on timing: today it is the
  // kernels for every weight (they measured 50-1000x faster than the oneDNN path at M = 16..128;
  // the numbers are in Context::matmul).
  enum class Prefill { kAuto, kKernels, kOneDnn } prefill = Prefill::kAuto;
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
  // Activations feeding one or more matmuls: quantized once, on first use by a quantized weight.
  struct Acts {
    const float* x;
    int m, k;
    bool quantized = false;
  };
  void forward_batch(const int* tokens, int n, bool all_logits, float* logits_out);
  void matmul(Acts& a, const Weight& w, float* y);
  void matmul_dense(Acts& a, const Weight& w, float* out, bool onednn);
  void quantize_acts(Acts& a);

  std::shared_ptr<const Model> model_;
  int n_ctx_ = 0, n_batch_ = 0, n_threads_ = 1, n_past_ = 0;
  // Per layer: keys [n_ctx][n_kv_heads * head_dim]; values transposed [n_kv_heads * head_dim][n_ctx].
  std::vector<float> k_cache_, v_cache_;
  std::vector<float> rope_cos_, rope_sin_;  // [n_ctx][head_dim / 2]
  std::vector<float> x_, xb_, xb2_, q_, k_, v_, att_out_, hb_, hb2_, scores_;
  std::vector<float> logits_;
  bool act_per_token_ = false;
  std::vector<int8_t> aq_;          // [n_batch][kp]
  std::vector<float> ad_, ads_;     // [n_batch][kp / 32]
  std::vector<float> mm_tmp_;       // row-mapped outputs before scattering
  ContextParams::Prefill prefill_ = ContextParams::Prefill::kAuto;
};

}  // namespace mxlm
