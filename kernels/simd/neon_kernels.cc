// NEON (AArch64 Advanced SIMD) kernels: the F32Kernels table (kernels/f32_ops.h), a QGemmFn for
// every quantized QType and the activation quantizer (kernels/quant.h). Compiled only in the
// neon copy of kernels/simd/*.cc (MXLM_TARGET_NEON, namespace mxlm::kernels::neon); the neon
// ISA is built with the baseline -march (armv8-a: NEON is architectural), so these kernels run on
// every AArch64 core. Exports register_f32 and register_quant_kernels only.
//
// Integer dot products. Cores with the dot-product extension (Armv8.2 optional, Armv8.4
// mandatory) get kernels built around SDOT (vdotq_s32); the others get the same kernels with
// SMULL/SMULL2 + SADALP (int8 x int8 -> int16 products, pairwise-accumulated into int32). Both
// are exact, so the two paths give bit-identical results. The quantized GEMM is written once in
// neon_qgemm_inl.h and included twice below: once plainly (namespace nodot) and once under
// `#pragma GCC target("arch=armv8.2-a+dotprod")` (namespace dotprod), because vdotq_s32 can only be
// inlined into functions compiled for that target. register_quant_kernels picks the set with
// mxlm::detail::cpu_has_neon_dotprod() (getauxval(AT_HWCAP) & HWCAP_ASIMDDP).
//
// Everything but the two register functions has internal linkage, and the dotprod region calls
// no inline function from a library header: an out-of-line copy compiled for armv8.2 could
// otherwise be merged by the linker into callers on older cores.
//
// Quantized GEMM layout (see qtype.h for the row format). A row is consumed in chunks of 128
// elements (four 32-element activation blocks): the chunk's weight groups are unpacked into eight
// int8x16 vectors (symmetric formats centered to q - 2^(b-1), codebook formats looked up with
// TBL, asymmetric formats raw), each activation row's four block dots are computed exactly in
// int32 and reduced to one int32x4 {dot b0, dot b1, dot b2, dot b3}, converted to float and
// accumulated as acc += dot * (d_w * d_a)  (+ m_w * ds_a for asymmetric formats) in a float32x4.
// Since (q - z) . a = q . a - z * sum(a) exactly, the symmetric result equals the reference's
// d_w * (d_a * dot - z * ds_a) up to float rounding (without the cancellation). Up to four
// activation rows share each unpacked chunk. The last chunk of a row may hold fewer groups than
// 128 / G: the missing groups read as zeros (activations are padded to 128, qtype.h / quant.h).
// Two-level formats (G = 32) unpack like their one-level kind; only the chunk's scales differ:
// d_w = D * float(s) per lane (m_w = M * float(o)), the single rounded product the reference
// computes, read from the row's 8-bit codes under its f32 D (M).

#if defined(MXLM_TARGET_NEON)

#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/f32_ops.h"
#include "kernels/quant.h"
#include "kernels/qtype.h"
#include "kernels/simd/blocking.h"

#ifndef MXLM_TARGET_NS
#error "kernels/simd/neon_kernels.cc must be compiled with -DMXLM_TARGET_NS=<isa>"
#endif

#define MXLM_AI inline __attribute__((always_inline))

namespace mxlm {
namespace detail {
bool cpu_has_neon_dotprod();  // kernels/cpu_features.cc
}  // namespace detail

namespace kernels::MXLM_TARGET_NS {
namespace {

MXLM_AI int min_int(int a, int b) { return a < b ? a : b; }
MXLM_AI int max_int(int a, int b) { return a > b ? a : b; }

// =============================================================================================
// Float32 kernels
// =============================================================================================

// Partial loads and stores: lanes [n, 4) read as `fill`; memory past p[n) is never touched.
MXLM_AI float32x4_t load_partial(const float* p, int n, float fill = 0.0f) {
  float b[4] = {fill, fill, fill, fill};
  __builtin_memcpy(b, p, sizeof(float) * static_cast<size_t>(n));
  return vld1q_f32(b);
}
MXLM_AI void store_partial(float* p, float32x4_t v, int n) {
  float b[4];
  vst1q_f32(b, v);
  __builtin_memcpy(p, b, sizeof(float) * static_cast<size_t>(n));
}

// ---- rows of the KV cache formats (qtype.h), dequantized 4 elements at a time -----------------
// As on x86: a vector never straddles a group, and past the row's end reads the group's padding.

MXLM_AI float f16_at(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}
// Four bytes at p as a uint32x4_t.
MXLM_AI uint32x4_t u8x4(const uint8_t* p) {
  uint32_t w;
  __builtin_memcpy(&w, p, 4);
  return vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(w)))));
}

template <QType T>
MXLM_AI float32x4_t load_b(const uint8_t* row, int N, int c, int valid) {
  if constexpr (T == QType::kF32) {
    const float* f = reinterpret_cast<const float*>(row) + c;
    return valid >= 4 ? vld1q_f32(f) : load_partial(f, valid);
  } else if constexpr (T == QType::kF16 || T == QType::kBF16) {
    uint16_t h[4] = {0, 0, 0, 0};
    __builtin_memcpy(h, row + 2 * static_cast<size_t>(c), 2 * static_cast<size_t>(valid >= 4 ? 4 : valid));
    const uint16x4_t u = vld1_u16(h);
    if constexpr (T == QType::kBF16) return vreinterpretq_f32_u32(vshll_n_u16(u, 16));
    return vcvt_f32_f16(vreinterpret_f16_u16(u));
  } else if constexpr (T == QType::kQ2AG32) {
    // A group's 8 bytes: byte j, bits 2s..2s+1 hold element j + 8s.
    const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
    const uint32x4_t b = u8x4(row + 4 * nb + 8 * g + j % 8);
    const uint32x4_t q = vandq_u32(vshlq_u32(b, vdupq_n_s32(-2 * (j / 8))), vdupq_n_u32(3));
    return vfmaq_f32(vdupq_n_f32(f16_at(row + 2 * nb + 2 * g)), vcvtq_f32_u32(q), vdupq_n_f32(f16_at(row + 2 * g)));
  } else if constexpr (T == QType::kQ4AG32) {
    const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
    const uint32x4_t b = u8x4(row + 4 * nb + 16 * g + j % 16);
    const uint32x4_t q = j >= 16 ? vshrq_n_u32(b, 4) : vandq_u32(b, vdupq_n_u32(15));
    return vfmaq_f32(vdupq_n_f32(f16_at(row + 2 * nb + 2 * g)), vcvtq_f32_u32(q), vdupq_n_f32(f16_at(row + 2 * g)));
  } else {
    constexpr int G = T == QType::kQ8G32 ? 32 : T == QType::kQ8G64 ? 64 : 128;
    const int nb = (N + G - 1) / G;
    const float d = f16_at(row + 2 * (c / G));
    return vfmaq_f32(vdupq_n_f32(-128.0f * d), vcvtq_f32_u32(u8x4(row + 2 * nb + c)), vdupq_n_f32(d));
  }
}

// ---- gemm -----------------------------------------------------------------------------------
//
// A register-tiled dot-product kernel, as on x86: an MR x NR tile keeps MR*NR accumulators over
// K, each eight lanes wide (two float32x4: lane l of accumulator (i, j) sums x[i][k] * w[j][k]
// over k = l mod 8), converts each weight vector once (bf16 by shift, f16 by FCVTL) and reuses it
// across the MR activation rows. K tails use zero-padded copies, which add exact zeros. Each
// accumulator is reduced on its own by the same tree, so y[m][n] depends only on x row m, weight
// row n and K: bitwise identical between a batch and a single row and across any split of N.

struct F8 {
  float32x4_t lo, hi;
};

template <QType T>
constexpr size_t kElemBytes = T == QType::kF32 ? 4 : (T == QType::kF16 || T == QType::kBF16) ? 2 : 1;

template <QType T>
MXLM_AI F8 load_w(const uint8_t* row, int k) {
  const uint8_t* p = row + kElemBytes<T> * static_cast<size_t>(k);
  if constexpr (T == QType::kF32) {
    return {vreinterpretq_f32_u8(vld1q_u8(p)), vreinterpretq_f32_u8(vld1q_u8(p + 16))};
  } else {
    const uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8(p));
    if constexpr (T == QType::kBF16) {
      return {vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)), vreinterpretq_f32_u32(vshll_high_n_u16(h, 16))};
    } else {
      return {vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))), vcvt_high_f32_f16(vreinterpretq_f16_u16(h))};
    }
  }
}
// Elements [k, k + n) and zeros after; n in [1, 8).
template <QType T>
MXLM_AI F8 load_w_partial(const uint8_t* row, int k, int n) {
  uint8_t buf[32] = {};
  __builtin_memcpy(buf, row + kElemBytes<T> * static_cast<size_t>(k), kElemBytes<T> * static_cast<size_t>(n));
  return load_w<T>(buf, 0);
}
constexpr bool is_kv_quant(QType t) {
  return t == QType::kQ8G32 || t == QType::kQ8G64 || t == QType::kQ8G128 || t == QType::kQ4AG32 ||
         t == QType::kQ2AG32;
}
// Weight elements [k, k + n) of a row of K (n in [1, 8]; zeros after for the float formats, the
// group's padding for the KV formats, which read whole vectors: see load_b).
template <QType T>
MXLM_AI F8 load_wq(const uint8_t* row, int K, int k, int n) {
  if constexpr (is_kv_quant(T)) {
    return {load_b<T>(row, K, k, 4), load_b<T>(row, K, k + 4, 4)};
  } else {
    (void)K;
    return n == 8 ? load_w<T>(row, k) : load_w_partial<T>(row, k, n);
  }
}
MXLM_AI F8 load_x(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
MXLM_AI F8 load_x_partial(const float* p, int n) {
  float buf[8] = {};
  __builtin_memcpy(buf, p, sizeof(float) * static_cast<size_t>(n));
  return {vld1q_f32(buf), vld1q_f32(buf + 4)};
}
MXLM_AI F8 fma8(F8 acc, F8 a, F8 b) { return {vfmaq_f32(acc.lo, a.lo, b.lo), vfmaq_f32(acc.hi, a.hi, b.hi)}; }
MXLM_AI float reduce8(F8 v) { return vaddvq_f32(vaddq_f32(v.lo, v.hi)); }

using TileFn = void (*)(int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, float* y,
                        size_t ldy);

// y[i*ldy + j] = dot(x row i, w row j) for i < MR, j < NR.
template <QType T, int MR, int NR>
void tile(int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, float* y, size_t ldy) {
  F8 acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
  }
  const float* xr[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) xr[i] = x + static_cast<size_t>(i) * ldx;
  const uint8_t* wr[NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) wr[j] = w + static_cast<size_t>(j) * w_row_bytes;

  int k = 0;
  for (; k <= K - 8; k += 8) {
    F8 wv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) wv[j] = load_wq<T>(wr[j], K, k, 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const F8 xv = load_x(xr[i] + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = fma8(acc[i][j], xv, wv[j]);
    }
  }
  if (k < K) {
    const int rem = K - k;
    F8 wv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) wv[j] = load_wq<T>(wr[j], K, k, rem);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const F8 xv = load_x_partial(xr[i] + k, rem);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = fma8(acc[i][j], xv, wv[j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) y[static_cast<size_t>(i) * ldy + j] = reduce8(acc[i][j]);
  }
}

// Tiles<T, MR, NR>::fn[(mr - 1) * NR + (nr - 1)] is tile<T, mr, nr>.
template <QType T, int MR, int NR, class Seq>
struct TilesImpl;
template <QType T, int MR, int NR, int... I>
struct TilesImpl<T, MR, NR, std::integer_sequence<int, I...>> {
  static constexpr TileFn fn[sizeof...(I)] = {&tile<T, I / NR + 1, I % NR + 1>...};
};
template <QType T, int MR, int NR>
using Tiles = TilesImpl<T, MR, NR, std::make_integer_sequence<int, MR * NR>>;

template <QType T, int MR, int NR>
void gemm_blocked(int M, int n0, int n1, int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes,
                  float* y, size_t ldy) {
  const TileFn* fns = Tiles<T, MR, NR>::fn;
  const int nb = weight_block_rows(n0, n1, static_cast<size_t>(max_int(K, 1)) * kElemBytes<T>, NR);
  for (int nb0 = n0; nb0 < n1; nb0 += min_int(nb, n1 - nb0)) {
    const int nb1 = nb0 + min_int(nb, n1 - nb0);
    for (int m = 0; m < M; m += MR) {
      const int mr = min_int(MR, M - m);
      const float* xm = x + static_cast<size_t>(m) * ldx;
      float* ym = y + static_cast<size_t>(m) * ldy;
      for (int n = nb0; n < nb1; n += NR) {
        const int nr = min_int(NR, nb1 - n);
        fns[(mr - 1) * NR + (nr - 1)](K, xm, ldx, w + static_cast<size_t>(n) * w_row_bytes, w_row_bytes, ym + n, ldy);
      }
    }
  }
}

// Tile shapes for 32 vector registers: M > 1 4x2 (16 accumulator registers, 4 weight, 2 x);
// M = 1 (bound by memory) takes short rows one at a time (one sequential stream) and long rows
// four at a time (more misses in flight, x read once per four rows).
constexpr int kMr = 4, kNr = 2;
constexpr int kGemvNr = 4;
constexpr size_t kGemvShortRowBytes = 4096;

#include "kernels/simd/f32_gemm_inl.h"


// gemm_bf16: each output one dot of bf16 pairs widened to f32 (a 16-bit shift) with fmas in four
// lanes, reduced at the end: the order depends only on K (the contract of f32_ops.h).
inline float32x4_t bf16x4(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

void gemm_bf16(int M, int n0, int n1, int K, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, float* y,
               size_t ldy) {
  for (int m = 0; m < M; ++m) {
    const uint16_t* xr = x + static_cast<size_t>(m) * ldx;
    for (int n = n0; n < n1; ++n) {
      const uint16_t* wr = w + static_cast<size_t>(n) * ldw;
      float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
      int k = 0;
      for (; k <= K - 8; k += 8) {
        s0 = vfmaq_f32(s0, bf16x4(xr + k), bf16x4(wr + k));
        s1 = vfmaq_f32(s1, bf16x4(xr + k + 4), bf16x4(wr + k + 4));
      }
      uint16_t xt[8] = {}, wt[8] = {};
      for (int i = k; i < K; ++i) {
        xt[i - k] = xr[i];
        wt[i - k] = wr[i];
      }
      if (k < K) {
        s0 = vfmaq_f32(s0, bf16x4(xt), bf16x4(wt));
        s1 = vfmaq_f32(s1, bf16x4(xt + 4), bf16x4(wt + 4));
      }
      y[static_cast<size_t>(m) * ldy + n] = vaddvq_f32(vaddq_f32(s0, s1));
    }
  }
}

// Round to nearest even on the f32 bits (f16 widened first).
void to_bf16(const void* src, QType src_type, uint16_t* dst, size_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  if (n == 0) return;  // src and dst may be null
  if (src_type == QType::kBF16) {
    std::memcpy(dst, b, 2 * n);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    float f;
    if (src_type == QType::kF16) {
      __fp16 h;
      std::memcpy(&h, b + 2 * i, 2);
      f = static_cast<float>(h);
    } else {
      std::memcpy(&f, b + 4 * i, 4);
    }
    uint32_t u;
    std::memcpy(&u, &f, 4);
    dst[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// ---- vector ops -----------------------------------------------------------------------------

float dot(const float* a, const float* b, int n) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
  int i = 0;
  for (; i <= n - 16; i += 16) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
    s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
  }
  for (; i <= n - 4; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
  if (i < n) s1 = vfmaq_f32(s1, load_partial(a + i, n - i), load_partial(b + i, n - i));
  return vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
}

float sum(const float* x, size_t n) {
  float32x4_t s[8];
  for (float32x4_t& v : s) v = vdupq_n_f32(0.0f);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int j = 0; j < 8; ++j) s[j] = vaddq_f32(s[j], vld1q_f32(x + i + 4 * j));
  }
  for (; i + 4 <= n; i += 4) s[0] = vaddq_f32(s[0], vld1q_f32(x + i));
  if (i < n) s[1] = vaddq_f32(s[1], load_partial(x + i, static_cast<int>(n - i)));
  for (int j = 1; j < 8; ++j) s[0] = vaddq_f32(s[0], s[j]);
  return vaddvq_f32(s[0]);
}

// ---- gemm_nn: y = x · B with B row-major [K][N] (kernels/f32_ops.h) ------------------------------
// As on x86: columns are lanes, an MR x NV tile of float32x4 accumulators, B's row k dequantized
// once per k for the MR rows (a vector of 4 never straddles a group), each y[m][n] one fma chain
// in ascending k. The quantized KV formats factored, as on x86 (gemm_nn_tile_factored there):
// B[k][n] = d u + o, so sum_k x_k B[k][n] = sum_k (x_k d) u_kn + sum_k x_k o; a tile's 16
// columns lie in one group (groups of 32 or more, tiles at multiples of 16), so per row k one
// scale and one offset serve the whole tile, and each vector of quants costs its widening and
// one fma where dequantizing it took a second fma.

// The quants of elements [c, c + 4) of a KV-format row as floats (load_b's d u + o without d, o).
template <QType T>
MXLM_AI float32x4_t load_u(const uint8_t* row, int N, int c) {
  if constexpr (T == QType::kQ2AG32) {
    const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
    const uint32x4_t b = u8x4(row + 4 * nb + 8 * g + j % 8);
    return vcvtq_f32_u32(vandq_u32(vshlq_u32(b, vdupq_n_s32(-2 * (j / 8))), vdupq_n_u32(3)));
  } else if constexpr (T == QType::kQ4AG32) {
    const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
    const uint32x4_t b = u8x4(row + 4 * nb + 16 * g + j % 16);
    return vcvtq_f32_u32(j >= 16 ? vshrq_n_u32(b, 4) : vandq_u32(b, vdupq_n_u32(15)));
  } else {
    constexpr int G = T == QType::kQ8G32 ? 32 : T == QType::kQ8G64 ? 64 : 128;
    return vcvtq_f32_u32(u8x4(row + 2 * ((N + G - 1) / G) + c));
  }
}

template <QType T, int MR, int NV>
void gemm_nn_tile_factored(int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y,
                           size_t ldy, int last, bool acc_in) {
  constexpr bool kAffine = T == QType::kQ4AG32 || T == QType::kQ2AG32;
  constexpr int G = kAffine ? 32 : T == QType::kQ8G32 ? 32 : T == QType::kQ8G64 ? 64 : 128;
  static_assert(4 * NV <= 16 && G % 16 == 0, "a tile lies in one group");
  const int nb = (N + G - 1) / G, g = c0 / G;
  float32x4_t acc[MR][NV];
  float off[MR];
  for (int m = 0; m < MR; ++m) {
    off[m] = 0.0f;
    for (int v = 0; v < NV; ++v) {
      const float* yv = y + m * ldy + 4 * v;
      acc[m][v] = !acc_in ? vdupq_n_f32(0.0f) : v < NV - 1 || last == 4 ? vld1q_f32(yv) : load_partial(yv, last);
    }
  }
  for (int k = 0; k < K; ++k) {
    const uint8_t* row = b + static_cast<size_t>(k) * brb;
    const float d = f16_at(row + 2 * g);
    const float o = kAffine ? f16_at(row + 2 * nb + 2 * g) : -128.0f * d;  // exact
    float32x4_t u[NV];
    for (int v = 0; v < NV; ++v) u[v] = load_u<T>(row, N, c0 + 4 * v);
    for (int m = 0; m < MR; ++m) {
      const float xm = x[m * ldx + k];
      const float c = xm * d;
      off[m] = __builtin_fmaf(xm, o, off[m]);
      for (int v = 0; v < NV; ++v) acc[m][v] = vfmaq_n_f32(acc[m][v], u[v], c);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const float32x4_t og = vdupq_n_f32(off[m]);
    for (int v = 0; v < NV; ++v) {
      const float32x4_t r = vaddq_f32(acc[m][v], og);
      if (v < NV - 1 || last == 4) {
        vst1q_f32(y + m * ldy + 4 * v, r);
      } else {
        store_partial(y + m * ldy + 4 * v, r, last);
      }
    }
  }
}

template <QType T, int MR, int NV>
void gemm_nn_tile(int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y, size_t ldy,
                  int last, bool acc_in) {
  if constexpr (is_kv_quant(T)) {
    return gemm_nn_tile_factored<T, MR, NV>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
  }
  float32x4_t acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      const float* yv = y + m * ldy + 4 * v;
      acc[m][v] = !acc_in ? vdupq_n_f32(0.0f) : v < NV - 1 || last == 4 ? vld1q_f32(yv) : load_partial(yv, last);
    }
  }
  for (int k = 0; k < K; ++k) {
    const uint8_t* row = b + static_cast<size_t>(k) * brb;
    float32x4_t bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_b<T>(row, N, c0 + 4 * v, v == NV - 1 ? last : 4);
    for (int m = 0; m < MR; ++m) {
      const float32x4_t xm = vdupq_n_f32(x[m * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] = vfmaq_f32(acc[m][v], xm, bv[v]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV - 1; ++v) vst1q_f32(y + m * ldy + 4 * v, acc[m][v]);
    if (last == 4) {
      vst1q_f32(y + m * ldy + 4 * (NV - 1), acc[m][NV - 1]);
    } else {
      store_partial(y + m * ldy + 4 * (NV - 1), acc[m][NV - 1], last);
    }
  }
}

template <QType T, int MR>
void gemm_nn_rows(int nv, int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y,
                  size_t ldy, int last, bool acc_in) {
  switch (nv) {
    case 1: return gemm_nn_tile<T, MR, 1>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
    case 2: return gemm_nn_tile<T, MR, 2>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
    case 3: return gemm_nn_tile<T, MR, 3>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
    default: return gemm_nn_tile<T, MR, 4>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
  }
}

template <QType T>
void gemm_nn_t(int M, int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, float* y, size_t ldy,
               bool acc_in) {
  for (int c0 = 0; c0 < N; c0 += 16) {
    const int nn = min_int(16, N - c0);
    const int nv = (nn + 3) / 4, last = nn - 4 * (nv - 1);
    int m = 0;
    for (; m + 4 <= M; m += 4) gemm_nn_rows<T, 4>(nv, N, K, x + m * ldx, ldx, b, brb, c0, y + m * ldy + c0, ldy, last, acc_in);
    const float* xm = x + m * ldx;
    float* ym = y + m * ldy + c0;
    switch (M - m) {
      case 3: gemm_nn_rows<T, 3>(nv, N, K, xm, ldx, b, brb, c0, ym, ldy, last, acc_in); break;
      case 2: gemm_nn_rows<T, 2>(nv, N, K, xm, ldx, b, brb, c0, ym, ldy, last, acc_in); break;
      case 1: gemm_nn_rows<T, 1>(nv, N, K, xm, ldx, b, brb, c0, ym, ldy, last, acc_in); break;
      default: break;
    }
  }
}

void gemm_nn(int M, int N, int K, const float* x, size_t ldx, const void* b, size_t b_row_bytes, QType btype, float* y,
             size_t ldy, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const uint8_t* bb = static_cast<const uint8_t*>(b);
  switch (btype) {
    case QType::kF32: return gemm_nn_t<QType::kF32>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kQ8G32: return gemm_nn_t<QType::kQ8G32>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kQ8G64: return gemm_nn_t<QType::kQ8G64>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kQ8G128: return gemm_nn_t<QType::kQ8G128>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kQ4AG32: return gemm_nn_t<QType::kQ4AG32>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kQ2AG32: return gemm_nn_t<QType::kQ2AG32>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kF16: return gemm_nn_t<QType::kF16>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    case QType::kBF16: return gemm_nn_t<QType::kBF16>(M, N, K, x, ldx, bb, b_row_bytes, y, ldy, accumulate);
    default: break;
  }
  __builtin_trap();  // not a gemm_nn format: a caller bug
}

void axpy(float a, const float* x, float* y, int n) {
  const float32x4_t va = vdupq_n_f32(a);
  int i = 0;
  for (; i <= n - 4; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, vld1q_f32(x + i)));
  if (i < n) store_partial(y + i, vfmaq_f32(load_partial(y + i, n - i), va, load_partial(x + i, n - i)), n - i);
}

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
  int i = 0;
  for (; i <= n - 8; i += 8) {
    const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
    s0 = vfmaq_f32(s0, a, a);
    s1 = vfmaq_f32(s1, b, b);
  }
  for (; i <= n - 4; i += 4) {
    const float32x4_t a = vld1q_f32(x + i);
    s0 = vfmaq_f32(s0, a, a);
  }
  if (i < n) {
    const float32x4_t a = load_partial(x + i, n - i);
    s1 = vfmaq_f32(s1, a, a);
  }
  const float ss = vaddvq_f32(vaddq_f32(s0, s1));
  const float scale = 1.0f / __builtin_sqrtf(ss / static_cast<float>(max_int(n, 1)) + eps);
  const float32x4_t vs = vdupq_n_f32(scale);
  for (i = 0; i <= n - 4; i += 4) vst1q_f32(y + i, vmulq_f32(vmulq_f32(vld1q_f32(x + i), vs), vld1q_f32(w + i)));
  if (i < n) store_partial(y + i, vmulq_f32(vmulq_f32(load_partial(x + i, n - i), vs), load_partial(w + i, n - i)), n - i);
}

// e^x: n = round(x / ln2), r = x - n ln2 (Cody-Waite: ln2_hi has 16 significant bits so n * ln2_hi
// is exact for |n| <= 256), e^r by its degree-7 Taylor polynomial on |r| <= ln2/2 (truncation
// < 1e-8 relative), times 2^n built as 2^n1 * 2^n2 (n1 = n >> 1, n2 = n - n1: both factors stay
// normal for n in [-150, 128]; the first product is exact, the second rounds once, also into
// subnormals). Inputs are clamped to [-104, 88.8] (below: 0 after rounding; above: +inf); NaN
// propagates (FMIN/FMAX return NaN, and the conversion of NaN gives n = 0).
constexpr float kExpHi = 88.8f;
constexpr float kExpLo = -104.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187045e-06f;
constexpr float kExpC[8] = {1.0f,         1.0f,          0.5f,          1.0f / 6.0f,
                            1.0f / 24.0f, 1.0f / 120.0f, 1.0f / 720.0f, 1.0f / 5040.0f};

MXLM_AI float32x4_t exp4(float32x4_t x) {
  x = vminq_f32(vdupq_n_f32(kExpHi), x);
  x = vmaxq_f32(vdupq_n_f32(kExpLo), x);
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(kLog2e)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(kLn2Hi));
  r = vfmsq_f32(r, n, vdupq_n_f32(kLn2Lo));
  float32x4_t p = vdupq_n_f32(kExpC[7]);
#pragma GCC unroll 8
  for (int i = 6; i >= 0; --i) p = vfmaq_f32(vdupq_n_f32(kExpC[i]), p, r);
  const int32x4_t ni = vcvtq_s32_f32(n);
  const int32x4_t n1 = vshrq_n_s32(ni, 1);
  const int32x4_t n2 = vsubq_s32(ni, n1);
  const int32x4_t bias = vdupq_n_s32(127);
  const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
  const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
  return vmulq_f32(vmulq_f32(p, s1), s2);
}

// silu(g) * u = g / (1 + e^-g) * u; e^-g = inf gives -0 (the limit), e^-g = 0 gives g.
MXLM_AI float32x4_t swiglu4(float32x4_t g, float32x4_t u) {
  const float32x4_t e = exp4(vnegq_f32(g));
  return vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), e)), u);
}

void swiglu(const float* gate, const float* up, float* out, int n) {
  int i = 0;
  for (; i <= n - 4; i += 4) vst1q_f32(out + i, swiglu4(vld1q_f32(gate + i), vld1q_f32(up + i)));
  if (i < n) store_partial(out + i, swiglu4(load_partial(gate + i, n - i), load_partial(up + i, n - i)), n - i);
}

// e^(x - m) where the float difference x - m is inexact: TwoSum recovers the rounding error r of
// d = x - m and e^(d + r) = e^d (1 + r). x is first raised to lo = m - 120 (e^-120 is 0 in float)
// so that -inf inputs give 0 instead of NaN.
MXLM_AI float32x4_t exp_shifted(float32x4_t x, float32x4_t m, float32x4_t lo) {
  x = vmaxq_f32(x, lo);
  const float32x4_t d = vsubq_f32(x, m);
  const float32x4_t t = vsubq_f32(d, x);  // ~ -m
  const float32x4_t r = vsubq_f32(vsubq_f32(x, vsubq_f32(d, t)), vaddq_f32(m, t));
  const float32x4_t e = exp4(d);
  return vfmaq_f32(e, e, r);
}

// max of x[0, n), n > 0.
float row_max(const float* x, int n) {
  constexpr float kNegInf = -__builtin_inff();
  float32x4_t vm = vdupq_n_f32(kNegInf);
  int i = 0;
  for (; i <= n - 4; i += 4) vm = vmaxq_f32(vm, vld1q_f32(x + i));
  if (i < n) vm = vmaxq_f32(vm, load_partial(x + i, n - i, kNegInf));
  return vmaxvq_f32(vm);
}

#include "kernels/simd/sum_exp_inl.h"

double log_sum_exp(const float* x, int n) {
  if (n <= 0) return -__builtin_inf();
  const float mx = row_max(x, n);
  return std::log(sum_exp_lanes<2>(x, n, mx)) + mx;
}

float softmax(float* x, int n) {
  constexpr float kNegInf = -__builtin_inff();
  if (n <= 0) return kNegInf;
  int i = 0;
  const float mxs = row_max(x, n);
  const float32x4_t mx = vdupq_n_f32(mxs);
  const float32x4_t lo = vdupq_n_f32(mxs - 120.0f);

  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0;
  for (i = 0; i <= n - 8; i += 8) {
    const float32x4_t e0 = exp_shifted(vld1q_f32(x + i), mx, lo);
    const float32x4_t e1 = exp_shifted(vld1q_f32(x + i + 4), mx, lo);
    vst1q_f32(x + i, e0);
    vst1q_f32(x + i + 4, e1);
    s0 = vaddq_f32(s0, e0);
    s1 = vaddq_f32(s1, e1);
  }
  for (; i <= n - 4; i += 4) {
    const float32x4_t e = exp_shifted(vld1q_f32(x + i), mx, lo);
    vst1q_f32(x + i, e);
    s0 = vaddq_f32(s0, e);
  }
  if (i < n) {
    // Lanes past n load -inf: exp_shifted gives exactly 0 there.
    const float32x4_t e = exp_shifted(load_partial(x + i, n - i, kNegInf), mx, lo);
    store_partial(x + i, e, n - i);
    s1 = vaddq_f32(s1, e);
  }
  const float sum = vaddvq_f32(vaddq_f32(s0, s1));
  const float32x4_t inv = vdupq_n_f32(1.0f / sum);
  for (i = 0; i <= n - 4; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), inv));
  if (i < n) store_partial(x + i, vmulq_f32(load_partial(x + i, n - i), inv), n - i);
  return mxs + std::log(sum);
}

// =============================================================================================
// Activation quantization (bit-identical to quantize_act_row_ref)
// =============================================================================================
//
// The reference computes, per block, amax (std::max skips NaN: FMAXNM does the same), id =
// 127 / amax, q = nearbyint(x * id) (round half to even: FCVTNS), d = amax / 127 and ds = d * sum(q),
// each as one correctly rounded float operation, so the same operations here give the same bits.

// max(amax, |x|) over the first n floats (NaN skipped, like std::max(amax, |x|)).
MXLM_AI float absmax(const float* x, int64_t n, float amax) {
  float32x4_t m0 = vdupq_n_f32(amax), m1 = m0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    m0 = vmaxnmq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
    m1 = vmaxnmq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
  }
  float r = vmaxnmvq_f32(vmaxnmq_f32(m0, m1));
  for (; i < n; ++i) {
    const float a = __builtin_fabsf(x[i]);
    r = r < a ? a : r;
  }
  return r;
}

// One 32-element block x[0..32) (zero-padded by the caller): q, and the sum of q.
MXLM_AI int quantize_block(const float* x, float id, int8_t* q) {
  const float32x4_t vid = vdupq_n_f32(id);
  int32x4_t sum = vdupq_n_s32(0);
#pragma GCC unroll 4
  for (int j = 0; j < 32; j += 16) {
    const int32x4_t a = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j), vid));
    const int32x4_t b = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 4), vid));
    const int32x4_t c = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 8), vid));
    const int32x4_t d = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 12), vid));
    sum = vaddq_s32(vaddq_s32(sum, vaddq_s32(a, b)), vaddq_s32(c, d));
    // Truncating narrows: static_cast<int8_t>(int), like the reference (|q| <= 127 unless
    // 127 / amax overflowed, where both keep the low byte of FCVTNS's saturated INT_MAX).
    const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
    const int16x8_t cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
    vst1q_s8(q + j, vcombine_s8(vmovn_s16(ab), vmovn_s16(cd)));
  }
  return vaddvq_s32(sum);
}

void quantize_act(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token) {
  const int64_t nb = kp / kActBlock;
  const float row_amax = per_token ? absmax(x, k, 0.0f) : 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * kActBlock;
    const int64_t n = k - i0 >= kActBlock ? kActBlock : (k > i0 ? k - i0 : 0);  // elements of x in the block
    const float* xb = x + i0;
    float pad[kActBlock];
    if (n < kActBlock) {
      __builtin_memset(pad, 0, sizeof(pad));
      if (n > 0) __builtin_memcpy(pad, xb, sizeof(float) * static_cast<size_t>(n));
      xb = pad;
    }
    const float amax = per_token ? row_amax : absmax(xb, kActBlock, 0.0f);
    const bool zero = !(amax > kActTiny);
    const float id = zero ? 0.0f : 127.0f / amax;
    const int sum = quantize_block(xb, id, q + i0);
    d[b] = zero ? 0.0f : amax / 127.0f;
    ds[b] = d[b] * static_cast<float>(sum);
  }
}

// =============================================================================================
// Quantized GEMM: weight unpacking (shared by both dot-product paths)
// =============================================================================================

constexpr int qtype_index(QType t) {
  for (size_t i = 0; i < sizeof(kQTypes) / sizeof(kQTypes[0]); ++i) {
    if (kQTypes[i].type == t) return static_cast<int>(i);
  }
  return -1;
}

template <QType T>
struct Fmt {
  static constexpr const QTypeInfo& info = kQTypes[qtype_index(T)];
  static constexpr int kBits = info.bits;
  static constexpr int kG = info.block_elems;
  static constexpr QKind kKind = info.kind;
  static constexpr int kQBytes = kG * kBits / 8;      // quant bytes per group
  static constexpr int kGroupsPerChunk = 128 / kG;    // groups per 128-element chunk
  static constexpr int kPrefix = info.row_prefix_bytes;
  static constexpr bool kTwoLevel = info.two_level;
  static constexpr int kCodeBytes = kTwoLevel ? 1 : 2;  // bytes per group scale (offset)
  static_assert(kKind != QKind::kFloat && 128 % kG == 0 && kG % 32 == 0, "unsupported group size");
  static_assert(!kTwoLevel || (kG == 32 && kKind != QKind::kCodebook &&
                               kPrefix == (kKind == QKind::kAsymmetric ? 8 : 4)),
                "two-level formats: groups of 32, f32 D (and M) before the codes");
};

// Pointers into one weight row (qtype.h): [codebook][d f16 x nb][m f16 x nb][quants], or for
// two-level formats [D f32][M f32][s u8/i8 x nb][o i8 x nb][quants] (no alignment: D and M are
// copied out bytewise).
struct RowPtrs {
  const uint8_t* d;  // group scales (two-level: codes s)
  const uint8_t* m;  // group offsets (two-level: codes o), asymmetric formats
  const uint8_t* q;
  int8x16_t cb;  // codebook formats: the row's table (entries past 2^b are 0)
  float D, M;    // two-level formats: the row scales (M = 0 when symmetric)
};

template <QType T>
MXLM_AI RowPtrs row_ptrs(const uint8_t* row, int64_t nb) {
  using F = Fmt<T>;
  RowPtrs r;
  r.cb = vdupq_n_s8(0);
  if constexpr (F::kKind == QKind::kCodebook) {
    if constexpr (F::kPrefix == 16) {
      r.cb = vld1q_s8(reinterpret_cast<const int8_t*>(row));
    } else {
      static_assert(F::kPrefix == 8);
      r.cb = vcombine_s8(vld1_s8(reinterpret_cast<const int8_t*>(row)), vdup_n_s8(0));
    }
  }
  r.D = 0.0f;
  r.M = 0.0f;
  if constexpr (F::kTwoLevel) {
    __builtin_memcpy(&r.D, row, 4);
    if constexpr (F::kKind == QKind::kAsymmetric) __builtin_memcpy(&r.M, row + 4, 4);
  }
  r.d = row + F::kPrefix;
  r.m = r.d + F::kCodeBytes * nb;
  r.q = F::kKind == QKind::kAsymmetric ? r.m + F::kCodeBytes * nb : r.m;
  return r;
}

// Bit planes (qtype.h) of one group of G elements into G/16 vectors of values, in element order.
// 4-bit plane, G/2 bytes: byte j low nibble q[j], high nibble q[j + G/2].
template <int G>
MXLM_AI void plane4(const uint8_t* s, uint8x16_t* o) {
  constexpr int nv = G / 32;
#pragma GCC unroll 4
  for (int i = 0; i < nv; ++i) {
    const uint8x16_t v = vld1q_u8(s + 16 * i);
    o[i] = vandq_u8(v, vdupq_n_u8(0x0f));
    o[nv + i] = vshrq_n_u8(v, 4);
  }
}
// 2-bit plane, G/4 bytes: byte j bits 2s..2s+1 = q[j + s*G/4].
template <int G>
MXLM_AI void plane2(const uint8_t* s, uint8x16_t* o) {
  const uint8x16_t three = vdupq_n_u8(3);
  if constexpr (G == 32) {
    const uint8x8_t b = vld1_u8(s);
    const uint8x16_t v = vcombine_u8(b, vshr_n_u8(b, 2));  // q[0..8) q[8..16) in the low bits
    o[0] = vandq_u8(v, three);
    o[1] = vandq_u8(vshrq_n_u8(v, 4), three);              // q[16..24) q[24..32)
  } else {
    constexpr int nv = G / 64;
#pragma GCC unroll 2
    for (int i = 0; i < nv; ++i) {
      const uint8x16_t v = vld1q_u8(s + 16 * i);
      o[i] = vandq_u8(v, three);
      o[nv + i] = vandq_u8(vshrq_n_u8(v, 2), three);
      o[2 * nv + i] = vandq_u8(vshrq_n_u8(v, 4), three);
      o[3 * nv + i] = vshrq_n_u8(v, 6);
    }
  }
}
// 1-bit plane of a 32-element group, 4 bytes, bit e at byte e/8 bit e%8: `value` where set.
MXLM_AI void plane1_g32(const uint8_t* s, uint8_t value, uint8x16_t* o) {
  uint32_t u;
  __builtin_memcpy(&u, s, 4);
  const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(u));
  static constexpr uint8_t kIdx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                       2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
  static constexpr uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t bit = vld1q_u8(kBit), val = vdupq_n_u8(value);
  o[0] = vandq_u8(vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(kIdx)), bit), val);
  o[1] = vandq_u8(vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(kIdx + 16)), bit), val);
}

// One group's G values as int8 vectors, ready for the dot product: q - 2^(b-1) (symmetric),
// q (asymmetric) or codebook[q] (codebook).
template <QType T>
MXLM_AI void unpack_group_s8(const uint8_t* s, int8x16_t cb, int8x16_t* out) {
  using F = Fmt<T>;
  constexpr int G = F::kG, nv = G / 16;
  uint8x16_t q[nv];
  if constexpr (F::kBits == 8) {
#pragma GCC unroll 8
    for (int i = 0; i < nv; ++i) q[i] = vld1q_u8(s + 16 * i);
  } else if constexpr (F::kBits == 4) {
    plane4<G>(s, q);
  } else if constexpr (F::kBits == 2) {
    plane2<G>(s, q);
  } else if constexpr (F::kBits == 6) {
    static_assert(G == 32, "6-bit groups of 32 only");
    uint8x16_t hi[2];
    plane4<G>(s, q);
    plane2<G>(s + G / 2, hi);
    q[0] = vorrq_u8(q[0], vshlq_n_u8(hi[0], 4));
    q[1] = vorrq_u8(q[1], vshlq_n_u8(hi[1], 4));
  } else if constexpr (F::kBits == 5) {
    static_assert(G == 32, "5-bit groups of 32 only");
    uint8x16_t hi[2];
    plane4<G>(s, q);
    plane1_g32(s + G / 2, 16, hi);
    q[0] = vorrq_u8(q[0], hi[0]);
    q[1] = vorrq_u8(q[1], hi[1]);
  } else {
    static_assert(F::kBits == 3 && G == 32, "3-bit groups of 32 only");
    uint8x16_t hi[2];
    plane2<G>(s, q);
    plane1_g32(s + G / 4, 4, hi);
    q[0] = vorrq_u8(q[0], hi[0]);
    q[1] = vorrq_u8(q[1], hi[1]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < nv; ++i) {
    if constexpr (F::kKind == QKind::kSymmetric) {
      out[i] = vreinterpretq_s8_u8(vsubq_u8(q[i], vdupq_n_u8(static_cast<uint8_t>(1u << (F::kBits - 1)))));
    } else if constexpr (F::kKind == QKind::kCodebook) {
      out[i] = vqtbl1q_s8(cb, q[i]);
    } else {
      out[i] = vreinterpretq_s8_u8(q[i]);
    }
  }
}

// A 128-element chunk of a weight row: eight int8 vectors, and per 32-element block the group's
// scale (and offset).
struct Chunk {
  int8x16_t w[8];
  float32x4_t d;  // d of the group of block j, in lane j
  float32x4_t m;  // asymmetric formats: m of the group of block j
};

// f16 values p[i], p[i] ... as float32x4: lane j gets group (4c + j) / (G / 32).
template <int G>
MXLM_AI float32x4_t chunk_scales(const uint8_t* p, int64_t c) {
  if constexpr (G == 32) {
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p + 8 * c)));
  } else if constexpr (G == 64) {
    uint32_t u;
    __builtin_memcpy(&u, p + 4 * c, 4);
    const float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u32(vdup_n_u32(u)));  // d0 d1 d0 d1
    return vzip1q_f32(v, v);                                                  // d0 d0 d1 d1
  } else {
    uint16_t h;
    __builtin_memcpy(&h, p + 2 * c, 2);
    return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h)));
  }
}
// The same for the last chunk, which holds only ng < 128 / G groups: the others read as 0.
template <int G>
MXLM_AI float32x4_t chunk_scales_partial(const uint8_t* p, int64_t c, int ng) {
  uint16_t h[4] = {0, 0, 0, 0};
  const int64_t g0 = c * (128 / G);
  for (int j = 0; j < 4; ++j) {
    const int g = j / (G / 32);
    if (g < ng) __builtin_memcpy(&h[j], p + 2 * (g0 + g), 2);
  }
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

// Two-level formats (G = 32: one group per block): the codes p[4c..4c+4) of chunk c as
// D * float(code) in lane j, one float multiply each (the code converts exactly), so the same
// single rounding as the reference's D * s. kSigned: i8 codes (symmetric scales, offsets), else
// u8 (asymmetric scales).
template <bool kSigned>
MXLM_AI float32x4_t chunk_codes(const uint8_t* p, int64_t c, float D) {
  uint32_t u;
  __builtin_memcpy(&u, p + 4 * c, 4);
  const uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(u));
  float32x4_t v;
  if constexpr (kSigned) {
    v = vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(b)))));
  } else {
    v = vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
  }
  return vmulq_n_f32(v, D);
}
// The same for the last chunk, which holds only ng < 4 groups: the other lanes are exactly 0
// (not D * 0, which a non-finite D would make NaN).
template <bool kSigned>
MXLM_AI float32x4_t chunk_codes_partial(const uint8_t* p, int64_t c, int ng, float D) {
  float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int j = 0; j < ng; ++j) {
    const uint8_t code = p[4 * c + j];
    f[j] = D * static_cast<float>(kSigned ? static_cast<int>(static_cast<int8_t>(code)) : static_cast<int>(code));
  }
  return vld1q_f32(f);
}

// Chunk c of a row (groups [c * 128/G, c * 128/G + ng)), ng = 128/G except maybe in the last.
template <QType T, bool kFull>
MXLM_AI void load_chunk(const RowPtrs& r, int64_t c, int ng, Chunk* out) {
  using F = Fmt<T>;
  constexpr int G = F::kG, gpc = F::kGroupsPerChunk;
  const uint8_t* qs = r.q + c * gpc * F::kQBytes;
  if constexpr (kFull) {
#pragma GCC unroll 4
    for (int g = 0; g < gpc; ++g) unpack_group_s8<T>(qs + g * F::kQBytes, r.cb, out->w + g * (G / 16));
    if constexpr (F::kTwoLevel) {
      // d = D * s (s: i8 symmetric, u8 asymmetric), m = M * o (o: i8).
      out->d = chunk_codes<F::kKind == QKind::kSymmetric>(r.d, c, r.D);
      if constexpr (F::kKind == QKind::kAsymmetric) out->m = chunk_codes<true>(r.m, c, r.M);
    } else {
      out->d = chunk_scales<G>(r.d, c);
      if constexpr (F::kKind == QKind::kAsymmetric) out->m = chunk_scales<G>(r.m, c);
    }
  } else {
    for (int i = 0; i < 8; ++i) out->w[i] = vdupq_n_s8(0);
    for (int g = 0; g < ng; ++g) unpack_group_s8<T>(qs + g * F::kQBytes, r.cb, out->w + g * (G / 16));
    if constexpr (F::kTwoLevel) {
      out->d = chunk_codes_partial<F::kKind == QKind::kSymmetric>(r.d, c, ng, r.D);
      if constexpr (F::kKind == QKind::kAsymmetric) out->m = chunk_codes_partial<true>(r.m, c, ng, r.M);
    } else {
      out->d = chunk_scales_partial<G>(r.d, c, ng);
      if constexpr (F::kKind == QKind::kAsymmetric) out->m = chunk_scales_partial<G>(r.m, c, ng);
    }
  }
  if constexpr (F::kKind != QKind::kAsymmetric) out->m = vdupq_n_f32(0.0f);
}

// Activation rows of one M tile.
template <int MR>
struct ActRows {
  const int8_t* q[MR];
  const float* d[MR];
  const float* ds[MR];
};

// Rows of weights per N block: the block stays in L2 while every M tile streams over it.
constexpr size_t kQWeightBlockBytes = size_t{256} << 10;

// =============================================================================================
// Quantized GEMM: the kernels, once per dot-product path
// =============================================================================================

namespace nodot {
#define MXLM_NEON_DOTPROD 0
#include "kernels/simd/neon_qgemm_inl.h"
#undef MXLM_NEON_DOTPROD
}  // namespace nodot

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace dotprod {
#define MXLM_NEON_DOTPROD 1
#include "kernels/simd/neon_qgemm_inl.h"
#undef MXLM_NEON_DOTPROD
}  // namespace dotprod
#pragma GCC pop_options

template <QType T>
void register_one(bool has_dotprod) {
  if constexpr (kQTypes[qtype_index(T)].kind != QKind::kFloat) {
    register_qkernel(T, Isa::kNeon, has_dotprod ? &dotprod::qgemm<T> : &nodot::qgemm<T>);
  }
}
template <size_t... I>
void register_all(bool has_dotprod, std::index_sequence<I...>) {
  (register_one<kQTypes[I].type>(has_dotprod), ...);
}

}  // namespace

void register_f32(F32Kernels* out) {
  out->gemm = &gemm;
  out->gemm_bf16 = &gemm_bf16;
  out->to_bf16 = &to_bf16;
  out->dot = &dot;
  out->axpy = &axpy;
  out->gemm_nn = &gemm_nn;
  out->rmsnorm = &rmsnorm;
  out->swiglu = &swiglu;
  out->softmax = &softmax;
  out->log_sum_exp = &log_sum_exp;
  out->sum = &sum;
}

void register_quant_kernels() {
  // Reading HWCAP runs no CPU-specific instruction; the kernels registered are the ones this
  // core can execute.
  register_all(detail::cpu_has_neon_dotprod(), std::make_index_sequence<sizeof(kQTypes) / sizeof(kQTypes[0])>());
  register_quantize_act(Isa::kNeon, &quantize_act);
  register_int8_peak(Isa::kNeon, detail::cpu_has_neon_dotprod() ? &dotprod::int8_peak : &nodot::int8_peak);
}

}  // namespace kernels::MXLM_TARGET_NS
}  // namespace mxlm

#undef MXLM_AI

#endif  // MXLM_TARGET_NEON
