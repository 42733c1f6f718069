// Float32 kernels of the full-precision path, one table per ISA.
//
// M = tokens, N = output features, K = input features; weights are row-major [N][K] in a float
// format (f32, f16 or bf16), one row every w_row_bytes bytes. Pure functions: no allocation,
// no threads (callers split N and M across threads), no logging. Pointers need no alignment.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/isa.h"
#include "kernels/qtype.h"

namespace mxlm {

struct F32Kernels {
  // y[m*ldy + n] = sum_k x[m*ldx + k] * W[n][k]  for m in [0, M), n in [n0, n1).
  // W's rows in wtype: f32, f16, bf16, or a KV cache format (see gemm_nn), dequantized in registers.
  void (*gemm)(int M, int n0, int n1, int K, const float* x, size_t ldx, const void* w, size_t w_row_bytes,
               QType wtype, float* y, size_t ldy);
  // y[m*ldy + n] = sum_k x[m*ldx + k] * B[k][n]  for m in [0, M), n in [0, N): the product with
  // a row-major right operand (attention's P·V over value rows stored per token). B's K rows
  // start every b_row_bytes bytes, each a row of N elements in btype: kF32, kF16, kBF16, or a KV
  // cache format, kQ8G32/kQ8G64/kQ8G128, kQ4AG32 or kQ2AG32, dequantized in registers (qtype.h;
  // the 2-bit keys' blocks are rows of 32 tokens per channel, runtime/kv_cache.h). The SIMD builds compute
  // each y[m][n] as one chain of fused multiply-adds x[m][k] * B[k][n] in ascending k from 0, with
  // B[k][n] dequantized alike whatever the tile, so it depends only on x row m, column n of B and
  // K: identical for a batch and a single row. The quantized KV formats (B[k][n] = d u + o,
  // o = m or -128 d) take a factored form instead: a chain of fma(x[m][k] * d, u, ·) and, per
  // group, a chain of fma(x[m][k], o, ·), added once at the end; still identical for a batch and
  // a single row. The reference accumulates in double.
  // accumulate: y[m][n] += instead of =, the chain starting from y's value (so a product split
  // over ranges of k and accumulated in ascending order rounds as one call over all of them; for
  // the factored formats it rounds once more per call, within the same bound).
  void (*gemm_nn)(int M, int N, int K, const float* x, size_t ldx, const void* b, size_t b_row_bytes, QType btype,
                  float* y, size_t ldy, bool accumulate);
  // Attention scores over int8 keys (kernels/simd/kv_kernels.cc states the arithmetic):
  // y[m*ldy + n] = x[m] · W[n] for n in [0, N), with x's rows quantized to int8 (a scale per 32
  // elements, quantize_act_row_ref's rule) and W's rows in a format gemm_i8_reads, K <=
  // kGemmI8MaxK. The integer dots are exact and the float steps fixed, so the result is bitwise
  // the same on every ISA, for any M, and for any split of N.
  void (*gemm_i8)(int M, int N, int K, const float* x, size_t ldx, const void* w, size_t w_row_bytes, QType wtype,
                  float* y, size_t ldy);
  // y[m*ldy + n] = sum_k x[m*ldx + k] * w[n*ldw + k]  for m in [0, M), n in [n0, n1), with x and
  // w in bfloat16 (element strides ldx, ldw): the products of two bf16 values are exact in f32
  // and summed in f32. AVX-512 runs AVX512-BF16's vdpbf16ps (a lane sums the pairs k = 2l, 2l + 1
  // mod 32, denormal inputs and outputs flushed to zero), AVX2 and NEON widen to f32 and fma, ref
  // sums in double. As in gemm, y[m][n] depends only on x row m, w row n and K, never on the tile
  // or the split of [n0, n1). Twice the multiply-adds per instruction of the f32 fma: the
  // quantizer's statistics passes on large models (ContextParams::Prefill::kBf16).
  void (*gemm_bf16)(int M, int n0, int n1, int K, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, float* y,
                    size_t ldy);
  // dst[i] = src[i] (f32, f16 or bf16, src_type) rounded to bfloat16, to nearest even
  // (f32_to_bf16's rounding; finite inputs).
  void (*to_bf16)(const void* src, QType src_type, uint16_t* dst, size_t n);
  float (*dot)(const float* a, const float* b, int n);
  void (*axpy)(float a, const float* x, float* y, int n);  // y += a * x
  // y = x / sqrt(mean(x^2) + eps) * w   (y may alias x)
  void (*rmsnorm)(const float* x, const float* w, float* y, int n, float eps);
  // out = silu(gate) * up, silu(g) = g / (1 + exp(-g))   (out may alias gate or up)
  void (*swiglu)(const float* gate, const float* up, float* out, int n);
  // x = softmax(x) in place, numerically stable (max subtracted); returns log(sum exp x), the
  // log-sum-exp of the input, max + log(sum exp(x - max)) (-inf for n = 0), with which softmaxes
  // of parts of one row are combined (attention's slices: runtime/attention.h).
  float (*softmax)(float* x, int n);
  // max + log(sum exp(double(x) - max)) in double (-inf for n = 0): the normalizer of a row's
  // log-softmax (runtime/log_softmax.h). The reference sums libm's exp in order; the SIMD copies
  // sum a vector exp in lanes (kernels/simd/sum_exp_inl.h), within the sum's rounding of it.
  double (*log_sum_exp)(const float* x, int n);
  // sum of x[0, n) in any order: eight independent vector sums over a streamed array, so that
  // a core reads memory as fast as it can (the read-bandwidth probe of runtime/bench.cc).
  float (*sum)(const float* x, size_t n);
};

// The key formats gemm_i8 reads: the KV cache's int8 and int4 rows (runtime/kv_cache.h), whose
// elements are exact integers under f16 scales. K is at most kGemmI8MaxK.
constexpr bool gemm_i8_reads(QType t) {
  return t == QType::kQ8G32 || t == QType::kQ8G64 || t == QType::kQ8G128 || t == QType::kQ4AG32;
}
inline constexpr int kGemmI8MaxK = 1024;

// The kernel table for `isa`; `isa` must be available (isa_available).
const F32Kernels& f32_kernels(Isa isa);

}  // namespace mxlm
