// Calibration: the statistics of every distinct matmul input over a calibration text, which the
// encoders (model/encode.h) and the sensitivity model of the mixed-precision quantizer read.
//
// For an input x (a token's k activations feeding one or more matmuls) we keep, over the T
// calibration tokens:
//   gram = Σ_t x_t x_tᵀ   (k×k)      E[x xᵀ] = gram / T: GPTQ's H, and the output error of a
//                                    weight change ΔW is tr(ΔW E[x xᵀ] ΔWᵀ) per token
//   diag(gram) / T = E[x²]           importance of each input channel for the scale search
//   amax = max_t |x|                 per channel
// plus how often each token id is an input (the embedding's "input statistics").
//
// Precision: each window's XᵀX (≤ 512 tokens) is a float32 product of our own gemm kernel,
// summed into double across windows. A window's float sum of 512 products has a relative error
// of ~1e-5 at worst on this data, far below the quantization errors it weighs; the double
// running sum keeps it from growing with the token count.
//
// Memory: statistics are taken layer by layer. The hidden states of all calibration tokens are
// held (T × n_embd floats: 16k tokens of a 7B model = 256 MiB) and each layer's statistics
// are handed to `on_layer` as soon as that layer's inputs are complete, so a caller that encodes
// and drops them holds one layer's Gram matrices at a time (a 7B layer: 3 × 4096² + 11008²
// doubles = 1.4 GiB).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

struct InputStats {
  int64_t k = 0;
  int64_t n_tokens = 0;
  std::vector<double> gram;  // Σ x xᵀ, k×k row-major
  std::vector<float> amax;   // max |x| per channel
  // Asymmetric calibration only (CalibParams::asymmetric; else empty): Σ_t δ_t x_tᵀ (k×k
  // row-major), δ = the unquantized model's input minus this one (x). Not saved in files.
  std::vector<double> cross;

  void reset(int64_t k_in);
  // E[x xᵀ] = gram / n_tokens (k×k row-major).
  std::vector<double> second_moment() const;
  // E[x²] per channel.
  std::vector<float> mean_square() const;
  // E[δ xᵀ] = cross / n_tokens (empty when cross is).
  std::vector<double> mean_cross() const;
};

struct LayerStats {
  std::array<InputStats, 4> in;  // by MatmulInput: attn_in, attn_out, ffn_in, ffn_mid
  InputStats& at(MatmulInput i) { return in[static_cast<size_t>(i)]; }
  const InputStats& at(MatmulInput i) const { return in[static_cast<size_t>(i)]; }
};

struct CalibStats {
  std::vector<LayerStats> layers;   // empty entries for layers handed to on_layer
  InputStats head;                  // the output head's input (after the final norm)
  std::vector<uint64_t> token_counts;  // n_vocab: how often each id was an input
  int64_t n_tokens = 0;
  // Where they came from: a hash of the calibration text (or "self-generated:<seed>"), and the
  // fingerprint of the model they were taken on (model_fingerprint).
  std::string source;
  std::string model_fingerprint;
};

// The tokens of a calibration text cut into windows: documents separated by a line holding
// only 0x1E (else the whole text is one document), each BOS + ids + EOS, concatenated and cut
// into windows of `window` tokens, at most n_tokens in all (a last partial window is kept when
// it has at least 64 tokens). Throws Error naming the counts when the text is empty or yields
// fewer than `window` tokens.
std::vector<std::vector<int>> calibration_windows(const Model& model, const std::string& text, int64_t n_tokens, int window);

// Data-free calibration: windows of text the model samples itself (temperature 1, from BOS,
// window i from its own seed derived from `seed` and i, so the text does not depend on the
// thread count; windows are sampled one per thread), for when no calibration text is given.
std::vector<std::vector<int>> self_generated_windows(const Model& model, int64_t n_tokens, int window, uint64_t seed,
                                                     int threads);

struct CalibParams {
  int threads = 0;  // 0: all cores
  // Called with (layer, its statistics) when layer l is complete; the statistics are moved out
  // (CalibStats::layers[l] stays empty). Null: keep them all in the result.
  std::function<void(int, LayerStats&&)> on_layer;
  std::function<void(size_t, size_t)> progress;  // (done, total) over layers + head
  // Sequential calibration (GPTQ's order): called when layer l's statistics are complete (before
  // on_layer) with those statistics; returns the weights layer l's outputs are then recomputed
  // with (its quantized version; it must stay valid until the next call), or null to keep the
  // model's (recomputed then: an encoder that never replaces weights belongs in on_layer). Layer
  // l + 1's statistics are then those of the model whose layers 0..l are quantized, and so are
  // the head's.
  std::function<const LayerWeights*(int, const LayerStats&)> quantize_layer;
  // With quantize_layer: also run the unquantized model over the windows and accumulate, for
  // every input, InputStats::cross = Σ δ xᵀ, δ = its input there minus the one here (the
  // upstream error of the quantized layers; GPTAQ's asymmetric calibration, model/encode.h's
  // asymmetric_target). Zero wherever both models agree (layer 0's attention input).
  bool asymmetric = false;
  // The float weights' matmuls (ContextParams::Prefill::kBf16) and every window's Gram and cross
  // products (F32Kernels::gemm_bf16) in bfloat16: each operand rounded to 8 significant bits,
  // the products exact, summed in f32 per window and in double across windows. About 2x the f32
  // GEMM's speed on AVX-512 (README: what it changes in the statistics and the files).
  bool bf16 = false;
};

// Runs the windows through the model layer by layer, every window's layer l before any window's
// layer l + 1, gathering the statistics of each matmul input.
CalibStats calibrate(const Model& model, const std::vector<std::vector<int>>& windows, const CalibParams& params);

// Identifies a model's weights for statistics files: the config and every tensor's name, shape,
// format and a checksum of its first and last 4 KiB.
std::string model_fingerprint(const ImportedModel& m);
// A short hash of a calibration text.
std::string text_hash(const std::string& text);

// Statistics files (--save-stats / --stats): magic "MXLMSTAT", a JSON header (fingerprint,
// source, token count, shapes), then the arrays in little-endian float64/float32/uint64.
// Written atomically. load_stats throws Error naming the file when it is not a statistics file,
// is truncated, or was taken on a model whose fingerprint differs from `expected_fingerprint`
// (unless it is empty).
void save_stats(const CalibStats& s, const std::string& path);
CalibStats load_stats(const std::string& path, const std::string& expected_fingerprint);

}  // namespace mxlm
