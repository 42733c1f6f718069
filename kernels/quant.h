// Quantized formats: the reference quantizers and dequantizers (the spec of each format, see
// qtype.h), per-token int8 activation quantization, and the quantized GEMM kernel table.
//
// M = tokens, N = output features, K = input features; weights are [N][K] rows in a QType's
// row layout. Kernels are pure functions: no allocation, no threads, no logging.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/isa.h"
#include "kernels/qtype.h"

namespace mxlm {

// ---- weights ----------------------------------------------------------------------------------

// Packs G b-bit values q[0..G) (each < 2^b) into a group's bit planes (qtype.h), and back.
void pack_group(int bits, int group, const uint8_t* q, uint8_t* dst);
void unpack_group(int bits, int group, const uint8_t* src, uint8_t* q);

// Quantizes one row of k floats into `dst` (qtype_row_bytes(t, k) bytes) by round-to-nearest
// with a search for each group's scale (and offset) that minimizes the squared error, weighted
// per column by `importance` (k values, null for uniform weights). Codebook formats fit the
// row's codebook by weighted k-means. Float formats convert.
void quantize_row(QType t, const float* x, int64_t k, uint8_t* dst, const float* importance = nullptr);
// quantize_row through the row fit's copy for `isa` (x86-64: baseline, AVX2 and AVX-512 copies;
// quantize_row takes the selected ISA's): false, and nothing written, where this build or CPU
// has none. The copies write the same bytes (tested).
bool quantize_row_with(Isa isa, QType t, const float* x, int64_t k, uint8_t* dst, const float* importance = nullptr);
// The group parameters quantize_row chooses for the same arguments, without the quant indices
// (the GPTQ encoder fixes a row's groups up front and picks the levels itself): d[nb] and, for
// asymmetric formats, m[nb] as floats that are exactly f16 (nb = groups in k; m may be null,
// and is untouched otherwise), and for codebook formats codebook[2^b] (may be null otherwise).
// t must be a quantized (non-float) format, k > 0.
// Two-level formats (qtype.h): row_scales (2 floats, may be null) receives D and M (0 when
// symmetric), and d[g] = D * s, m[g] = M * o exactly as dequantization computes them.
void quantize_row_params(QType t, const float* x, int64_t k, const float* importance, float* d, float* m,
                         int8_t* codebook, float* row_scales = nullptr);
// Writes the parameter part of a row (codebook, row scales, group scales and offsets) from
// quantize_row_params' outputs (or d, m of the same form); the quants are left untouched.
void store_row_params(QType t, int64_t k, const float* d, const float* m, const int8_t* codebook,
                      const float* row_scales, uint8_t* dst);
// Byte offsets of the parts of a quantized row of k elements (qtype.h): group scales at d_off,
// offsets at m_off (asymmetric), quants at q_off (nb groups of qbytes).
struct QRowLayout {
  int64_t nb;
  size_t d_off, m_off, q_off;
  int qbytes;
};
QRowLayout qrow_layout(QType t, int64_t k);
// Dequantizes one row (the spec of the format).
void dequantize_row(QType t, const uint8_t* row, int64_t k, float* dst);

// ---- activations ------------------------------------------------------------------------------

// Activations are quantized per row to int8 in blocks of kActBlock with a float scale per block
// (per_token: one scale for the whole row, stored in every block). A row is padded with zeros
// to act_padded_k(K) (a multiple of the largest group, 128) so that kernels read whole groups.
inline constexpr int kActBlock = 32;
inline constexpr int64_t act_padded_k(int64_t k) { return (k + 127) / 128 * 128; }

// M quantized rows: q[m * kp + i], d[m * kp/32 + b], ds[m * kp/32 + b] = d * sum(q of block b),
// the float product rounded once. Kernels may recover the integer sum as nearbyint(ds / d)
// (exact: |sum| <= 32 * 127 and d is a normal float or 0), so ds must be computed that way.
struct ActQ8 {
  const int8_t* q = nullptr;
  const float* d = nullptr;
  const float* ds = nullptr;
  int64_t kp = 0;
};

// Quantizes one row: q = nearbyint(x * (127 / amax)) with amax over the block (or the whole row
// when per_token), d = amax / 127, ds = d * sum(q). Writes kp values (zeros past k). A block
// whose amax is not above kActTiny (NaN included) quantizes to q = 0, d = 0.
inline constexpr float kActTiny = 1e-30f;
void quantize_act_row_ref(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token);

// ---- kernels ----------------------------------------------------------------------------------

// y[m*ldy + n] = sum_k a[m][k] * W[n][k] for m in [0, M), n in [n0, n1), from quantized
// activations and packed weights: N rows (0 <= n0 <= n1 <= N) every w_row_bytes bytes. Every
// implementation computes each 32-element block's integer dot product exactly; only the float
// combination of blocks (scales, offsets) may differ from the reference in summation order. N
// matters only to kernels that interleave rows (QKernel::pack_rows): it says where the last,
// incomplete group of rows begins.
using QGemmFn = void (*)(int M, int n0, int n1, int N, int64_t K, const ActQ8& a, const uint8_t* w,
                         size_t w_row_bytes, float* y, size_t ldy);
using QuantizeActFn = void (*)(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token);

// The reference GEMM of format t (the spec for the kernels).
void qgemm_ref(QType t, int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes,
               float* y, size_t ldy);

// Load-time repacking of `rows` consecutive rows of k elements (qtype_row_bytes bytes each, every
// `stride` bytes; src and dst distinct) into the layout a kernel reads, in the same bytes. A
// kernel packs its rows in groups of QKernel::pack_rows from the first row (the last group may
// be smaller) and is given one group per call. pack_rows 1: each row alone, a permutation of its
// quant bits (codebook, scales and offsets stay where they are). pack_rows R > 1: a full group's
// R rows become R * row_bytes contiguous bytes from the group's first row (the rest of its
// R * stride bytes untouched) in the kernel's own interleaved order; a smaller last group keeps
// the layout of the kernel's row path: the file's, or each row's own repacking (AVX-512 3-bit;
// see QGemmFn's N). A kernel with a pack function must be given packed
// rows; everything else (dequantize_row, the oneDNN path, embedding lookups) keeps reading the
// file's rows.
using QPackFn = void (*)(const uint8_t* src, uint8_t* dst, int64_t k, int rows, size_t stride);

struct QKernel {
  QGemmFn gemm = nullptr;
  QPackFn pack = nullptr;  // null: gemm reads the file's layout
  int pack_rows = 1;       // rows per call of pack
  Isa isa = Isa::kRef;     // the ISA this kernel was compiled for
};

// The kernel for weights in format t on `isa`: the ISA's own when it has one, else the best
// lower ISA's, else the reference. `isa` must be available. Never null for quantized formats.
QKernel find_qkernel(QType t, Isa isa);
// True when `isa` registered a kernel of its own for t.
bool has_own_qkernel(QType t, Isa isa);
QuantizeActFn find_quantize_act(Isa isa);

// The int8 peak of one core, for benchmarks' ratios: `iters` rounds of the int8 dot instruction
// the ISA's kernels are built on (AVX-512 vpdpbusd, AVX2 vpmaddubsw, NEON sdot or, without the
// dot-product extension, smull + sadalp) over independent register chains, no memory operand.
// Returns the int8 operations done (2 per multiply-add); the chains' sum goes to *sink.
using Int8PeakFn = uint64_t (*)(int64_t iters, int32_t* sink);
// The kernel for `isa` (null for ref, which has no dot instruction).
Int8PeakFn find_int8_peak(Isa isa);

// Registration, called by each ISA's translation units (kernels/simd/*.cc).
void register_qkernel(QType t, Isa isa, QGemmFn fn, QPackFn pack = nullptr, int pack_rows = 1);
void register_quantize_act(Isa isa, QuantizeActFn fn);
void register_int8_peak(Isa isa, Int8PeakFn fn);

}  // namespace mxlm
