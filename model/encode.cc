// Weight encoders: RTN, importance-weighted RTN and GPTQ (see encode.h for the objective).
//
// GPTQ (Frantar et al. 2022). Quantizing column i of W to q_i and correcting the remaining
// columns j > i by the optimal δw = −(w_i − q_i)/[H⁻¹]_ii · [H⁻¹]_{i,:} keeps tr(ΔW H ΔWᵀ)
// minimal given the columns already fixed (OBS). Eliminating the columns in order 0..k−1 turns
// the sequence of shrinking inverses into the rows of the upper Cholesky factor U of H⁻¹
// (H⁻¹ = UᵀU):  e_i = (w_i − q_i) / U_ii,   w_j −= e_i U_ij  (j > i).
// Lazy batches: within a block of `block` columns the updates go to the block's columns only
// (plain loops over the block's diagonal part of U, column by column so that the rows' serial
// chains overlap); the block's errors E (rows × block) reach the columns after it in one
// product W[:, b2:] −= E · U[b1:b2, b2:] on a chunk of 64 rows, by the runtime's f32 GEMM kernel
// (kernels/f32_ops.h: AVX2/AVX-512, while model/ itself is built for baseline x86-64): U is
// stored transposed, so column j of U is a contiguous row of Uᵀ, i.e. the kernel's weight row j
// (K = the block's width, starting at Uᵀ[j][b1]).
//
// Reuse. The factorization (order, dead inputs, damping, Uᵀ) depends only on H, damp and
// act_order: gptq_factor() builds it once for every tensor reading the same input (q/k/v,
// gate/up) and every candidate format; encode_tensor(h) builds one per call.
//
// Factorization (LAPACK dpotrf from OpenBLAS, double). H' = H with H_ii = 1 for dead inputs
// (H_ii = 0, their weights set to 0 as in the paper) plus λ I, λ = damp · mean(diag H'). If
// LLT fails, damp is multiplied by 10 (up to 4 times; EncodeStats reports it); if all fail the
// tensor falls back to weighted RTN. U is obtained without forming H⁻¹: with P the order
// reversal and P H' P = L̃ L̃ᵀ (LLT), H'⁻¹ = (P L̃⁻¹ P)ᵀ (P L̃⁻¹ P) and P L̃⁻¹ P is upper triangular with a
// positive diagonal, so by uniqueness U = P L̃⁻¹ P. Cost k³/3 (LLT) + k³/3 (triangular inverse,
// 64-column chunks of dtrsm in parallel) instead of the paper's k³/3 + k³ + k³/3 (cholesky,
// cholesky_inverse, cholesky again). OpenBLAS picks its kernels for the CPU at run time, where
// Eigen, compiled into the baseline x86-64 model/, ran SSE2 code: GPTQ of a 2048×5632 tensor
// (EncodeBench.DISABLED_Timing, factorization included, 2 threads, AVX2 host under load, the
// two builds run alternately, no peak measured) went from 24.9 / 24.6 s to 16.1 / 10.2 s
// (act_order on), with the same output error to 5 digits. In one process at k = 5632, one
// thread, with the f32 GEMM benchmark at 59.2 / 59.8 GFLOP/s (52 % of its peak) before / after:
// dpotrf 2.20 s against Eigen's LLT 5.31 s, and for the asymmetric targets spotrf 0.78 s against
// 2.19 s and the two strsm solves of 2048 right-hand sides 1.66 s against 5.16 s. Its own threads
// are off (blas_one_thread).
//
// Group parameters. Each group of G contiguous columns shares d (and m); they are f16-rounded
// before any of its columns is quantized, so the error GPTQ compensates is exactly what
// dequantize_row decodes (up to a possible FMA contraction in the asymmetric d·q + m).
//   act_order off: at a group's first column, the group's params come from the CURRENT
//     (error-updated) weights by the format's own search (quantize_row on the G-column row with
//     importance diag(H)); `block` is rounded up to a multiple of G so the group's columns are
//     up to date then.
//   act_order on: columns run in descending diag(H) (stable), so a group's columns are visited
//     out of order; its params are fixed up front from the original row ("static groups":
//     quantize_row's choice with importance diag(H)) and each column uses its own group's params.
//   codebook formats (nu3/nu4): the row's codebook and group scales are quantize_row's choice
//     on the original row with importance diag(H) (either order); GPTQ then picks each column's
//     nearest level d·codebook[l].
//   The group fits (static: one per row and format, as much work as RTN, the largest part of a
//   GPTQ encode at k = 512; and per group with act_order off) call kernels/quant.h's
//   quantize_row_params: quantize_row's own search (kernels/quant.cc, the one implementation),
//   parameters only, without the quant indices GPTQ picks itself.
// Columns past k in the tail group are padding: q = 2^(b-1) (symmetric), 0 (asymmetric), the
// level nearest 0 (codebook); dequantize_row never reads them.
//
// Determinism: rows are processed in fixed chunks of 64 (independent of the thread count); the
// factorization is single-threaded (OpenBLAS on one thread) and the triangular inverse runs in
// fixed 64-column chunks, so the bytes are the same for any `threads`. The f32 GEMM kernel's
// result for an element depends only on its x row, weight row and K (kernels/simd), but differs
// between ISAs: GPTQ bytes may differ between MXLM_ISA settings (not between thread counts).
//
// output_error: d H dᵀ per row = Σ_i H_ii d_i² (double) + d · (H_off dᵀ), H_off = H with a zero
// diagonal as floats (prepare_output_error_h: once per input). For a chunk of 64 rows the f32
// GEMM kernel (H_off is symmetric: its rows are its columns) computes, per 64-column block, the
// block's own part and (counted twice) the part after it: the lower block triangle, nk² flops
// instead of 2nk²; the row dots are in double. Float is ample for an estimate (relative error
// 1e-11..1e-9 measured on the test layer, asserted < 1e-4 against a double brute force); it
// was an Eigen double product (SSE2) on the strictly lower triangle.
//
// Measured (2-core shared x86-64 VM (AMD EPYC, AVX-512 kernels), load ~3-4; model/ is built for
// baseline x86-64, so Eigen runs SSE2 code). Errors are tr(ΔW H ΔWᵀ) on the test layer of
// tests/encode_test.cc (128×256, X = Z·A with a dense random mixing and 7 ×8 channels,
// T = 1024 tokens), as ratios (unchanged by the f32 GEMM sweep):
//                weighted/rtn   gptq/weighted (act_order on)   (act_order off)
//     q4_g32        0.628           0.431                          0.525
//     q3_g32        0.639           0.429                          0.549
//     q2a_g32       0.429           0.645                          0.583
//     nu3_g32       0.529           0.486                          0.566
//   Every quantized format at k = 128 and k = 172 (24 rows): gptq/rtn 0.15–0.31 with act_order,
//   0.16–0.48 without. On the timing layers (H = S(BBᵀ/32 + 0.2I)S, q4_g32) act_order also wins:
//   1280×512 gptq/rtn 0.168 vs 0.209, 2048×5632 0.139 vs 0.145. act_order stays the default
//   (better on 3 of 4 test formats and both timing layers; q2a_g32 prefers it off: static
//   2-bit asymmetric ranges fit the error-updated weights worse).
// Time at 2 threads (q4_g32; EncodeBench.DISABLED_Timing, plain calls, factorization included;
// two runs at different load):
//     1280×512    rtn 0.03–0.05 s, weighted 0.02–0.05 s, gptq 0.03–0.05 s (act_order off
//                 0.04–0.07 s), output_error 0.006–0.013 s
//     512×1280    gptq 0.10–0.14 s, output_error 0.015–0.024 s
//     2048×5632   rtn 0.4–0.7 s, gptq 9.1–9.7 s, of which the factorization ~7 s (Eigen's LLT
//                 on one thread, SSE2 double, before OpenBLAS: what gptq_factor lets callers
//                 share); output_error 1.3–1.7 s
//                 (was 4.5–6.5 s as an Eigen double product).
//   The mixed-precision quantizer's workload (EncodeBench.DISABLED_TinymixCandidates: the 15
//   candidates q2a_g64 q2_g32 q2a_g32 q3_g32 nu3_g32 q3a_g32 q4_g128 q4_g64 q4_g32 q4a_g64
//   nu4_g32 q4a_g32 q5_g32 q6_g32 q8_g64, each encoded by GPTQ and scored by output_error, on
//   the tinymix-26m shapes 512×512, 256×512, 1280×512, 512×1280, 4096×512), 2 threads, the
//   previous version of this file and this one run alternately; CPU time of all threads (stable
//   under the VM's load) and wall time with both cores free:
//                                     CPU time: encode  output_error  total    wall
//     before (Eigen sweep and output_error,          9.4 s      2.5 s     11.9 s    6.5 s
//             quantize_row static fits)
//     plain calls (h every call)                     5.5 s      0.8 s      6.3 s    3.9 s
//     gptq_factor + prepared H once per shape        3.5 s      0.7 s      4.2 s    2.3 s
//   i.e. 2.8× less CPU time (2.8× less wall time at load ~3, 5× with both cores free). Assuming
//   tinymix-26m's 57 GPTQ tensors are 8 layers × (q, o 512×512; k, v 256×512; gate, up
//   1280×512; down 512×1280) + output 4096×512, that extrapolates to ~15 s wall (was ~46 s)
//   with both cores free, when the caller shares each input's factor and H. Profile of the
//   prepared run: scale-search fits 27%, codebook fits 17%, the sweep (quantize_value,
//   in-block updates) 24%, the f32 GEMM (block updates, output_error) 16%, output_error's
//   dequantization ~6%, the factorizations ~2%.
#include "model/encode.h"

#include <cblas.h>  // OpenBLAS's (the pthread build; run on one thread: blas_one_thread)
#include <omp.h>

#include <atomic>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>

// LAPACK's Cholesky factorizations, as OpenBLAS exports them (Fortran ABI: the trailing hidden
// length of the character argument).
extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, size_t uplo_len);
}

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/quant.h"
#include "kernels/round.h"
#include "model/tiles.h"

namespace mxlm {

namespace {

constexpr int64_t kRowChunk = 64;   // rows per work item (fixed: determinism)
constexpr int64_t kColChunk = 64;   // columns per triangular-inverse work item
constexpr int64_t kOeBlock = 64;    // output_error: column block of the triangular product
constexpr int kMaxDampRetries = 4;

[[noreturn]] void fail(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

// OpenBLAS runs each call on the calling thread: the threads are ours, over fixed chunks, so the
// bytes do not depend on the thread count (OpenBLAS's own partition of a call would), and our
// OpenMP threads may call it side by side.
void blas_one_thread() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

int resolve_threads(int threads) { return threads > 0 ? threads : std::max(1, omp_get_max_threads()); }

// Checks t, the shape and the weights; returns the row size in bytes.
size_t check_w(const std::string& f, QType t, const float* w, int64_t n, int64_t k) {
  if (n <= 0 || k <= 0) fail(f + ": shape " + std::to_string(n) + "x" + std::to_string(k) + " must have n > 0 and k > 0");
  if (!w) fail(f + ": null weight pointer for " + std::to_string(n) + "x" + std::to_string(k));
  if (!qtype_info(static_cast<uint32_t>(t))) fail(f + ": unknown qtype id " + std::to_string(static_cast<int>(t)));
  const auto rb = qtype_row_bytes(t, static_cast<uint64_t>(k));
  if (!rb || *rb > std::numeric_limits<size_t>::max() / static_cast<uint64_t>(n)) {
    throw Error(ErrorCode::kUnsupported, f + ": " + std::to_string(n) + " rows of k = " + std::to_string(k) + " overflow the output size");
  }
  for (int64_t i = 0; i < n * k; ++i) {
    if (!std::isfinite(w[i])) {
      fail(f + ": weight [" + std::to_string(i / k) + "][" + std::to_string(i % k) + "] = " + std::to_string(w[i]) + " is not finite");
    }
  }
  return static_cast<size_t>(*rb);
}

// Checks h (k × k, finite, non-negative diagonal); k > 0.
void check_h(const std::string& f, const double* h, int64_t k) {
  if (k > (int64_t{1} << 31)) fail(f + ": k = " + std::to_string(k) + " too large for an h of k*k (limit 2^31)");
  bool bad = false;
#pragma omp parallel for num_threads(resolve_threads(0)) schedule(static) reduction(|| : bad)
  for (int64_t i = 0; i < k; ++i) {
    const double* r = h + i * k;
    bool b = !(r[i] >= 0);
    for (int64_t j = 0; j < k; ++j) b |= !std::isfinite(r[j]);
    bad = bad || b;
  }
  if (!bad) return;
  for (int64_t i = 0; i < k * k; ++i) {
    if (!std::isfinite(h[i])) {
      fail(f + ": h[" + std::to_string(i / k) + "][" + std::to_string(i % k) + "] = " + std::to_string(h[i]) + " is not finite");
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    if (h[i * k + i] < 0) {
      fail(f + ": h diagonal [" + std::to_string(i) + "] = " + std::to_string(h[i * k + i]) + " is negative (h must be a second moment, PSD)");
    }
  }
}

// h itself when it is exactly symmetric (the calibration's statistics are: calibrate.cc mirrors
// their lower triangle), else (h + hᵀ) / 2 in `own`: the same values either way, since
// (x + x) / 2 == x.
const double* symmetric_h(const double* h, int64_t k, int nt, UninitVector<double>& own) {
  std::atomic<bool> sym{true};
  for_each_tile(k, nt, true, [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    bool t = true;
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = j0; j < std::min(j1, i); ++j) t &= h[i * k + j] == h[j * k + i];
    }
    if (!t) sym.store(false, std::memory_order_relaxed);
  });
  if (sym.load()) return h;
  own.resize(static_cast<size_t>(k * k));
  for_each_tile(k, nt, true, [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = j0; j < std::min(j1, i + 1); ++j) own[i * k + j] = own[j * k + i] = 0.5 * (h[i * k + j] + h[j * k + i]);
    }
  });
  return own.data();
}

// Checks the shared arguments; returns the row size in bytes.
size_t check_args(const char* fn, QType t, const float* w, int64_t n, int64_t k, const double* h) {
  const std::string f = fn;
  const size_t rb = check_w(f, t, w, n, k);
  if (h) check_h(f, h, k);
  return rb;
}

void check_options(const std::string& f, const EncodeOptions& o) {
  if (!(o.damp >= 0) || !std::isfinite(o.damp)) fail(f + ": damp = " + std::to_string(o.damp) + " must be finite and >= 0");
  if (o.block <= 0) fail(f + ": block = " + std::to_string(o.block) + " must be > 0");
  if (o.refine < 0) fail(f + ": refine = " + std::to_string(o.refine) + " must be >= 0");
  if (o.threads < 0) fail(f + ": threads = " + std::to_string(o.threads) + " must be >= 0 (0: all cores)");
}

// The parts of one quantized row (qtype.h; offsets from kernels/quant.h's qrow_layout).
struct RowLayout {
  QType t;
  int G, bits, L;  // group, bits, codebook entries (0: none)
  QKind kind;
  int64_t nb;
  size_t q_off;
  int qbytes;
};

RowLayout row_layout(QType t, int64_t k) {
  const QTypeInfo& info = qtype_info(t);
  const QRowLayout q = qrow_layout(t, k);
  RowLayout r{};
  r.t = t;
  r.G = info.block_elems;
  r.bits = info.bits;
  r.L = codebook_size(info);
  r.kind = info.kind;
  r.nb = q.nb;
  r.q_off = q.q_off;
  r.qbytes = q.qbytes;
  return r;
}

// Per-row parameters of one chunk of rows: d, m per group (as dequantization computes them),
// the codebook and the two-level formats' row scales.
struct ChunkParams {
  int64_t nb;
  std::vector<float> d, m;  // [rows][nb]
  std::vector<int8_t> cb;   // [rows][16]
  std::vector<float> rs;    // [rows][2]
  float* d_row(int64_t r) { return d.data() + r * nb; }
  float* m_row(int64_t r) { return m.data() + r * nb; }
  int8_t* cb_row(int64_t r) { return cb.data() + r * 16; }
  float* rs_row(int64_t r) { return rs.data() + r * 2; }
};

// The level of value x given a group's params: writes q, returns the decoded value (computed as
// dequantize_row does).
inline float quantize_value(const RowLayout& L, float x, float d, float m, const int8_t* cb, uint8_t* q) {
  const int qmax = (1 << L.bits) - 1;
  switch (L.kind) {
    case QKind::kSymmetric: {
      const int z = 1 << (L.bits - 1);
      const int v = d != 0 ? round_clamp(x / d, -z, qmax - z) : 0;
      *q = static_cast<uint8_t>(v + z);
      return d * static_cast<float>(v);
    }
    case QKind::kAsymmetric: {
      const int v = d != 0 ? round_clamp((x - m) / d, 0, qmax) : 0;
      *q = static_cast<uint8_t>(v);
      return d * static_cast<float>(v) + m;
    }
    default: {
      int best = 0;
      float best_e = INFINITY;
      for (int l = 0; l < L.L; ++l) {
        const float e = std::abs(x - d * static_cast<float>(cb[l]));
        if (e < best_e) {
          best_e = e;
          best = l;
        }
      }
      *q = static_cast<uint8_t>(best);
      return d * static_cast<float>(cb[best]);
    }
  }
}

// Writes one row's bytes from its params and quant indices (k values, original column order).
void assemble_row(const RowLayout& L, int64_t k, const float* d, const float* m, const int8_t* cb, const float* rs,
                  const uint8_t* q, uint8_t* dst) {
  store_row_params(L.t, k, d, m, cb, rs, dst);
  uint8_t pad = 0;
  if (L.kind == QKind::kSymmetric) pad = static_cast<uint8_t>(1 << (L.bits - 1));
  if (L.kind == QKind::kCodebook) {
    for (int l = 1; l < L.L; ++l) {
      if (std::abs(int(cb[l])) < std::abs(int(cb[pad]))) pad = static_cast<uint8_t>(l);
    }
  }
  uint8_t grp[128];
  for (int64_t g = 0; g < L.nb; ++g) {
    for (int i = 0; i < L.G; ++i) grp[i] = g * L.G + i < k ? q[g * L.G + i] : pad;
    pack_group(L.bits, L.G, grp, dst + L.q_off + static_cast<size_t>(g) * L.qbytes);
  }
}

// The upper Cholesky factor U of (H' + λI)⁻¹ in processing order (H'[perm][perm]), as floats,
// transposed: Ut[q][p] = U[p][q] (k×k row-major, zero above the diagonal). Returns false when the
// factorization fails.
bool inverse_cholesky_upper(const double* s, int64_t k, const std::vector<int64_t>& perm,
                            const std::vector<char>& dead, double lambda, int nt, UninitVector<float>& Ut) {
  // A = P H'_perm P + λI (lower triangle; zero above), column-major: A(a, b) = A[a + b k].
  // s is symmetric: column b is row perm[k-1-b] of s, gathered.
  UninitVector<double> A(static_cast<size_t>(k * k));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t b = 0; b < k; ++b) {
    const int64_t cb = perm[k - 1 - b];
    const double* row = s + cb * k;
    double* col = A.data() + b * k;
    for (int64_t a = 0; a < b; ++a) col[a] = 0;
    for (int64_t a = b; a < k; ++a) {
      const int64_t ca = perm[k - 1 - a];
      double v = row[ca];
      if (a == b) v = (dead[ca] ? 1.0 : v) + lambda;
      else if (dead[ca] || dead[cb]) v = 0;
      col[a] = v;
    }
  }
  blas_one_thread();
  const int kn = static_cast<int>(k);
  int info = 0;
  dpotrf_("L", &kn, A.data(), &kn, &info, 1);
  if (info != 0) return false;
  for (int64_t i = 0; i < k; ++i) {
    const double d = A[static_cast<size_t>(i + i * k)];
    if (!(d > 0) || !std::isfinite(d)) return false;
  }
  // L̃⁻¹ column chunk [c0, c1): zero above row c0, solve L̃[c0:, c0:] X = I[c0:, c0:c1].
  // U(p, q) = L̃⁻¹(k-1-p, k-1-q). Chunk c writes the whole rows q of Ut it owns.
  Ut.resize(static_cast<size_t>(k * k));
  const int64_t nchunks = (k + kColChunk - 1) / kColChunk;
  bool ok = true;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(&& : ok)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t c0 = c * kColChunk, c1 = std::min(k, c0 + kColChunk), m = k - c0, wdt = c1 - c0;
    std::vector<double> X(static_cast<size_t>(m * wdt), 0.0);  // m × wdt, column-major
    for (int64_t j = 0; j < wdt; ++j) X[static_cast<size_t>(j + j * m)] = 1.0;
    cblas_dtrsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, int(m), int(wdt), 1.0,
                A.data() + c0 + c0 * k, kn, X.data(), int(m));
    for (int64_t j = 0; j < wdt; ++j) {
      const int64_t q = k - 1 - (c0 + j);
      std::fill(Ut.data() + q * k + q + 1, Ut.data() + (q + 1) * k, 0.0f);
      for (int64_t r = j; r < m; ++r) {
        const double v = X[static_cast<size_t>(r + j * m)];
        if (!std::isfinite(v)) ok = false;
        Ut[static_cast<size_t>(q * k + (k - 1 - (c0 + r)))] = static_cast<float>(v);
      }
    }
  }
  return ok;
}

// Quantizes each row independently with quantize_row (importance may be null).
std::vector<uint8_t> encode_rtn(QType t, const float* w, int64_t n, int64_t k, size_t rb, const float* imp, int nt) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * rb);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < n; ++r) quantize_row(t, w + r * k, k, out.data() + static_cast<size_t>(r) * rb, imp);
  return out;
}

// The diagonal blocks of U for lazy-update blocks of `block` columns: block b is
// [block][block] floats, row i − b1 = U[i][b1:b2] (contiguous for the in-block updates).
std::vector<float> diagonal_blocks(const float* Ut, int64_t k, int block) {
  const int64_t nblocks = (k + block - 1) / block;
  std::vector<float> ub(static_cast<size_t>(nblocks * block * block), 0.0f);
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t b1 = b * block, b2 = std::min<int64_t>(k, b1 + block);
    float* Ub = ub.data() + b * block * block;
    for (int64_t j = b1; j < b2; ++j) {
      for (int64_t i = b1; i <= j; ++i) Ub[(i - b1) * block + (j - b1)] = Ut[j * k + i];
    }
  }
  return ub;
}

// Coordinate descent after GPTQ (the idea of QuantEase, Behdin et al. 2023): with every group's
// params fixed, the objective e H eᵀ of one row (e = w − v, v the decoded values) as a function
// of one weight's error e_i alone is H_ii e_i² + 2 e_i c_i, c_i = (H e)_i − H_ii e_i, minimized at
// e_i = −c_i / H_ii, i.e. at the decoded value w_i + c_i / H_ii: rounding that to the group's
// nearest level is the exact minimum over the weight's levels, so no step raises the objective.
// GPTQ visits each column once and only pushes its error forward; these passes let every weight
// answer the errors of the columns after it too. g = H e per row is computed once by the f32
// GEMM kernel and kept current by one axpy per changed weight (the kernel's axpy; recomputing it
// every pass changed no decision measurably and cost a GEMM each); the passes stop early when
// one changes nothing. Rows run alone (their objectives are independent), columns in GPTQ's
// processing order; dead inputs (H_ii = 0) are left alone.
void refine_chunk(const RowLayout& L, const float* w, int64_t r0, int64_t R, int64_t k, const std::vector<int64_t>& perm,
                  const std::vector<char>& dead, const float* hp, int passes, const F32Kernels& fk,
                  ChunkParams& P, std::vector<float>& V, std::vector<uint8_t>& q) {
  std::vector<float> W0(static_cast<size_t>(R * k)), E(static_cast<size_t>(R * k)), g(static_cast<size_t>(R * k));
  for (int64_t r = 0; r < R; ++r) {
    const float* src = w + (r0 + r) * k;
    for (int64_t p = 0; p < k; ++p) {
      W0[r * k + p] = dead[perm[p]] ? 0.0f : src[perm[p]];
      E[r * k + p] = W0[r * k + p] - V[r * k + p];
    }
  }
  fk.gemm(static_cast<int>(R), 0, static_cast<int>(k), static_cast<int>(k), E.data(), static_cast<size_t>(k), hp,
          static_cast<size_t>(k) * sizeof(float), QType::kF32, g.data(), static_cast<size_t>(k));
  // Per column: its group, 1 / H_ii (0: left alone).
  std::vector<int64_t> grp(static_cast<size_t>(k));
  std::vector<float> h_diag(static_cast<size_t>(k)), inv_h(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    const float hii = hp[static_cast<size_t>(i * k + i)];
    grp[i] = perm[i] / L.G;
    h_diag[i] = hii;
    inv_h[i] = dead[perm[i]] || !(hii > 0) ? 0.0f : 1.0f / hii;
  }
  const bool uniform = L.kind != QKind::kCodebook;  // levels d apart: the nearest is within d/2
  // Rows are independent (g_r = H e_r): each runs its passes alone, its arrays in cache.
  for (int64_t r = 0; r < R; ++r) {
    float *Er = E.data() + r * k, *gr = g.data() + r * k, *Vr = V.data() + r * k;
    const float* W0r = W0.data() + r * k;
    const float *d = P.d_row(r), *m = P.m_row(r);
    for (int pass = 0; pass < passes; ++pass) {
      int64_t changed = 0;
      for (int64_t i = 0; i < k; ++i) {
        if (inv_h[i] == 0) continue;
        const float t = W0r[i] + (gr[i] - h_diag[i] * Er[i]) * inv_h[i];
        const float dg = d[grp[i]];
        if (uniform && std::abs(t - Vr[i]) < 0.49f * std::abs(dg)) continue;  // still the nearest level
        uint8_t qn;
        const float v = quantize_value(L, t, dg, m[grp[i]], P.cb_row(r), &qn);
        if (v == Vr[i]) continue;
        const float e = W0r[i] - v, delta = e - Er[i];
        Er[i] = e;
        Vr[i] = v;
        q[r * k + perm[i]] = qn;
        fk.axpy(delta, hp + i * k, gr, static_cast<int>(k));
        ++changed;
      }
      if (changed == 0) break;
    }
  }
}

// GPTQ on rows [r0, r1) given the factor (Ut = Uᵀ, processing order perm; ublocks its diagonal
// blocks). gemm: the f32 GEMM kernel (kernels/f32_ops.h) for the lazy block update.
void gptq_chunk(QType t, const float* w, int64_t r0, int64_t r1, int64_t k, size_t rb, const std::vector<int64_t>& perm,
                const std::vector<char>& dead, const std::vector<float>& imp, const float* Ut,
                const std::vector<float>& ublocks, bool static_groups, int block, decltype(F32Kernels::gemm) gemm,
                const float* hp, int refine, uint8_t* out) {
  const RowLayout L = row_layout(t, k);
  const int64_t R = r1 - r0, G = L.G;
  ChunkParams P;
  P.nb = L.nb;
  P.d.assign(static_cast<size_t>(R * L.nb), 0.0f);
  P.m.assign(static_cast<size_t>(R * L.nb), 0.0f);
  P.cb.assign(static_cast<size_t>(R * 16), 0);
  P.rs.assign(static_cast<size_t>(R * 2), 0.0f);
  std::vector<uint8_t> q(static_cast<size_t>(R * k));
  std::vector<float> row(static_cast<size_t>(k));

  // Working copy in processing order, dead inputs zeroed.
  std::vector<float> W(static_cast<size_t>(R * k));
  std::vector<float> V(refine > 0 ? static_cast<size_t>(R * k) : 0);  // decoded values (refine)
  for (int64_t r = 0; r < R; ++r) {
    const float* src = w + (r0 + r) * k;
    float* Wr = W.data() + r * k;
    for (int64_t p = 0; p < k; ++p) Wr[p] = dead[perm[p]] ? 0.0f : src[perm[p]];
  }
  if (static_groups) {
    for (int64_t r = 0; r < R; ++r) {
      const float* src = w + (r0 + r) * k;
      for (int64_t c = 0; c < k; ++c) row[c] = dead[c] ? 0.0f : src[c];
      quantize_row_params(t, row.data(), k, imp.data(), P.d_row(r), P.m_row(r), P.cb_row(r), P.rs_row(r));
    }
  }

  // E: the block's scaled errors [R][block]; T: E · U[b1:b2, b2:].
  std::vector<float> E(static_cast<size_t>(R * block));
  std::vector<float> T(static_cast<size_t>(R * k));
  std::vector<float> x(static_cast<size_t>(G));
  for (int64_t b1 = 0; b1 < k; b1 += block) {
    const int64_t b2 = std::min<int64_t>(k, b1 + block), bw = b2 - b1;
    const float* Ub = ublocks.data() + (b1 / block) * block * block;
    // Column-major over the block: consecutive rows are independent, so their chains
    // (quantize, divide, update the next column) overlap.
    for (int64_t i = b1; i < b2; ++i) {
      const int64_t col = perm[i], g = col / G;
      const float* Ui = Ub + (i - b1) * block - b1;  // Ui[j] = U[i][j], j in [i, b2)
      const float uii = Ui[i];
      for (int64_t r = 0; r < R; ++r) {
        float* Wr = W.data() + r * k;
        if (!static_groups && i % G == 0) {
          // perm is the identity here: the group is columns [i, i + len) of W, all up to date.
          const int64_t len = std::min<int64_t>(G, k - i);
          for (int64_t j = 0; j < len; ++j) x[j] = Wr[i + j];
          quantize_row_params(t, x.data(), len, imp.data() + i, P.d_row(r) + g, P.m_row(r) + g, nullptr);
        }
        const float xv = Wr[i];
        const float v = quantize_value(L, xv, P.d_row(r)[g], P.m_row(r)[g], P.cb_row(r), &q[r * k + col]);
        if (refine > 0) V[r * k + i] = v;
        const float e = (xv - v) / uii;
        E[r * block + (i - b1)] = e;
        for (int64_t j = i + 1; j < b2; ++j) Wr[j] -= e * Ui[j];
      }
    }
    if (b2 < k) {
      // T[r][j] = Σ_i E[r][i - b1] U[i][j] = Σ_i E[r][i - b1] Ut[j][i], j in [b2, k): Ut rows
      // from column b1 are the GEMM's weight rows.
      gemm(static_cast<int>(R), static_cast<int>(b2), static_cast<int>(k), static_cast<int>(bw), E.data(),
           static_cast<size_t>(block), Ut + b1, static_cast<size_t>(k) * sizeof(float), QType::kF32, T.data(),
           static_cast<size_t>(k));
      for (int64_t r = 0; r < R; ++r) {
        float* Wr = W.data() + r * k;
        const float* Tr = T.data() + r * k;
        for (int64_t j = b2; j < k; ++j) Wr[j] -= Tr[j];
      }
    }
  }
  if (refine > 0) refine_chunk(L, w, r0, R, k, perm, dead, hp, refine, f32_kernels(selected_isa()), P, V, q);
  for (int64_t r = 0; r < R; ++r) {
    assemble_row(L, k, P.d_row(r), P.m_row(r), P.cb_row(r), P.rs_row(r), q.data() + r * k,
                 out + static_cast<size_t>(r0 + r) * rb);
  }
}

decltype(F32Kernels::gemm) f32_gemm() { return f32_kernels(selected_isa()).gemm; }

}  // namespace

const char* encode_method_name(EncodeMethod m) {
  switch (m) {
    case EncodeMethod::kRtn: return "rtn";
    case EncodeMethod::kWeighted: return "weighted";
    case EncodeMethod::kGptq: return "gptq";
  }
  return "unknown";
}

std::shared_ptr<const GptqFactor> gptq_factor(const double* h, int64_t k, const EncodeOptions& o) {
  const std::string fn = "gptq_factor";
  if (k <= 0) fail(fn + ": k = " + std::to_string(k) + " must be > 0");
  if (!h) fail(fn + ": null h");
  check_h(fn, h, k);
  check_options(fn, o);
  const int nt = resolve_threads(o.threads);
  auto f = std::make_shared<GptqFactor>();
  f->k_ = k;
  f->damp_requested_ = o.damp;
  f->act_order_ = o.act_order;
  f->imp_.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) f->imp_[i] = static_cast<float>(h[i * k + i]);
  f->dead_.resize(static_cast<size_t>(k));
  double mean_diag = 0;
  for (int64_t i = 0; i < k; ++i) {
    f->dead_[i] = h[i * k + i] == 0;
    f->dead_columns_ += f->dead_[i];
    mean_diag += f->dead_[i] ? 1.0 : h[i * k + i];
  }
  mean_diag /= double(k);
  f->perm_.resize(static_cast<size_t>(k));
  std::iota(f->perm_.begin(), f->perm_.end(), int64_t{0});
  if (o.act_order) {
    std::stable_sort(f->perm_.begin(), f->perm_.end(), [&](int64_t a, int64_t b) { return h[a * k + a] > h[b * k + b]; });
  }
  UninitVector<double> own;
  const double* s = symmetric_h(h, k, nt, own);
  double damp = o.damp;
  for (int attempt = 0; attempt <= kMaxDampRetries; ++attempt) {
    if (attempt > 0) damp = damp > 0 ? damp * 10 : 1e-4;
    if (inverse_cholesky_upper(s, k, f->perm_, f->dead_, damp * mean_diag, nt, f->ut_)) {
      f->ok_ = true;
      f->retries_ = attempt;
      f->damp_used_ = damp;
      break;
    }
  }
  f->hp_.resize(static_cast<size_t>(k * k));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t a = 0; a < k; ++a) {  // row a: row perm[a] of s, gathered
    const int64_t ca = f->perm_[a];
    const double* row = s + ca * k;
    float* out = f->hp_.data() + a * k;
    for (int64_t b = 0; b < k; ++b) {
      const int64_t cb = f->perm_[b];
      out[b] = f->dead_[ca] || f->dead_[cb] ? 0.0f : static_cast<float>(row[cb]);
    }
  }
  if (!f->ok_) {
    f->retries_ = kMaxDampRetries + 1;
    UninitVector<float>().swap(f->ut_);
  }
  return f;
}

std::vector<uint8_t> encode_tensor(QType t, const float* w, int64_t n, int64_t k, const GptqFactor& f, const EncodeOptions& o,
                                   EncodeStats* stats) {
  const std::string fn = "encode_tensor";
  const size_t rb = check_w(fn, t, w, n, k);
  check_options(fn, o);
  if (f.k_ != k) fail(fn + ": factor of k = " + std::to_string(f.k_) + " for a tensor of k = " + std::to_string(k));
  if (f.act_order_ != o.act_order || f.damp_requested_ != o.damp) {
    fail(fn + ": factor built with other options (damp " + std::to_string(f.damp_requested_) + ", act_order " +
         std::to_string(f.act_order_) + ")");
  }
  const int nt = resolve_threads(o.threads);
  EncodeStats st;
  auto finish = [&](std::vector<uint8_t> bytes) {
    if (stats) *stats = st;
    return bytes;
  };
  if (is_float_qtype(t) || o.method == EncodeMethod::kRtn) {
    st.method_used = EncodeMethod::kRtn;
    return finish(encode_rtn(t, w, n, k, rb, nullptr, nt));
  }
  if (o.method == EncodeMethod::kWeighted) {
    st.method_used = EncodeMethod::kWeighted;
    return finish(encode_rtn(t, w, n, k, rb, f.imp_.data(), nt));
  }
  st.dead_columns = f.dead_columns_;
  st.damp_retries = f.retries_;
  if (!f.ok_) {
    st.method_used = EncodeMethod::kWeighted;
    return finish(encode_rtn(t, w, n, k, rb, f.imp_.data(), nt));
  }
  st.method_used = EncodeMethod::kGptq;
  st.damp_used = f.damp_used_;

  const QTypeInfo& info = qtype_info(t);
  const int G = info.block_elems;
  const int block = static_cast<int>((std::max<int64_t>(o.block, G) + G - 1) / G * G);
  // Codebook formats always use the row's own (static) fit; act_order needs static groups.
  // Codebooks and two-level row scales depend on every group of the row: fixed up front.
  const bool static_groups = o.act_order || info.kind == QKind::kCodebook || info.two_level;
  const auto gemm = f32_gemm();
  const std::vector<float> ublocks = diagonal_blocks(f.ut_.data(), k, block);
  std::vector<uint8_t> out(static_cast<size_t>(n) * rb);
  const int64_t nchunks = (n + kRowChunk - 1) / kRowChunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    gptq_chunk(t, w, c * kRowChunk, std::min(n, (c + 1) * kRowChunk), k, rb, f.perm_, f.dead_, f.imp_, f.ut_.data(), ublocks,
               static_groups, block, gemm, f.hp_.data(), o.refine, out.data());
  }
  return finish(std::move(out));
}

std::vector<uint8_t> encode_tensor(QType t, const float* w, int64_t n, int64_t k, const double* h, const EncodeOptions& o,
                                   EncodeStats* stats) {
  const size_t rb = check_args("encode_tensor", t, w, n, k, h);
  check_options("encode_tensor", o);
  const int nt = resolve_threads(o.threads);
  EncodeStats st;
  auto finish = [&](std::vector<uint8_t> bytes) {
    if (stats) *stats = st;
    return bytes;
  };
  if (is_float_qtype(t) || o.method == EncodeMethod::kRtn || !h) {
    st.method_used = EncodeMethod::kRtn;
    return finish(encode_rtn(t, w, n, k, rb, nullptr, nt));
  }
  if (o.method == EncodeMethod::kWeighted) {
    std::vector<float> imp(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) imp[i] = static_cast<float>(h[i * k + i]);
    st.method_used = EncodeMethod::kWeighted;
    return finish(encode_rtn(t, w, n, k, rb, imp.data(), nt));
  }
  return encode_tensor(t, w, n, k, *gptq_factor(h, k, o), o, stats);
}

std::shared_ptr<const OutputErrorH> prepare_output_error_h(const double* h, int64_t k) {
  const std::string fn = "prepare_output_error_h";
  if (k <= 0) fail(fn + ": k = " + std::to_string(k) + " must be > 0");
  if (!h) fail(fn + ": null h");
  check_h(fn, h, k);
  auto p = std::make_shared<OutputErrorH>();
  p->k_ = k;
  p->diag_.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) p->diag_[i] = h[i * k + i];
  p->off_.resize(static_cast<size_t>(k * k));
  float* off = p->off_.data();
  for_each_tile(k, resolve_threads(0), true, [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = j0; j < std::min(j1, i); ++j) {
        const float v = static_cast<float>(h[i * k + j]);  // the lower triangle (h is symmetric)
        off[i * k + j] = v;
        off[j * k + i] = v;
      }
      if (i >= j0 && i < j1) off[i * k + i] = 0;
    }
  });
  return p;
}

double output_error(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const OutputErrorH& h,
                    std::vector<double>* per_row) {
  const std::string fn = "output_error";
  const size_t rb = check_w(fn, t, w, n, k);
  if (!bytes) fail(fn + ": null bytes for " + std::to_string(n) + "x" + std::to_string(k));
  if (h.k_ != k) fail(fn + ": prepared h of k = " + std::to_string(h.k_) + " for a tensor of k = " + std::to_string(k));
  const auto gemm = f32_gemm();
  std::vector<double> rows(static_cast<size_t>(n));
  const int64_t nchunks = (n + kRowChunk - 1) / kRowChunk;
  const int nt = resolve_threads(0);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t r0 = c * kRowChunk, R = std::min(n, r0 + kRowChunk) - r0;
    // d H dᵀ = Σ_i H_ii d_i² (double) + Σ_{i≠j} d_i H_ij d_j. The off-diagonal sum by column
    // blocks c = [c0, c1) of kOeBlock: pairs inside a block once (In[j] = Σ_{i∈c} H_ji d_i),
    // pairs with i after the block twice (Out[j] = Σ_{i≥c1} H_ji d_i), by the f32 GEMM (H_off is
    // symmetric: its rows are its columns): half the flops of D·H_off. Row dots in double.
    std::vector<float> D(static_cast<size_t>(R * k)), In(static_cast<size_t>(R * k)), Out(static_cast<size_t>(R * k), 0.0f);
    std::vector<double> diag(static_cast<size_t>(R), 0.0);
    for (int64_t r = 0; r < R; ++r) {
      float* Dr = D.data() + r * k;
      dequantize_row(t, bytes + static_cast<size_t>(r0 + r) * rb, k, Dr);
      const float* src = w + (r0 + r) * k;
      double s = 0;
      for (int64_t i = 0; i < k; ++i) {
        const double d = double(Dr[i]) - double(src[i]);
        s += h.diag_[i] * d * d;
        Dr[i] -= src[i];
      }
      diag[r] = s;
    }
    const size_t hb = static_cast<size_t>(k) * sizeof(float), ld = static_cast<size_t>(k);
    for (int64_t c0 = 0; c0 < k; c0 += kOeBlock) {
      const int64_t c1 = std::min(k, c0 + kOeBlock);
      gemm(static_cast<int>(R), static_cast<int>(c0), static_cast<int>(c1), static_cast<int>(c1 - c0), D.data() + c0, ld,
           h.off_.data() + c0, hb, QType::kF32, In.data(), ld);
      if (c1 < k) {
        gemm(static_cast<int>(R), static_cast<int>(c0), static_cast<int>(c1), static_cast<int>(k - c1), D.data() + c1, ld,
             h.off_.data() + c1, hb, QType::kF32, Out.data(), ld);
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const float* Dr = D.data() + r * k;
      const float* Ir = In.data() + r * k;
      const float* Or = Out.data() + r * k;
      double s = 0;
      for (int64_t i = 0; i < k; ++i) s += double(Dr[i]) * (double(Ir[i]) + 2.0 * double(Or[i]));
      rows[r0 + r] = diag[r] + s;
    }
  }
  double total = 0;
  for (double v : rows) total += v;
  if (per_row) *per_row = std::move(rows);
  return total;
}

double output_error(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const double* h,
                    std::vector<double>* per_row) {
  const size_t rb = check_args("output_error", t, w, n, k, h);
  if (!bytes) fail("output_error: null bytes for " + std::to_string(n) + "x" + std::to_string(k));
  // (h is checked twice: k² comparisons against the n·k² of the product.)
  if (h) return output_error(t, bytes, w, n, k, *prepare_output_error_h(h, k), per_row);
  // H = I: the plain squared error, in double.
  std::vector<double> rows(static_cast<size_t>(n));
  const int64_t nchunks = (n + kRowChunk - 1) / kRowChunk;
  const int nt = resolve_threads(0);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t r0 = c * kRowChunk, r1 = std::min(n, r0 + kRowChunk);
    std::vector<float> deq(static_cast<size_t>(k));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(t, bytes + static_cast<size_t>(r) * rb, k, deq.data());
      const float* src = w + r * k;
      double s = 0;
      for (int64_t i = 0; i < k; ++i) {
        const double d = double(deq[i]) - double(src[i]);
        s += d * d;
      }
      rows[r] = s;
    }
  }
  double total = 0;
  for (double v : rows) total += v;
  if (per_row) *per_row = std::move(rows);
  return total;
}

class AsymmetricInput {
 public:
  int64_t k = 0;
  UninitVector<float> l;   // the lower Cholesky factor of H̃ + λI, column-major (floats: the correction is small against W)
  UninitVector<float> ct;  // Cᵀ [k][k] as floats: row j = column j of C
};

std::shared_ptr<const AsymmetricInput> prepare_asymmetric(const double* h, const double* c, int64_t k, double damp) {
  const std::string f = "prepare_asymmetric";
  if (k <= 0 || !h || !c) fail(f + ": k = " + std::to_string(k) + " with a null h or c");
  check_h(f, h, k);
  const int nt = resolve_threads(0);
  bool bad = false, any = false;  // a non-finite entry; a non-zero one
#pragma omp parallel for num_threads(nt) schedule(static) reduction(|| : bad, any)
  for (int64_t i = 0; i < k; ++i) {
    bool b = false, a = false;
    for (int64_t j = 0; j < k; ++j) {
      b |= !std::isfinite(c[i * k + j]);
      a |= c[i * k + j] != 0;
    }
    bad = bad || b;
    any = any || a;
  }
  for (int64_t i = 0; bad && i < k * k; ++i) {
    if (!std::isfinite(c[i])) fail(f + ": c[" + std::to_string(i / k) + "][" + std::to_string(i % k) + "] is not finite");
  }
  if (!(damp >= 0) || !std::isfinite(damp)) fail(f + ": damp = " + std::to_string(damp) + " must be finite and >= 0");
  double mean_diag = 0;
  for (int64_t i = 0; i < k; ++i) mean_diag += h[i * k + i];
  mean_diag /= double(k);
  if (!any || !(mean_diag > 0)) return nullptr;  // no upstream error (or no input): W' = W
  auto a = std::make_shared<AsymmetricInput>();
  a->k = k;
  const double lambda = std::max(damp, 1e-6) * mean_diag;  // H̃ + λI is SPD for λ > 0
  UninitVector<double> own;
  const double* s = symmetric_h(h, k, nt, own);
  a->l.resize(size_t(k * k));  // symmetric: row-major and column-major alike
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) a->l[size_t(i * k + j)] = static_cast<float>(s[i * k + j] + (i == j ? lambda : 0.0));
  }
  blas_one_thread();
  const int kn = static_cast<int>(k);
  int info = 0;
  spotrf_("L", &kn, a->l.data(), &kn, &info, 1);
  if (info != 0) fail(f + ": the damped h (k = " + std::to_string(k) + ") does not factorize");
  a->ct.resize(size_t(k * k));
  for_each_tile(k, nt, false, [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t i = i0; i < i1; ++i) a->ct[size_t(j * k + i)] = static_cast<float>(c[i * k + j]);
    }
  });
  return a;
}

// W' = W + Z with Zᵀ = (H̃ + λI)⁻¹ (W C)ᵀ: W C on the f32 GEMM kernel, then the two triangular
// solves (float: Z is a small correction to W, 1e-5 of it against double in the test) over
// fixed chunks of rows (the same bytes for any thread count).
std::vector<float> asymmetric_target(const float* w, int64_t n, int64_t k, const AsymmetricInput& a) {
  const std::string f = "asymmetric_target";
  check_w(f, QType::kF32, w, n, k);
  if (a.k != k) fail(f + ": prepared for k = " + std::to_string(a.k) + ", not " + std::to_string(k));
  std::vector<float> out(w, w + n * k);
  const F32Kernels& kr = f32_kernels(selected_isa());
  const int64_t nchunks = (n + kRowChunk - 1) / kRowChunk;
#pragma omp parallel for num_threads(resolve_threads(0)) schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t r0 = ch * kRowChunk, r1 = std::min(n, r0 + kRowChunk), m = r1 - r0;
    std::vector<float> y(size_t(m * k));
    kr.gemm(int(m), 0, int(k), int(k), w + r0 * k, size_t(k), a.ct.data(), sizeof(float) * size_t(k), QType::kF32, y.data(),
            size_t(k));
    // y [m][k] row-major is Yᵀ [k][m] column-major: solve L Lᵀ Zᵀ = Yᵀ in place.
    const int kn = static_cast<int>(k), mn = static_cast<int>(m);
    cblas_strsm(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, kn, mn, 1.0f, a.l.data(), kn, y.data(), kn);
    cblas_strsm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, kn, mn, 1.0f, a.l.data(), kn, y.data(), kn);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < k; ++j) out[size_t((r0 + r) * k + j)] = static_cast<float>(double(w[(r0 + r) * k + j]) + y[size_t(r * k + j)]);
    }
  }
  return out;
}

std::vector<float> asymmetric_target(const float* w, int64_t n, int64_t k, const double* h, const double* c,
                                     double damp) {
  check_w("asymmetric_target", QType::kF32, w, n, k);
  const auto a = prepare_asymmetric(h, c, k, damp);
  return a ? asymmetric_target(w, n, k, *a) : std::vector<float>(w, w + n * k);
}

}  // namespace mxlm
