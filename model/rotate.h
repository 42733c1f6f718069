// Orthogonal rotation of a Llama model's residual stream and value heads, folded exactly into
// the weights (QuaRot: Ashkboos et al. 2024; SpinQuant: Liu et al. 2024; the incoherence
// processing of QuIP / QuIP#: Chee et al. 2023, Tseng et al. 2024). Nothing changes at run time:
// the rotated model is another float model with the same output, whose weights quantize better.
//
// Residual rotation R (n_embd × n_embd, orthogonal). Every layer writes to and reads from the
// residual stream h; run the model on h̃ = h·R instead (row vectors):
//   RMSNorm commutes with R once its weight g is folded into the readers: ‖h̃‖ = ‖h‖, so
//   n(h̃) = n(h)·R, and a reader W (rows w_r, y = W·(g ⊙ n(h))) becomes w'_r = (w_r ⊙ g)·R
//   (q, k, v, gate, up, and the output head with the final norm's g); the norm weights become 1.
//   Writers (o, down: y = W·a added to h) become W' = Rᵀ·W, i.e. every column c of W (a row
//   vector over n_embd) becomes c·R. Embedding rows e_t become e_t·R.
// Value-head rotation R₂ (head_dim × head_dim): each head's value v_h (a row) becomes v_h·R₂;
//   attention mixes the values of one head linearly (softmax weights), so its output is rotated
//   by the same R₂ and o's columns for that head absorb it: W'_o[:, head h] = W_o[:, head h]·R₂.
//   In v, every column's head-h segment (a row vector over head_dim) becomes segment·R₂.
//   Keys and queries are not rotated (RoPE acts on them between the matmul and the product).
//
// Why: a trained model's residual stream has a few channels with large activations and weight
// columns of very different scales; a random orthogonal R spreads each row's energy over all
// channels (incoherence), so group-wise quantizers see near-Gaussian groups without outliers,
// and the int8 activations of the kernels lose less to a few large channels. Measured: see
// rotate.cc.
//
// R = D·(Q_m ⊗ H_p)/√p for n = m·p, p the largest power of two dividing n: D a random ±1
// diagonal, H_p the Walsh-Hadamard matrix (applied by the fast transform, O(n log n) per row),
// Q_m a random orthogonal m×m matrix (Householder QR of a Gaussian matrix; 1 when m = 1). The
// seed fixes everything (own generator and Box-Muller: the same file on every platform).
#pragma once

#include <cstdint>
#include <vector>

#include "model/import.h"

namespace mxlm {

// In-place Walsh-Hadamard transform of p (a power of two) values, unnormalized: v <- v·W by
// butterflies of doubling span. Also rotates the KV cache's rows (runtime/kv_cache.h).
template <class T>
void fwht(T* v, int64_t p) {
  for (int64_t h = 1; h < p; h *= 2) {
    for (int64_t i = 0; i < p; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const T a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

class Rotation {
 public:
  // Throws Error(kInvalidArgument) for n < 1 or n > 2^20.
  Rotation(int64_t n, uint64_t seed);
  int64_t size() const { return n_; }
  // v ← v·R for a row vector v of size() elements.
  void apply(double* v) const;
  // The matrix itself (row-major n×n): row i is e_i·R. For tests and small n.
  std::vector<double> matrix() const;

 private:
  int64_t n_ = 0, p_ = 0, m_ = 0;
  std::vector<double> sign_;  // ±1 per element
  std::vector<double> q_;     // m×m row-major (Q[a][c])
};

struct RotateOptions {
  uint64_t seed = 0x6d786c6d726f74ULL;  // "mxlmrot"
  bool residual = true;    // R over n_embd
  bool value_heads = true; // R₂ over head_dim in v and o
};

// A copy of m with the rotations folded in (all 2-D weights and the norm vectors become owned
// f32 tensors, kept alive through ImportedModel::files; RoPE rows already in the rotate-half
// order). provenance["rotation"] records what was done. Throws Error(kInvalidArgument) when
// the output head is tied to the embedding (a rotated head needs the final norm folded in,
// which the embedding cannot take: untie the head first), Error(kFormat) when a tensor is
// missing or has the wrong shape.
ImportedModel rotate_model(const ImportedModel& m, const RotateOptions& o = {});

}  // namespace mxlm
