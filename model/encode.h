// Weight encoders of the mixed-precision quantizer: pure functions of a weight matrix W [n][k]
// (n = output features, k = input features, row-major f32) and the second moment of the layer's
// input, H = E[x xᵀ] (k × k, row-major double). The quantity every encoder trades against bits
// is the expected output error of the layer,
//
//   E ||ΔW x||² = tr(ΔW H ΔWᵀ) = Σ_r Δw_r H Δw_rᵀ,     ΔW = dequant(bytes) − W,
//
// which output_error() evaluates. Methods:
//   kRtn       quantize_row per row: round to nearest, per-group scale search with uniform weights
//              (minimizes Σ Δw², i.e. H = I).
//   kWeighted  quantize_row with importance diag(H): minimizes Σ_i H_ii Δw_i², the diagonal part
//              of the objective (ignores input correlations).
//   kGptq      GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
//              Generative Pre-trained Transformers"): quantizes one column at a time and spreads
//              its error over the not yet quantized columns through the upper Cholesky factor of
//              H⁻¹, which minimizes the full quadratic form greedily. See encode.cc for the
//              details (damping, act_order, group scales, codebooks) and measurements.
//              Then EncodeOptions::refine passes of coordinate descent (default 4): each weight
//              re-rounded, group params fixed, to the level that minimizes its row's error
//              given all the others' (-19 to -22 % output error on the test layer).
//
// Thread safety: the functions are reentrant; they use OpenMP internally (EncodeOptions::threads)
// and their results do not depend on the thread count (bit-identical bytes). GPTQ's block update
// and output_error use the f32 GEMM kernel of the runtime's ISA (kernels/f32_ops.h, selected_isa),
// so GPTQ bytes may differ between ISAs (e.g. MXLM_ISA=ref vs avx512), never between thread counts.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/qtype.h"

namespace mxlm {

// std::vector's allocator without value-initialization: resize() leaves the elements as they
// are, so the k × k buffers of the prepared inputs below are first touched (their pages faulted
// in and cleared by the kernel) by the parallel loops that fill them, not by one thread's memset.
template <class T>
struct UninitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <class U>
  UninitAllocator(const UninitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(static_cast<A&&>(a)...);
  }
};
template <class T>
using UninitVector = std::vector<T, UninitAllocator<T>>;

enum class EncodeMethod { kRtn, kWeighted, kGptq };
// "rtn", "weighted", "gptq" (stable: they appear in file headers and on the command line).
const char* encode_method_name(EncodeMethod m);

struct EncodeOptions {
  EncodeMethod method = EncodeMethod::kGptq;
  double damp = 0.01;      // GPTQ: fraction of mean(diag H) added to the diagonal (≥ 0)
  bool act_order = true;   // GPTQ: columns in descending diag(H), group scales kept consistent
  int block = 128;         // GPTQ: lazy-update block width (rounded up to a multiple of the group)
  int refine = 4;          // GPTQ: coordinate-descent passes after it (encode.cc: exact
                           // minimization of tr(ΔW H ΔWᵀ) over one weight's levels at a time)
  int threads = 0;         // 0: all cores (OpenMP); the result does not depend on it
};

// What an encode did beyond the bytes (optional output).
struct EncodeStats {
  EncodeMethod method_used = EncodeMethod::kRtn;  // kRtn when kGptq had no h; kWeighted when
                                                  // every damped factorization failed
  double damp_used = 0;        // GPTQ: the damping fraction that factorized (o.damp × 10^retries)
  int damp_retries = 0;        // GPTQ: factorizations that failed before damp_used
  int64_t dead_columns = 0;    // GPTQ: inputs with H_ii == 0 (their weights encode as 0)
};

// Encodes W [n][k] (row-major f32, finite) into format t (any QType; float formats convert):
// returns n * qtype_row_bytes(t, k) bytes, rows in order, each decodable by dequantize_row.
// h: the layer input's second moment E[x xᵀ] (k × k row-major double, symmetric positive
// semi-definite, finite; only (H + Hᵀ)/2 is used), or null. kRtn ignores h; kWeighted uses
// diag(h) as importance (null h: plain RTN); kGptq with null h falls back to kRtn.
// Throws Error(kInvalidArgument) for n or k ≤ 0, a null w, a non-finite weight, a non-finite
// or negative-diagonal h, or bad options (damp < 0, block ≤ 0, threads < 0), and
// Error(kUnsupported) when the output size overflows.
std::vector<uint8_t> encode_tensor(QType t, const float* w, int64_t n, int64_t k, const double* h,
                                   const EncodeOptions& o, EncodeStats* stats = nullptr);

// The output error tr(ΔW H ΔWᵀ) = Σ_r Δw_r H Δw_rᵀ with ΔW = dequant(bytes) − W (h null: H = I,
// the plain squared error, in double; otherwise h's diagonal and lower triangle are read, h
// being symmetric: the diagonal terms are summed in double, the off-diagonal ones come from a
// float GEMM (ΔW · H_offdiag, runtime-dispatched SIMD kernel) and are summed in double: relative
// error 1e-11..1e-9 measured, an estimate to compare encodings whose last digits may differ
// between ISAs). per_row (optional) receives each row's term (resized to n).
// The same argument checks as encode_tensor; `bytes` must hold n * qtype_row_bytes(t, k) bytes.
// Builds the prepared H (below) on every call: callers scoring several encodings against one H
// should prepare it once.
double output_error(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const double* h,
                    std::vector<double>* per_row = nullptr);

// Asymmetric calibration (the idea of GPTAQ, Li et al. 2025): a layer of the quantized model
// sees inputs x̃ that differ from the unquantized model's x by the upstream error δ = x − x̃.
// The encoders minimize tr((W' − Q) H̃ (W' − Q)ᵀ) with H̃ = E[x̃ x̃ᵀ]; taking
//
//   W' = W + W C (H̃ + λI)⁻¹,     C = E[δ x̃ᵀ],   λ = damp · mean(diag H̃),
//
// makes that (up to a constant, and λ) the error against the unquantized model's output,
// E ||W x − Q x̃||²: W' adds to W the part of W δ that is linear in x̃ (a ridge regression of the
// upstream error on the layer's own input), which the quantized layer then cancels. C = 0 gives
// W' = W exactly. w: W [n][k]; h: H̃, c: C (k × k row-major double; C need not be symmetric).
// Throws Error(kInvalidArgument) for bad shapes, non-finite inputs or a damped H̃ that does not
// factorize.
std::vector<float> asymmetric_target(const float* w, int64_t n, int64_t k, const double* h, const double* c,
                                     double damp = 0.01);

// The same with the per-input work done once (the tensors reading one input share it): the
// Cholesky factor of H̃ + λI and C as floats. Null when C is zero (W' = W).
class AsymmetricInput;
std::shared_ptr<const AsymmetricInput> prepare_asymmetric(const double* h, const double* c, int64_t k, double damp = 0.01);
std::vector<float> asymmetric_target(const float* w, int64_t n, int64_t k, const AsymmetricInput& a);

// ---- prepared inputs: work that depends only on H, done once per layer input --------------------
// Tensors that read the same input (q/k/v; gate/up) and every candidate format of a tensor share
// H, so its factorization and float copy can be built once and reused (the objects are
// immutable: share them freely between threads).

// GPTQ's factorization of H under the options' damp and act_order (block and threads do not
// matter): the column order, dead inputs, importance diag(H), the damping that factorized and
// the upper Cholesky factor of H'⁻¹ (stored transposed, as floats).
class GptqFactor {
 public:
  int64_t k() const { return k_; }
  bool factorized() const { return ok_; }   // false: every damped factorization failed
  double damp_used() const { return damp_used_; }
  int damp_retries() const { return retries_; }
  int64_t dead_columns() const { return dead_columns_; }

 private:
  friend std::shared_ptr<const GptqFactor> gptq_factor(const double* h, int64_t k, const EncodeOptions& o);
  friend std::vector<uint8_t> encode_tensor(QType t, const float* w, int64_t n, int64_t k, const GptqFactor& f,
                                            const EncodeOptions& o, EncodeStats* stats);
  int64_t k_ = 0;
  double damp_requested_ = 0;
  bool act_order_ = true;
  bool ok_ = false;
  double damp_used_ = 0;
  int retries_ = 0;
  int64_t dead_columns_ = 0;
  std::vector<int64_t> perm_;  // processing order
  std::vector<char> dead_;     // [k] H_ii == 0
  std::vector<float> imp_;     // [k] diag(H)
  UninitVector<float> ut_;     // [k][k] Uᵀ in processing order: row j = column j of U
  UninitVector<float> hp_;      // [k][k] H in processing order (symmetric, dead inputs zero): refine
};

// Factorizes h (k × k, the same requirements as encode_tensor's h, which must not be null) with
// o.damp and o.act_order, using o.threads (the result does not depend on them). Throws like
// encode_tensor. A failed factorization is not an error: factorized() is false.
std::shared_ptr<const GptqFactor> gptq_factor(const double* h, int64_t k, const EncodeOptions& o);

// encode_tensor with a prepared factor of the layer's H: the same bytes and stats as
// encode_tensor(t, w, n, k, h, o, stats) for the h the factor was built from. o.damp and
// o.act_order must be the factor's (else Error kInvalidArgument); o.method kWeighted uses the
// factor's diag(H), kRtn ignores it.
std::vector<uint8_t> encode_tensor(QType t, const float* w, int64_t n, int64_t k, const GptqFactor& f,
                                   const EncodeOptions& o, EncodeStats* stats = nullptr);

// H prepared for output_error: its off-diagonal part as floats (k × k) and its diagonal in double.
class OutputErrorH {
 public:
  int64_t k() const { return k_; }
  const float* off() const { return off_.data(); }       // [k][k], symmetric, zero diagonal
  const double* diag() const { return diag_.data(); }   // [k]

 private:
  friend std::shared_ptr<const OutputErrorH> prepare_output_error_h(const double* h, int64_t k);
  friend double output_error(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k,
                             const OutputErrorH& h, std::vector<double>* per_row);
  int64_t k_ = 0;
  UninitVector<float> off_;    // [k][k] H's lower triangle mirrored (symmetric), zero diagonal
  std::vector<double> diag_;   // [k]
};

// h: as for output_error (non-null, finite, non-negative diagonal; symmetric, its lower triangle
// and diagonal are read). Throws Error(kInvalidArgument) otherwise.
std::shared_ptr<const OutputErrorH> prepare_output_error_h(const double* h, int64_t k);

// output_error with a prepared H: exactly the value output_error(…, h, per_row) returns for the
// h it was prepared from (which builds one per call).
double output_error(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const OutputErrorH& h,
                    std::vector<double>* per_row = nullptr);

}  // namespace mxlm
