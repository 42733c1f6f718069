// Activation-aware per-input-channel scaling (AWQ: Lin et al. 2023, "AWQ: Activation-aware
// Weight Quantization for LLM Compression and Acceleration"), as pure functions of weights and
// input statistics, and its exact fold into a Llama model.
//
// A linear layer y = W x (W [n][k]) is unchanged by W' = W·diag(s), x' = x / s (s_j > 0):
// W' x' = W x. Quantizing W' instead of W gives the channels with large s (large activations)
// a relatively finer grid. The input's second moment becomes H' = diag(1/s) H diag(1/s), and the
// output error of an encoding Q(W') is the same in either coordinates:
//   ΔW' = Q(W') − W·diag(s),   the effective weight in the original coordinates is
//   Q(W')·diag(1/s), so ΔW = ΔW'·diag(1/s) and
//   tr(ΔW H ΔWᵀ) = tr(ΔW' diag(1/s) H diag(1/s) ΔW'ᵀ) = tr(ΔW' H' ΔW'ᵀ),
// i.e. output_error(t, Q(W'), W', H') (model/encode.h) IS the error of the scaled encoding
// measured in the original coordinates, and errors before and after scaling compare directly.
//
// Fold (awq_fold): every input whose producer is a per-channel linear map absorbs 1/s into it:
//   attn input  RMSNorm(x)⊙γ_attn feeds q, k, v:  γ'_attn = γ_attn / s, W'_{q,k,v} = W·diag(s)
//   ffn input   RMSNorm(x)⊙γ_ffn feeds gate, up:  γ'_ffn = γ_ffn / s,   W'_{gate,up} = W·diag(s)
//   ffn mid     h = silu(gate·x) ⊙ (up·x) feeds down: up's row j divided by s_j divides h_j by
//               s_j, so W'_up[j,:] = W_up[j,:] / s_j and W'_down = W_down·diag(s)
// (up takes both: its columns from the ffn input's s, its rows from the ffn mid's; they
// commute). The attention output (o's input, a mix of v through softmax weights per head) could
// fold into v's rows only with one scale per v row shared across the GQA group; it is not
// offered here. The model's output is unchanged up to float rounding.
//
// Search (awq_search): AWQ's family s_j = r_j^a / m_j^b / normalization, r_j = sqrt(H_jj) (the
// channel's RMS), m_j = max over the tensors and rows of |W_{:,j}| (b = 0 by default: AWQ's
// published search), normalized to geometric mean 1 (the scales stay centred on 1, the norm
// vectors and weights keep their range). a runs over a grid in [0, 1]; a = b = 0 is s = 1
// (exactly: no scaling), so the chosen s never has a larger objective than no scaling.
// The objective is Σ_t β_t tr(ΔW'_t H' ΔW'_tᵀ) over the tensors reading the input, each encoded
// by encode_tensor with H' (weighted RTN by default; GPTQ optional).
//
// Measurements: see awq.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/qtype.h"
#include "model/encode.h"
#include "model/import.h"

namespace mxlm {

// One tensor reading the input being scaled: W [n][k] row-major f32 (k is the search's k).
struct AwqTensor {
  const float* w = nullptr;
  int64_t n = 0;
  double beta = 1;  // importance weight of its output error in the objective (≥ 0, finite)
};

struct AwqOptions {
  AwqOptions() { encode.method = EncodeMethod::kWeighted; }
  EncodeOptions encode;  // how each candidate is encoded (threads: used by every encode)
  int grid = 20;         // a ∈ {0, 1/grid, …, 1} (grid + 1 points; ≥ 1)
  // b values tried with every a (s_j = r_j^a / m_j^b); {0}: AWQ's activation-only family.
  std::vector<double> weight_exponents = {0.0};
  // r_j and m_j are floored at floor × their maximum (dead or all-zero channels keep a finite
  // scale; with a, b ≤ 1 the scale range is then at most 1/floor^(a+b)). In (0, 1].
  double floor = 1e-3;
};

struct AwqPoint {
  double a = 0, b = 0;
  double error = 0;  // Σ_t β_t tr(ΔW'_t H' ΔW'_tᵀ)
};

struct AwqResult {
  std::vector<float> scales;  // [k]: W' = W·diag(s), x' = x / s; all 1 when nothing helped
  double a = 0, b = 0;        // the chosen exponents (0, 0: no scaling)
  double error_before = 0;    // the objective at s = 1
  double error_after = 0;     // the objective at `scales` (≤ error_before)
  std::vector<double> tensor_before, tensor_after;  // per tensor, unweighted tr(ΔW H ΔWᵀ)
  std::vector<AwqPoint> curve;  // every candidate in the order tried
};

// The family's scales for given exponents (geometric mean 1): h is k×k (its diagonal is read),
// the tensors give m_j. Throws Error(kInvalidArgument) on bad arguments (see awq_search).
std::vector<float> awq_family_scales(const std::vector<AwqTensor>& tensors, const double* h, int64_t k, double a,
                                     double b, double floor = 1e-3);

// Searches s for one input read by `tensors` (all [n_t][k]) with second moment h (k×k
// row-major double, finite, non-negative diagonal, symmetric) for format t. Throws
// Error(kInvalidArgument) for no tensors, a null pointer, n ≤ 0 or k ≤ 0, a negative or
// non-finite β or exponent, grid < 1, floor outside (0, 1], non-finite weights or h.
AwqResult awq_search(const std::vector<AwqTensor>& tensors, const double* h, int64_t k, QType t,
                     const AwqOptions& o = {});

// W [n][k] ← W·diag(s) (columns scaled).
void awq_scale_columns(float* w, int64_t n, int64_t k, const float* s);
// H (k×k row-major) ← diag(1/s) H diag(1/s): H_ij / (s_i s_j).
void awq_transform_h(double* h, int64_t k, const float* s);
// Checks that s has k finite positive entries; throws Error(kInvalidArgument) naming `what`.
void awq_check_scales(const std::vector<float>& s, int64_t k, const std::string& what);

// Per-layer scales for awq_fold; an empty vector leaves that input unscaled.
struct AwqLayerScales {
  std::vector<float> attn_in;  // [n_embd]: attn_norm, q, k, v
  std::vector<float> ffn_in;   // [n_embd]: ffn_norm, gate, up (columns)
  std::vector<float> ffn_mid;  // [n_ff]:   up (rows), down (columns)
};

// A copy of m with the scales folded in: the affected tensors (norm vectors and weights) become
// owned f32 tensors (kept alive through ImportedModel::files, rows already in the rotate-half
// order: rope_unpermute_head_dim = 0), the others still point to m's data (m.files are shared,
// so the result may outlive m). layers.size() must be m.config.n_layers (or 0: a plain copy).
// Throws Error(kInvalidArgument) for a wrong count or size, or a non-finite or non-positive
// scale (naming the layer and input), Error(kFormat) when m lacks a tensor.
ImportedModel awq_fold(const ImportedModel& m, const std::vector<AwqLayerScales>& layers);

}  // namespace mxlm
