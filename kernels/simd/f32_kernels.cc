// Float32 kernels (kernels/f32_ops.h), compiled once per ISA: MXLM_TARGET_NS names the ISA
// namespace, MXLM_TARGET_{REF,AVX2,AVX512} selects the code. Only register_f32 is exported.
//
// Everything else has internal linkage, and the SIMD builds call no inline function from a
// header (no std::min, std::array, std::sqrt ...): an inline function emitted out of line by an
// AVX-512 build could otherwise be picked by the linker for every caller (SIGILL on older CPUs).
//
// gemm (SIMD builds) is a register-tiled dot-product kernel: an MR x NR tile keeps MR*NR vector
// accumulators over K (lane l of accumulator (i, j) sums x[i][k] * w[j][k] over k = l mod lanes),
// converts each weight vector once (bf16 by shift, f16 by vcvtph2ps) and reuses it across the
// MR activation rows, and reduces the accumulators four at a time at the end. K tails use
// masked (AVX-512) or zero-padded (AVX2) loads, which add exact zeros. Every output element is
// computed by the same sequence of operations whatever the tile, M, n0 or n1 it falls in, so the
// result for (m, n) depends only on x row m, weight row n and K: bitwise identical between a
// batch and a single row, and between any split of [n0, n1) across threads.
//
// ref is the specification: plain loops with double accumulation (deterministic).

// The neon copy of this file is empty: kernels/simd/neon_kernels.cc provides its register_f32.
#if !defined(MXLM_TARGET_NEON)

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/f32_ops.h"
#include "kernels/qtype.h"
#include "kernels/simd/blocking.h"

#if defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)
#define MXLM_F32_SIMD 1
// GCC 12 warns (-W[maybe-]uninitialized) inside the AVX-512 intrinsic headers about their own
// _mm512_undefined_ps() (GCC PR 105593, fixed in 13); the pragma covers the header's lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
#include <cmath>

#ifndef MXLM_TARGET_NS
#error "kernels/simd/f32_kernels.cc must be compiled with -DMXLM_TARGET_NS=<isa>"
#endif

namespace mxlm::kernels::MXLM_TARGET_NS {
namespace {

#ifndef MXLM_F32_SIMD
// ---------------------------------------------------------------------------------------------
// ref: the specification.

template <QType T>
float ref_weight(const uint8_t* row, int k) {
  if constexpr (T == QType::kF32) {
    float f;
    std::memcpy(&f, row + 4 * static_cast<size_t>(k), 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * static_cast<size_t>(k), 2);
    if constexpr (T == QType::kBF16) {
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    } else {
      return f16_to_f32(h);
    }
  }
}

template <QType T>
void ref_gemm_t(int M, int n0, int n1, int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes,
                float* y, size_t ldy) {
  for (int m = 0; m < M; ++m) {
    const float* xr = x + static_cast<size_t>(m) * ldx;
    for (int n = n0; n < n1; ++n) {
      const uint8_t* wr = w + static_cast<size_t>(n) * w_row_bytes;
      double acc = 0.0;
      for (int k = 0; k < K; ++k) acc += static_cast<double>(xr[k]) * static_cast<double>(ref_weight<T>(wr, k));
      y[static_cast<size_t>(m) * ldy + n] = static_cast<float>(acc);
    }
  }
}

float ref_b(QType t, const uint8_t* row, int N, int c);

void gemm(int M, int n0, int n1, int K, const float* x, size_t ldx, const void* w, size_t w_row_bytes, QType wtype,
          float* y, size_t ldy) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  switch (wtype) {
    case QType::kF32:
      return ref_gemm_t<QType::kF32>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kF16:
      return ref_gemm_t<QType::kF16>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kBF16:
      return ref_gemm_t<QType::kBF16>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kQ8G32:
    case QType::kQ8G64:
    case QType::kQ8G128:
    case QType::kQ4AG32:
    case QType::kQ2AG32:
      for (int m = 0; m < M; ++m) {
        for (int n = n0; n < n1; ++n) {
          double acc = 0.0;
          for (int k = 0; k < K; ++k) acc += static_cast<double>(x[m * ldx + k]) * ref_b(wtype, wb + n * w_row_bytes, K, k);
          y[m * ldy + n] = static_cast<float>(acc);
        }
      }
      return;
    default:
      break;
  }
  __builtin_trap();  // not a float format: a caller bug
}

// Element c of a row of N elements in a gemm_nn format (qtype.h's layouts).
float ref_b(QType t, const uint8_t* row, int N, int c) {
  auto f16 = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
  };
  switch (t) {
    case QType::kF32: {
      float f;
      std::memcpy(&f, row + 4 * static_cast<size_t>(c), 4);
      return f;
    }
    case QType::kQ8G32:
    case QType::kQ8G64:
    case QType::kQ8G128: {
      const int G = t == QType::kQ8G32 ? 32 : t == QType::kQ8G64 ? 64 : 128;
      const int nb = (N + G - 1) / G;
      return f16(row + 2 * (c / G)) * (static_cast<float>(row[2 * nb + c]) - 128.0f);
    }
    case QType::kQ4AG32: {
      const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
      const uint8_t byte = row[4 * nb + 16 * g + j % 16];
      const int q = j < 16 ? byte & 15 : byte >> 4;
      return f16(row + 2 * g) * static_cast<float>(q) + f16(row + 2 * nb + 2 * g);
    }
    case QType::kQ2AG32: {
      const int nb = (N + 31) / 32, g = c / 32, j = c % 32;
      const int q = (row[4 * nb + 8 * g + j % 8] >> (2 * (j / 8))) & 3;
      return f16(row + 2 * g) * static_cast<float>(q) + f16(row + 2 * nb + 2 * g);
    }
    case QType::kF16:
      return ref_weight<QType::kF16>(row, c);
    case QType::kBF16:
      return ref_weight<QType::kBF16>(row, c);
    default:
      break;
  }
  __builtin_trap();  // not a gemm_nn format: a caller bug
}

void gemm_nn(int M, int N, int K, const float* x, size_t ldx, const void* b, size_t b_row_bytes, QType btype, float* y,
             size_t ldy, bool accumulate) {
  const uint8_t* bb = static_cast<const uint8_t*>(b);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double acc = accumulate ? static_cast<double>(y[m * ldy + n]) : 0.0;
      for (int k = 0; k < K; ++k) {
        acc += static_cast<double>(x[m * ldx + k]) * ref_b(btype, bb + k * b_row_bytes, N, n);
      }
      y[m * ldy + n] = static_cast<float>(acc);
    }
  }
}

float dot(const float* a, const float* b, int n) {
  double acc = 0.0;
  for (int i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * b[i];
  return static_cast<float>(acc);
}

void gemm_bf16(int M, int n0, int n1, int K, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, float* y,
               size_t ldy) {
  for (int m = 0; m < M; ++m) {
    for (int n = n0; n < n1; ++n) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        acc += static_cast<double>(bf16_to_f32(x[static_cast<size_t>(m) * ldx + k])) *
               static_cast<double>(bf16_to_f32(w[static_cast<size_t>(n) * ldw + k]));
      }
      y[static_cast<size_t>(m) * ldy + n] = static_cast<float>(acc);
    }
  }
}

void to_bf16(const void* src, QType src_type, uint16_t* dst, size_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) {
    if (src_type == QType::kBF16) {
      std::memcpy(dst + i, b + 2 * i, 2);
    } else if (src_type == QType::kF16) {
      uint16_t h;
      std::memcpy(&h, b + 2 * i, 2);
      dst[i] = f32_to_bf16(f16_to_f32(h));
    } else {
      float f;
      std::memcpy(&f, b + 4 * i, 4);
      dst[i] = f32_to_bf16(f);
    }
  }
}

void axpy(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<double>(y[i]) + static_cast<double>(a) * x[i]);
}

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  double ss = 0.0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(ss / (n > 0 ? n : 1) + eps);
  for (int i = 0; i < n; ++i) y[i] = static_cast<float>(x[i] * scale * w[i]);
}

void swiglu(const float* gate, const float* up, float* out, int n) {
  for (int i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

float sum(const float* x, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; ++i) acc += x[i];
  return static_cast<float>(acc);
}

float softmax(float* x, int n) {
  if (n <= 0) return -__builtin_inff();
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - mx) / sum);
  return static_cast<float>(mx + std::log(sum));
}

double log_sum_exp(const float* x, int n) {
  if (n <= 0) return -__builtin_inf();
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - mx);
  return std::log(sum) + mx;
}

#else  // MXLM_F32_SIMD
// ---------------------------------------------------------------------------------------------
// SIMD builds. A small traits struct per ISA (Avx512 / Avx2) supplies vector operations; the
// kernels below are written once against it.

inline int min_int(int a, int b) { return a < b ? a : b; }
inline int max_int(int a, int b) { return a > b ? a : b; }

// exp constants: n = round(x / ln2), r = x - n ln2 (Cody-Waite, ln2_hi has 16 significant bits
// so n * ln2_hi is exact for |n| <= 256), e^r by its degree-7 Taylor polynomial on
// |r| <= ln2/2 (truncation < 1e-8 relative), result = e^r * 2^n. Inputs are clamped to
// [-104, 88.8] (below: 0 after rounding; above: +inf), NaN propagates.
constexpr float kExpHi = 88.8f;
constexpr float kExpLo = -104.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.428606765330187045e-06f;
constexpr float kExpC[8] = {1.0f,          1.0f,           0.5f,           1.0f / 6.0f,
                            1.0f / 24.0f,  1.0f / 120.0f,  1.0f / 720.0f,  1.0f / 5040.0f};

#if defined(MXLM_TARGET_AVX512)

struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16;

  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }  // n in [0, 16)
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float f) { return _mm512_set1_ps(f); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  // Lanes [n, 16) are `fill`; memory past p[n) is not touched.
  static V load_partial(const float* p, int n, float fill = 0.0f) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask(n), p);
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_partial(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  // v with lanes [n, 16) zeroed.
  static V zero_tail(V v, int n) { return _mm512_maskz_mov_ps(mask(n), v); }

  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }

  // Weight element k of a row in format T, 16 at a time.
  template <QType T>
  static V load_w(const uint8_t* row, int k) {
    if constexpr (T == QType::kF32) {
      return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * static_cast<size_t>(k)));
      if constexpr (T == QType::kBF16) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      } else {
        return _mm512_cvtph_ps(h);
      }
    }
  }
  // Elements [k, k + n), zeros after; n in [1, 16).
  template <QType T>
  static V load_w_partial(const uint8_t* row, int k, int n) {
    if constexpr (T == QType::kF32) {
      return _mm512_maskz_loadu_ps(mask(n), reinterpret_cast<const float*>(row) + k);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(mask(n), row + 2 * static_cast<size_t>(k));
      if constexpr (T == QType::kBF16) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      } else {
        return _mm512_cvtph_ps(h);
      }
    }
  }

  // The lane sums of a0..a3, as {sum a0, sum a1, sum a2, sum a3}. Every input goes through the
  // same tree: halves of 256, then of 128, then pairs, then the final pair.
  static __m128 reduce4(V a0, V a1, V a2, V a3) {
    const V s01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xee));
    const V s23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xee));
    // t = [a0 | a1 | a2 | a3] partial sums, four lanes each.
    const V t = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xdd));
    const V u = _mm512_add_ps(t, _mm512_permute_ps(t, 0xb1));  // [p0+p1, p1+p0, p2+p3, p3+p2]
    const V v = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4e));  // every lane: the chunk's sum
    const V r = _mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), v);
    return _mm512_castps512_ps128(r);
  }
  static void store4(float* y, __m128 v, int n) {
    if (n == 4) {
      _mm_storeu_ps(y, v);
    } else {
      _mm_mask_storeu_ps(y, static_cast<__mmask8>((1u << n) - 1u), v);
    }
  }
  static float reduce(V a) { return _mm_cvtss_f32(reduce4(a, a, a, a)); }
  static float reduce_max(V a) { return _mm512_reduce_max_ps(a); }

  static V exp(V x) {
    x = _mm512_min_ps(_mm512_set1_ps(kExpHi), x);  // NaN passes through (second operand)
    x = _mm512_max_ps(_mm512_set1_ps(kExpLo), x);
    const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
    V p = _mm512_set1_ps(kExpC[7]);
    for (int i = 6; i >= 0; --i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC[i]));
    return _mm512_scalef_ps(p, n);  // p * 2^n with correct overflow / gradual underflow
  }
};

#else  // MXLM_TARGET_AVX2

alignas(32) constexpr int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8;

  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n)); }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float f) { return _mm256_set1_ps(f); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_partial(const float* p, int n, float fill = 0.0f) {
    const __m256i m = mask(n);
    const V v = _mm256_maskload_ps(p, m);
    return fill == 0.0f ? v : _mm256_blendv_ps(_mm256_set1_ps(fill), v, _mm256_castsi256_ps(m));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_partial(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static V zero_tail(V v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask(n))); }

  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }

  template <QType T>
  static V cvt_w(__m128i h) {
    if constexpr (T == QType::kBF16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      return _mm256_cvtph_ps(h);
    }
  }
  template <QType T>
  static V load_w(const uint8_t* row, int k) {
    if constexpr (T == QType::kF32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
    } else {
      return cvt_w<T>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * static_cast<size_t>(k))));
    }
  }
  template <QType T>
  static V load_w_partial(const uint8_t* row, int k, int n) {
    if constexpr (T == QType::kF32) {
      return _mm256_maskload_ps(reinterpret_cast<const float*>(row) + k, mask(n));
    } else {
      alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      __builtin_memcpy(buf, row + 2 * static_cast<size_t>(k), 2 * static_cast<size_t>(n));
      return cvt_w<T>(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
    }
  }

  // {sum a0, sum a1, sum a2, sum a3}; every input goes through the same tree.
  static __m128 reduce4(V a0, V a1, V a2, V a3) {
    const V u0 = _mm256_hadd_ps(a0, a1);  // [a0 01, a0 23, a1 01, a1 23 | a0 45, a0 67, a1 45, a1 67]
    const V u1 = _mm256_hadd_ps(a2, a3);
    const V v = _mm256_hadd_ps(u0, u1);   // [a0 0-3, a1 0-3, a2 0-3, a3 0-3 | the same for 4-7]
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  }
  static void store4(float* y, __m128 v, int n) {
    if (n == 4) {
      _mm_storeu_ps(y, v);
    } else {
      _mm_maskstore_ps(y, _mm256_castsi256_si128(mask(n)), v);
    }
  }
  static float reduce(V a) { return _mm_cvtss_f32(reduce4(a, a, a, a)); }
  static float reduce_max(V a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }

  static V exp(V x) {
    x = _mm256_min_ps(_mm256_set1_ps(kExpHi), x);  // NaN passes through (second operand)
    x = _mm256_max_ps(_mm256_set1_ps(kExpLo), x);
    const V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    V p = _mm256_set1_ps(kExpC[7]);
    for (int i = 6; i >= 0; --i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpC[i]));
    // 2^n as 2^n1 * 2^n2 with n1 = floor(n/2), n2 = n - n1: both stay normal for n in
    // [-150, 128], the first product is exact and the second rounds once (also to subnormals).
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1);
    const __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const V s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const V s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
};

#endif  // MXLM_TARGET_AVX512 / MXLM_TARGET_AVX2

using V = Simd::V;
constexpr int kL = Simd::kLanes;

// ---- rows of the KV cache formats (qtype.h), dequantized kL elements at a time ----------------
// A vector never straddles a group (groups of 32 or more, vectors of 16 or 8 starting at multiples
// of their width): it takes one scale (and offset). Past the row's end it reads the group's zero
// padding (in the row): q8 pads with zeros, q4a with its offset m, which the callers multiply by
// zeros or do not store.

inline __attribute__((always_inline)) float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Lane i (0..3) of v in every lane: one permute (the lane is a constant once unrolled).
inline __attribute__((always_inline)) V lane_to_all(__m128 v, int i) {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_permutexvar_ps(_mm512_set1_epi32(i), _mm512_castps128_ps512(v));
#else
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_set1_epi32(i));
#endif
}

// kL unsigned bytes at p as floats (lo) or their high nibbles / low nibbles as floats.
inline __attribute__((always_inline)) V u8_to_f(const uint8_t* p) {
#if defined(MXLM_TARGET_AVX512)
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#endif
}
inline __attribute__((always_inline)) V nibbles_to_f(const uint8_t* p, bool high) {
#if defined(MXLM_TARGET_AVX512)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_cvtepi32_ps(high ? _mm512_srli_epi32(b, 4) : _mm512_and_si512(b, _mm512_set1_epi32(15)));
#else
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_cvtepi32_ps(high ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(15)));
#endif
}

// The KV formats (qtype.h): w = d_g * u + o_g over groups of G columns, the affine 4- and 2-bit
// ones (G = 32) with their own offsets o_g = m_g, q8_gG with o_g = -128 d_g.
template <QType T>
constexpr bool kAffine = T == QType::kQ4AG32 || T == QType::kQ2AG32;
template <QType T>
constexpr int kKvGroup = T == QType::kQ8G64 ? 64 : T == QType::kQ8G128 ? 128 : 32;

// The quants u of columns [c, c + kL) of a row of N elements in a KV format, as floats (exact:
// 0..255, 0..15 or 0..3), c a multiple of kL.
template <QType T>
inline __attribute__((always_inline)) V load_u(const uint8_t* row, int N, int c) {
  constexpr int G = kKvGroup<T>;
  const int nb = (N + G - 1) / G, g = c / G, j = c % G;
  if constexpr (!kAffine<T>) {
    return u8_to_f(row + 2 * nb + c);
  } else if constexpr (T == QType::kQ4AG32) {
    return nibbles_to_f(row + 4 * nb + 16 * g + j % 16, j >= 16);
  } else {
    // A group's 8 bytes: byte j, bits 2s..2s+1 hold element j + 8s.
    const uint8_t* qp = row + 4 * nb + 8 * g;
#if defined(MXLM_TARGET_AVX512)
    // Elements j .. j + 15 (j = 0 or 16): the 8 bytes twice, shifted by 2s and 2s + 2.
    long long w;
    __builtin_memcpy(&w, qp, 8);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_set1_epi64x(w));
    const __m512i sh = _mm512_add_epi32(_mm512_set1_epi32(2 * (j / 8)),
                                        _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0));
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(b, sh), _mm512_set1_epi32(3)));
#else
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qp)));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(b, 2 * (j / 8)), _mm256_set1_epi32(3)));
#endif
  }
}

// The kL-wide vectors of quants of group g (G / kL of them, in column order) of a q4a_g32 row with
// nb groups: the group's 16 bytes widened once, their low nibbles (columns 0-15) and high
// nibbles (16-31) split from the same register. load_u per vector widened every byte twice and,
// its column known only at run time, chose the nibble by a branch per vector and row.
inline __attribute__((always_inline)) void load_u_group_q4a(const uint8_t* row, int nb, int g, V* u) {
  const uint8_t* p = row + 4 * nb + 16 * g;
#if defined(MXLM_TARGET_AVX512)
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  u[0] = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  u[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
#else
  const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
  u[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b0, _mm256_set1_epi32(15)));
  u[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b1, _mm256_set1_epi32(15)));
  u[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
  u[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
#endif
}

// The same for a q2a_g32 row: the group's 8 bytes (byte j, bits 2s..2s+1: element j + 8s) widened
// once for all its vectors, each then a shift and a mask (load_u widened them per vector).
inline __attribute__((always_inline)) void load_u_group_q2a(const uint8_t* row, int nb, int g, V* u) {
  const uint8_t* p = row + 4 * nb + 8 * g;
  long long w;
  __builtin_memcpy(&w, p, 8);
#if defined(MXLM_TARGET_AVX512)
  // Lanes 0-7 and 8-15 both hold bytes 0-7: elements 0-15 shift them by 0 and 2, 16-31 by 4 and 6.
  const __m512i b = _mm512_cvtepu8_epi32(_mm_set1_epi64x(w));
  const __m512i sh = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i three = _mm512_set1_epi32(3);
  u[0] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(b, sh), three));
  u[1] = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(b, _mm512_add_epi32(sh, _mm512_set1_epi32(4))), three));
#else
  const __m256i b = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(w));
  const __m256i three = _mm256_set1_epi32(3);
  u[0] = _mm256_cvtepi32_ps(_mm256_and_si256(b, three));
  u[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(b, 2), three));
  u[2] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(b, 4), three));
  u[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 6));
#endif
}

// Columns [c, c + kL) of a row of N elements in format T (c a multiple of kL); for f32, lanes
// from `valid` on are not read (zeros).
template <QType T>
inline __attribute__((always_inline)) V load_b(const uint8_t* row, int N, int c, int valid) {
  if constexpr (T == QType::kF32) {
    const float* f = reinterpret_cast<const float*>(row) + c;
    return valid >= kL ? Simd::load(f) : Simd::load_partial(f, valid);
  } else if constexpr (T == QType::kF16 || T == QType::kBF16) {
    return valid >= kL ? Simd::load_w<T>(row, c) : Simd::load_w_partial<T>(row, c, valid);
  } else {
    constexpr int G = kKvGroup<T>;
    const int nb = (N + G - 1) / G, g = c / G;
    const float d = f16_at(row + 2 * g);
    const float o = kAffine<T> ? f16_at(row + 2 * nb + 2 * g) : -128.0f * d;
    return Simd::fma(load_u<T>(row, N, c), Simd::set1(d), Simd::set1(o));
  }
}

// ---- gemm -----------------------------------------------------------------------------------

constexpr bool is_kv_quant(QType t) {
  return t == QType::kQ8G32 || t == QType::kQ8G64 || t == QType::kQ8G128 || t == QType::kQ4AG32 ||
         t == QType::kQ2AG32;
}
// Weight elements [k, k + n) of a row of K (n in [1, kL]; zeros after for the float formats,
// the group's padding for the KV formats, which read whole vectors: see load_b).
template <QType T>
inline __attribute__((always_inline)) V load_wq(const uint8_t* row, int K, int k, int n) {
  if constexpr (is_kv_quant(T)) {
    return load_b<T>(row, K, k, kL);
  } else {
    (void)K;
    return n == kL ? Simd::load_w<T>(row, k) : Simd::load_w_partial<T>(row, k, n);
  }
}

template <QType T>
constexpr size_t kElemBytes = T == QType::kF32 ? 4 : (T == QType::kF16 || T == QType::kBF16) ? 2 : 1;

using TileFn = void (*)(int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, float* y,
                        size_t ldy);

// acc[i][j] += x row i · w row j over columns [k0, k1) (lane l: the columns ≡ l mod kL), for
// i < MR, j < NR. k0 is a multiple of kL, and so is k1 unless k1 = K (the masked tail).
template <QType T, int MR, int NR>
inline __attribute__((always_inline)) void tile_run(V (&acc)[MR][NR], int k0, int k1, int K, const float* x, size_t ldx,
                                                    const uint8_t* w, size_t w_row_bytes) {
  const float* xr[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) xr[i] = x + static_cast<size_t>(i) * ldx;
  const uint8_t* wr[NR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) wr[j] = w + static_cast<size_t>(j) * w_row_bytes;

  int k = k0;
  for (; k <= k1 - kL; k += kL) {
    V wv[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) wv[j] = load_wq<T>(wr[j], K, k, kL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V xv = Simd::load(xr[i] + k);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i][j] = Simd::fma(xv, wv[j], acc[i][j]);
    }
  }
  if (k < k1) {
    const int rem = k1 - k;
    V wv[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) wv[j] = load_wq<T>(wr[j], K, k, rem);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V xv = Simd::load_partial(xr[i] + k, rem);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i][j] = Simd::fma(xv, wv[j], acc[i][j]);
    }
  }
}

// y[i*ldy + j] = the lanes of acc[i][j] summed, four accumulators at a time.
template <int MR, int NR>
inline __attribute__((always_inline)) void tile_store(const V (&acc)[MR][NR], float* y, size_t ldy) {
  const V z = Simd::zero();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j0 = 0; j0 < NR; j0 += 4) {
      const __m128 s = Simd::reduce4(acc[i][j0], j0 + 1 < NR ? acc[i][j0 + 1] : z, j0 + 2 < NR ? acc[i][j0 + 2] : z,
                                     j0 + 3 < NR ? acc[i][j0 + 3] : z);
      Simd::store4(y + static_cast<size_t>(i) * ldy + j0, s, min_int(4, NR - j0));
    }
  }
}

// A K slice's accumulators: from mem (zeros for the first slice), and after it either reduced
// into y (the last slice) or back to mem, stored and loaded exactly.
template <int MR, int NR>
inline __attribute__((always_inline)) void slice_begin(V (&acc)[MR][NR], const V* mem, bool first) {
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = first ? Simd::zero() : mem[i * NR + j];
  }
}
template <int MR, int NR>
inline __attribute__((always_inline)) void slice_end(const V (&acc)[MR][NR], V* mem, float* y, size_t ldy) {
  if (y) {
    tile_store<MR, NR>(acc, y, ldy);
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) mem[i * NR + j] = acc[i][j];
  }
}

// y[i*ldy + j] = dot(x row i, w row j) for i < MR, j < NR.
template <QType T, int MR, int NR>
void tile(int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, float* y, size_t ldy) {
  V acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = Simd::zero();
  }
  tile_run<T, MR, NR>(acc, 0, K, K, x, ldx, w, w_row_bytes);
  tile_store<MR, NR>(acc, y, ldy);
}

// One slice [k0, k1) of a K-blocked MR x NR tile: the accumulators come from and go back to
// memory (zeros when first), and are reduced into y after the last slice (y null: not yet).
template <QType T, int MR, int NR>
void tile_slice(int k0, int k1, int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, V* mem,
                bool first, float* y, size_t ldy) {
  V acc[MR][NR];
  slice_begin<MR, NR>(acc, mem, first);
  tile_run<T, MR, NR>(acc, k0, k1, K, x, ldx, w, w_row_bytes);
  slice_end<MR, NR>(acc, mem, y, ldy);
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

// Long f32 rows (K past kSliceMin) go in slices of kSlice columns: an MR x NR tile whose MR + NR
// rows of K no longer fit L1 streams both from L2 at every step. Sliced, the MR activation rows
// of a slice (8 KiB) stay in L1 across the block's tiles, and each tile's accumulators wait in
// memory between slices (MR * NR vectors, stored and loaded exactly): every output takes the same
// FMAs in the same order, so the result is bitwise the unsliced one (tests/f32_kernels_test.cc,
// Deterministic). Measured on a Zen 5, one thread, 512 rows, back-to-back builds: f32 at
// N = K = 2048 117 → 141-144 % of the 116 GFLOP/s reference peak, at K = 5632 102 → 114-116 %;
// bf16 and f16 weights (half the bytes per row) gained nothing (bf16 165 → 164 %, 151 → 141-150
// %), so they stay unsliced. Slices of 256 or 1024 measured the same as 512.
constexpr int kSlice = 512, kSliceMin = 1024;

template <QType T, int MR, int NR>
void gemm_blocked(int M, int n0, int n1, int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes,
                  float* y, size_t ldy) {
  const TileFn* fns = Tiles<T, MR, NR>::fn;
  const int nb = weight_block_rows(n0, n1, static_cast<size_t>(max_int(K, 1)) * kElemBytes<T>, NR);
  // Sliced: the full tiles of a block of at most kMaxSliced rows (kWeightBlockBytes at
  // K > kSliceMin), their accumulators here.
  constexpr bool kSliceable = MR > 1 && T == QType::kF32;
  constexpr int kMaxSliced = static_cast<int>(kWeightBlockBytes / (kSliceMin * kElemBytes<T>));
  const bool sliced = kSliceable && K > kSliceMin && nb <= kMaxSliced;
  alignas(64) V mem[kSliceable ? kMaxSliced / NR * MR * NR : 1];
  for (int nb0 = n0; nb0 < n1; nb0 += min_int(nb, n1 - nb0)) {
    const int nb1 = nb0 + min_int(nb, n1 - nb0);
    for (int m = 0; m < M; m += MR) {
      const int mr = min_int(MR, M - m);
      const float* xm = x + static_cast<size_t>(m) * ldx;
      float* ym = y + static_cast<size_t>(m) * ldy;
      int n = nb0;
      if (sliced && mr == MR) {
        const int full = (nb1 - nb0) / NR;
        for (int k0 = 0; k0 < K; k0 += kSlice) {
          const int k1 = min_int(K, k0 + kSlice);
          for (int t = 0; t < full; ++t) {
            const int nt = nb0 + t * NR;
            tile_slice<T, MR, NR>(k0, k1, K, xm, ldx, w + static_cast<size_t>(nt) * w_row_bytes, w_row_bytes,
                                  mem + t * MR * NR, k0 == 0, k1 == K ? ym + nt : nullptr, ldy);
          }
        }
        n = nb0 + full * NR;
      }
      for (; n < nb1; n += NR) {
        const int nr = min_int(NR, nb1 - n);
        fns[(mr - 1) * NR + (nr - 1)](K, xm, ldx, w + static_cast<size_t>(n) * w_row_bytes, w_row_bytes, ym + n, ldy);
      }
    }
  }
}

// Tile shapes. Zen 4 has 32 zmm / 16 ymm registers and one 512-bit (two 256-bit) FMA per cycle:
// AVX-512 4x4 = 16 accumulators + 4 weight vectors + 1 activation; AVX2 4x3 = 12 + 3 + 1.
// M = 1 (decode) is bound by memory: weight rows of at most 4 KiB go one at a time, so the
// weights stream strictly sequentially (several interleaved short streams inside one page defeat
// the hardware prefetchers: 2x slower measured); longer rows go eight at a time, which keeps
// enough misses in flight and reads x (up to K * 4 bytes) from L1 once per eight rows.
#if defined(MXLM_TARGET_AVX512)
constexpr int kMr = 4, kNr = 4;
#else
constexpr int kMr = 4, kNr = 3;
#endif
constexpr int kGemvNr = 8;
constexpr size_t kGemvShortRowBytes = 4096;

#include "kernels/simd/f32_gemm_inl.h"

// ---- gemm_bf16: bf16 x and w rows, f32 sums ----------------------------------------------------
// Register tiles of kBfMr x kBfNr accumulators (below), kWeightBlockBytes of weight rows per
// block as in gemm, the same lane reduction at the end. AVX-512 multiplies 32 pairs per
// vdpbf16ps (acc lane l += x[2l] w[2l] + x[2l+1] w[2l+1]); AVX2 widens 8 elements at a time to
// f32 (a 16-bit shift) and fmas them. K tails load zeros (exact).
#if defined(MXLM_TARGET_AVX512)
constexpr int kBfStep = 32;
inline __attribute__((always_inline)) __m512i bf16_load(const uint16_t* p, int n) {
  return n == kBfStep ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << n) - 1u), p);
}
inline __attribute__((always_inline)) V bf16_dot(V acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);  // same bits, the bf16 vector type
}
#else
constexpr int kBfStep = kL;
#endif

template <int MR, int NR>
inline __attribute__((always_inline)) void tile_bf16_step(V (&acc)[MR][NR], int k, int n, const uint16_t* const (&xr)[MR],
                                                          const uint16_t* const (&wr)[NR]) {
#if defined(MXLM_TARGET_AVX512)
  __m512i wv[NR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) wv[j] = bf16_load(wr[j] + k, n);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const __m512i xv = bf16_load(xr[i] + k, n);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = bf16_dot(acc[i][j], xv, wv[j]);
  }
#else
  V wv[NR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) {
    const auto* p = reinterpret_cast<const uint8_t*>(wr[j] + k);
    wv[j] = n == kL ? Simd::load_w<QType::kBF16>(p, 0) : Simd::load_w_partial<QType::kBF16>(p, 0, n);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const auto* p = reinterpret_cast<const uint8_t*>(xr[i] + k);
    const V xv = n == kL ? Simd::load_w<QType::kBF16>(p, 0) : Simd::load_w_partial<QType::kBF16>(p, 0, n);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = Simd::fma(xv, wv[j], acc[i][j]);
  }
#endif
}

// acc (from and back to mem; zeros when first) over columns [k0, k1), k0 a multiple of kBfStep;
// y non-null: the last slice, reduced into y.
template <int MR, int NR>
void tile_bf16(int k0, int k1, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, V* mem, bool first, float* y,
               size_t ldy) {
  V acc[MR][NR];
  slice_begin<MR, NR>(acc, mem, first);
  const uint16_t* xr[MR];
  const uint16_t* wr[NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) xr[i] = x + static_cast<size_t>(i) * ldx;
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) wr[j] = w + static_cast<size_t>(j) * ldw;
  int k = k0;
  for (; k <= k1 - kBfStep; k += kBfStep) tile_bf16_step<MR, NR>(acc, k, kBfStep, xr, wr);
  if (k < k1) tile_bf16_step<MR, NR>(acc, k, k1 - k, xr, wr);
  slice_end<MR, NR>(acc, mem, y, ldy);
}

using TileBf16Fn = void (*)(int k0, int k1, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, V* mem, bool first,
                            float* y, size_t ldy);
template <int MR, int NR, class Seq>
struct TilesBf16Impl;
template <int MR, int NR, int... I>
struct TilesBf16Impl<MR, NR, std::integer_sequence<int, I...>> {
  static constexpr TileBf16Fn fn[sizeof...(I)] = {&tile_bf16<I / NR + 1, I % NR + 1>...};
};
// AVX-512 tiles of 6 x 4 (24 accumulators, 4 weight vectors, 1 activation): each weight vector
// read from L2 feeds six vdpbf16ps. One Zen 5 core, M = 512, N = 2048, one run: K = 2048 at 331-355
// GFLOP/s against 292-309 with 4 x 4 (8 x 3: 297-314, 5 x 5: 322-326), K = 5632 at 253-269
// against 213-223.
#if defined(MXLM_TARGET_AVX512)
constexpr int kBfMr = 6, kBfNr = 4;
#else
constexpr int kBfMr = kMr, kBfNr = kNr;
#endif
using TilesBf16 = TilesBf16Impl<kBfMr, kBfNr, std::make_integer_sequence<int, kBfMr * kBfNr>>;

// Rows past kBfSliceMin elements go in slices of kBfSlice (as gemm's f32 rows do): unsliced, the
// activation rows of TinyLlama's ffn_down (K = 5632, 11 KiB each) crowded L1 out and the 4 x 4
// tiles ran at 1.45x the f16 weights' speed against 1.7-1.9x at K = 2048 (sliced: 1.7x; slices
// of 512 measured the same as 1024).
constexpr int kBfSlice = 1024, kBfSliceMin = 2048;
constexpr int kBfMaxRows = static_cast<int>(kWeightBlockBytes / (kBfSliceMin * 2));

void gemm_bf16(int M, int n0, int n1, int K, const uint16_t* x, size_t ldx, const uint16_t* w, size_t ldw, float* y,
               size_t ldy) {
  if (M <= 0 || n1 <= n0) return;
  const TileBf16Fn* fns = TilesBf16::fn;
  const int nb = weight_block_rows(n0, n1, static_cast<size_t>(max_int(K, 1)) * 2, kBfNr);
  const int slice = K > kBfSliceMin && nb <= kBfMaxRows ? kBfSlice : max_int(K, 1);
  alignas(64) V mem[kBfMaxRows / kBfNr * kBfMr * kBfNr];
  for (int nb0 = n0; nb0 < n1; nb0 += min_int(nb, n1 - nb0)) {
    const int nb1 = nb0 + min_int(nb, n1 - nb0);
    for (int m = 0; m < M; m += kBfMr) {
      const int mr = min_int(kBfMr, M - m);
      const uint16_t* xm = x + static_cast<size_t>(m) * ldx;
      float* ym = y + static_cast<size_t>(m) * ldy;
      for (int k0 = 0; k0 < K || k0 == 0; k0 += slice) {
        const int k1 = min_int(K, k0 + slice);
        for (int n = nb0, t = 0; n < nb1; n += kBfNr, ++t) {
          const int nr = min_int(kBfNr, nb1 - n);
          fns[(mr - 1) * kBfNr + (nr - 1)](k0, k1, xm, ldx, w + static_cast<size_t>(n) * ldw, ldw, mem + t * kBfMr * kBfNr,
                                         k0 == 0, k1 == K ? ym + n : nullptr, ldy);
        }
        if (K == 0) break;
      }
    }
  }
}

// Round to nearest even on the f32 bits: u + 0x7fff + (bit 16 of u), the top half.
void to_bf16(const void* src, QType src_type, uint16_t* dst, size_t n) {
  const auto* b = static_cast<const uint8_t*>(src);
  if (n == 0) return;  // src and dst may be null
  if (src_type == QType::kBF16) {
    std::memcpy(dst, b, 2 * n);
    return;
  }
  size_t i = 0;
#if defined(MXLM_TARGET_AVX512)
  for (; i + 16 <= n; i += 16) {
    const __m512 f = src_type == QType::kF16
                         ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2 * i)))
                         : _mm512_loadu_ps(reinterpret_cast<const float*>(b) + i);
    const __m512i u = _mm512_castps_si512(f);
    const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
#else
  for (; i + 8 <= n; i += 8) {
    const __m256 f = src_type == QType::kF16 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i)))
                                             : _mm256_loadu_ps(reinterpret_cast<const float*>(b) + i);
    const __m256i u = _mm256_castps_si256(f);
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                                         _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))),
                                        16);
    // The eight 16-bit halves, in order (packus saturates nothing: every value is < 2^16).
    const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_packus_epi32(lo, hi));
  }
#endif
  for (; i < n; ++i) {
    uint32_t u;
    if (src_type == QType::kF16) {
      uint16_t h;
      std::memcpy(&h, b + 2 * i, 2);
      const float f = _cvtsh_ss(h);
      std::memcpy(&u, &f, 4);
    } else {
      std::memcpy(&u, b + 4 * i, 4);
    }
    dst[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// ---- gemm_nn: y = x · B with B row-major [K][N] ------------------------------------------------
// Columns are lanes: an MR x NV tile keeps MR*NV vector accumulators, and per k dequantizes NV
// vectors of B's row k once and broadcasts x[m][k] for each of the MR rows. One row (decode's P·V)
// takes up to kNnWide vectors at once so that a head's value row (64-128 elements) is read in one
// pass. Quantized rows: a vector never straddles a group (groups of 32 or more, vectors of 16 or
// 8 starting at multiples of their width), so it takes one scale (and offset) and, when N ends
// inside it, reads the group's zero padding (in the row) and stores only the lanes before N.
// Quantized rows go through gemm_nn_tile_factored (below): decode attention over a Llama-7B layer
// at depth 2048 (`attention/` in mxlm_bench_kernels, Zen 5, one thread, two alternating runs of
// the builds, time as a fraction of f32 KV's in the same run) went, AVX-512, k8v8 0.27-0.28 ->
// 0.20-0.22, k4v4 0.27-0.29 -> 0.17-0.21, k2v2 0.42-0.45 -> 0.27-0.35; AVX2 k8v8 0.35-0.41 ->
// 0.27, k4v4 0.37-0.50 -> 0.24, k2v2 0.49-0.62 -> 0.32.
#if defined(MXLM_TARGET_AVX512)
constexpr int kNnMr = 4, kNnNv = 4, kNnWide = 8;
#else
constexpr int kNnMr = 4, kNnNv = 2, kNnWide = 8;
#endif

// The KV formats factored (w = d_g * u + o_g, see load_u):
// sum_k x_k w_kn = sum_k (x_k d_kg) u_kn + sum_k x_k o_kg. Per row k the tile's (at most 4)
// scales (and offsets) are converted in one instruction each, the products x_k d_kg of every
// group in one multiply and the offsets' sums of every group in one fma (a lane per group, added
// once at the end): each vector of quants then costs its decode and one fma, where dequantizing
// it took a second fma and a scalar conversion of its scale (and offset). Measured in
// `attention/` (see the comment above gemm_nn). Group g0 = c0 / G is the tile's first and vector
// v lies in group g0 + v / (G / kL): a tile starts at a multiple of G columns or lies in one
// group (the chunks of gemm_nn_t are 128 or 64 columns for one row, 64 or 16 for tiles).
//
// kWhole: the tile's vectors are whole groups (c0 a multiple of G, NV of kVg): q4a's and q2a's
// quants are decoded a group at a time (load_u_group_q4a, load_u_group_q2a). One Llama-7B layer
// at depth 2048, one thread, AVX-512 (`attention/`, alternating runs): k4v4 528-568 -> 474-521
// us, k2v2 778-797 -> 732-760 us.
template <QType T, int MR, int NV, bool kWhole>
void gemm_nn_tile_factored_t(int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y,
                             size_t ldy, int last, bool acc_in) {
  constexpr int G = kKvGroup<T>, kVg = G / kL;  // vectors per group
  static_assert((NV - 1) / kVg < 4, "a tile spans at most 4 groups");
  const int nb = (N + G - 1) / G, g0 = c0 / G;
  V acc[MR][NV];
  __m128 off[MR];
  for (int m = 0; m < MR; ++m) {
    off[m] = _mm_setzero_ps();
    for (int v = 0; v < NV; ++v) {
      const float* yv = y + m * ldy + v * kL;
      acc[m][v] = !acc_in ? Simd::zero() : v < NV - 1 || last == kL ? Simd::load(yv) : Simd::load_partial(yv, last);
    }
  }
  for (int k = 0; k < K; ++k) {
    const uint8_t* row = b + static_cast<size_t>(k) * brb;
    // Four scales (and offsets) from g0 on; past the last group, the next bytes of the row (every
    // row holds at least 8 bytes after its scales), in lanes no vector reads.
    const __m128 d = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 2 * g0)));
    __m128 o;
    if constexpr (kAffine<T>) {
      o = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 2 * nb + 2 * g0)));
    } else {
      o = _mm_mul_ps(d, _mm_set1_ps(-128.0f));  // exact
    }
    V u[NV];
    if constexpr (kWhole) {
      for (int v = 0; v < NV; v += kVg) {
        if constexpr (T == QType::kQ4AG32) {
          load_u_group_q4a(row, nb, g0 + v / kVg, &u[v]);
        } else {
          load_u_group_q2a(row, nb, g0 + v / kVg, &u[v]);
        }
      }
    } else {
      for (int v = 0; v < NV; ++v) u[v] = load_u<T>(row, N, c0 + v * kL);
    }
    for (int m = 0; m < MR; ++m) {
      const __m128 xm = _mm_set1_ps(x[m * ldx + k]);
      const __m128 c = _mm_mul_ps(xm, d);
      off[m] = _mm_fmadd_ps(xm, o, off[m]);
      V cg = Simd::zero();
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        if (v % kVg == 0) cg = lane_to_all(c, v / kVg);
        acc[m][v] = Simd::fma(cg, u[v], acc[m][v]);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    V og = Simd::zero();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      if (v % kVg == 0) og = lane_to_all(off[m], v / kVg);
      const V r = Simd::add(acc[m][v], og);
      if (v < NV - 1 || last == kL) {
        Simd::store(y + m * ldy + v * kL, r);
      } else {
        Simd::store_partial(y + m * ldy + v * kL, r, last);
      }
    }
  }
}

template <QType T, int MR, int NV>
void gemm_nn_tile_factored(int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y,
                           size_t ldy, int last, bool acc_in) {
  constexpr int kVg = kKvGroup<T> / kL;
  if constexpr ((T == QType::kQ4AG32 || T == QType::kQ2AG32) && NV % kVg == 0) {
    if (c0 % kKvGroup<T> == 0) {
      return gemm_nn_tile_factored_t<T, MR, NV, true>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
    }
  }
  return gemm_nn_tile_factored_t<T, MR, NV, false>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
}

template <QType T, int MR, int NV>
void gemm_nn_tile(int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, int c0, float* y, size_t ldy,
                  int last, bool acc_in) {
  if constexpr (is_kv_quant(T)) {
    return gemm_nn_tile_factored<T, MR, NV>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
  }
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      const float* yv = y + m * ldy + v * kL;
      acc[m][v] = !acc_in ? Simd::zero() : v < NV - 1 || last == kL ? Simd::load(yv) : Simd::load_partial(yv, last);
    }
  }
  for (int k = 0; k < K; ++k) {
    const uint8_t* row = b + static_cast<size_t>(k) * brb;
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_b<T>(row, N, c0 + v * kL, v == NV - 1 ? last : kL);
    for (int m = 0; m < MR; ++m) {
      const V xm = Simd::set1(x[m * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[m][v] = Simd::fma(xm, bv[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV - 1; ++v) Simd::store(y + m * ldy + v * kL, acc[m][v]);
    if (last == kL) {
      Simd::store(y + m * ldy + (NV - 1) * kL, acc[m][NV - 1]);
    } else {
      Simd::store_partial(y + m * ldy + (NV - 1) * kL, acc[m][NV - 1], last);
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
    default: return gemm_nn_tile<T, MR, kNnNv>(N, K, x, ldx, b, brb, c0, y, ldy, last, acc_in);
  }
}

template <QType T>
void gemm_nn_t(int M, int N, int K, const float* x, size_t ldx, const uint8_t* b, size_t brb, float* y, size_t ldy,
               bool acc_in) {
  const int chunk = (M == 1 ? kNnWide : kNnNv) * kL;
  for (int c0 = 0; c0 < N; c0 += chunk) {
    const int nn = min_int(chunk, N - c0);
    const int nv = (nn + kL - 1) / kL, last = nn - (nv - 1) * kL;
    if (M == 1) {
      switch (nv) {
        case 5: gemm_nn_tile<T, 1, 5>(N, K, x, ldx, b, brb, c0, y + c0, ldy, last, acc_in); continue;
        case 6: gemm_nn_tile<T, 1, 6>(N, K, x, ldx, b, brb, c0, y + c0, ldy, last, acc_in); continue;
        case 7: gemm_nn_tile<T, 1, 7>(N, K, x, ldx, b, brb, c0, y + c0, ldy, last, acc_in); continue;
        case 8: gemm_nn_tile<T, 1, 8>(N, K, x, ldx, b, brb, c0, y + c0, ldy, last, acc_in); continue;
        default: gemm_nn_rows<T, 1>(nv, N, K, x, ldx, b, brb, c0, y + c0, ldy, last, acc_in); continue;
      }
    }
    int m = 0;
    for (; m + kNnMr <= M; m += kNnMr) {
      gemm_nn_rows<T, kNnMr>(nv, N, K, x + m * ldx, ldx, b, brb, c0, y + m * ldy + c0, ldy, last, acc_in);
    }
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

// ---- vector ops -----------------------------------------------------------------------------

float dot(const float* a, const float* b, int n) {
  V s0 = Simd::zero(), s1 = Simd::zero(), s2 = Simd::zero(), s3 = Simd::zero();
  int i = 0;
  for (; i <= n - 4 * kL; i += 4 * kL) {
    s0 = Simd::fma(Simd::load(a + i), Simd::load(b + i), s0);
    s1 = Simd::fma(Simd::load(a + i + kL), Simd::load(b + i + kL), s1);
    s2 = Simd::fma(Simd::load(a + i + 2 * kL), Simd::load(b + i + 2 * kL), s2);
    s3 = Simd::fma(Simd::load(a + i + 3 * kL), Simd::load(b + i + 3 * kL), s3);
  }
  for (; i <= n - kL; i += kL) s0 = Simd::fma(Simd::load(a + i), Simd::load(b + i), s0);
  if (i < n) s1 = Simd::fma(Simd::load_partial(a + i, n - i), Simd::load_partial(b + i, n - i), s1);
  return Simd::reduce(Simd::add(Simd::add(s0, s1), Simd::add(s2, s3)));
}

float sum(const float* x, size_t n) {
  V s[8];
  for (V& v : s) v = Simd::zero();
  size_t i = 0;
  for (; i + 8 * kL <= n; i += 8 * kL) {
    for (int j = 0; j < 8; ++j) s[j] = Simd::add(s[j], Simd::load(x + i + j * kL));
  }
  for (; i + kL <= n; i += kL) s[0] = Simd::add(s[0], Simd::load(x + i));
  if (i < n) s[1] = Simd::add(s[1], Simd::load_partial(x + i, static_cast<int>(n - i)));
  for (int j = 1; j < 8; ++j) s[0] = Simd::add(s[0], s[j]);
  return Simd::reduce(s[0]);
}

void axpy(float a, const float* x, float* y, int n) {
  const V va = Simd::set1(a);
  int i = 0;
  for (; i <= n - kL; i += kL) Simd::store(y + i, Simd::fma(va, Simd::load(x + i), Simd::load(y + i)));
  if (i < n) {
    Simd::store_partial(y + i, Simd::fma(va, Simd::load_partial(x + i, n - i), Simd::load_partial(y + i, n - i)),
                        n - i);
  }
}

void rmsnorm(const float* x, const float* w, float* y, int n, float eps) {
  V s0 = Simd::zero(), s1 = Simd::zero();
  int i = 0;
  for (; i <= n - 2 * kL; i += 2 * kL) {
    const V a = Simd::load(x + i), b = Simd::load(x + i + kL);
    s0 = Simd::fma(a, a, s0);
    s1 = Simd::fma(b, b, s1);
  }
  for (; i <= n - kL; i += kL) {
    const V a = Simd::load(x + i);
    s0 = Simd::fma(a, a, s0);
  }
  if (i < n) {
    const V a = Simd::load_partial(x + i, n - i);
    s1 = Simd::fma(a, a, s1);
  }
  const float ss = Simd::reduce(Simd::add(s0, s1));
  const float scale = 1.0f / __builtin_sqrtf(ss / static_cast<float>(max_int(n, 1)) + eps);
  const V vs = Simd::set1(scale);
  for (i = 0; i <= n - kL; i += kL) Simd::store(y + i, Simd::mul(Simd::mul(Simd::load(x + i), vs), Simd::load(w + i)));
  if (i < n) {
    Simd::store_partial(y + i, Simd::mul(Simd::mul(Simd::load_partial(x + i, n - i), vs), Simd::load_partial(w + i, n - i)),
                        n - i);
  }
}

// silu(g) * u = g / (1 + e^-g) * u; e^-g = inf gives -0 (the limit), e^-g = 0 gives g.
V swiglu_vec(V g, V u) {
  const V e = Simd::exp(Simd::sub(Simd::zero(), g));
  return Simd::mul(Simd::div(g, Simd::add(Simd::set1(1.0f), e)), u);
}

void swiglu(const float* gate, const float* up, float* out, int n) {
  int i = 0;
  for (; i <= n - kL; i += kL) Simd::store(out + i, swiglu_vec(Simd::load(gate + i), Simd::load(up + i)));
  if (i < n) {
    Simd::store_partial(out + i, swiglu_vec(Simd::load_partial(gate + i, n - i), Simd::load_partial(up + i, n - i)),
                        n - i);
  }
}

// e^(x - m) where the float difference x - m is inexact (|x - m| up to ~200 loses up to
// 0.5 ulp(200) in the exponent, 1e-5 relative in the result): TwoSum recovers the rounding
// error r of d = x - m, and e^(d + r) = e^d (1 + r). x is first raised to lo = m - 120 (e^-120
// is 0 in float) so that -inf inputs give 0 instead of NaN.
V exp_shifted(V x, V m, V lo) {
  x = Simd::max(x, lo);
  const V d = Simd::sub(x, m);
  const V t = Simd::sub(d, x);  // ~ -m
  const V r = Simd::sub(Simd::sub(x, Simd::sub(d, t)), Simd::add(m, t));
  const V e = Simd::exp(d);
  return Simd::fma(e, r, e);
}

// max of x[0, n), n > 0.
float row_max(const float* x, int n) {
  constexpr float kNegInf = -__builtin_inff();
  V vm = Simd::set1(kNegInf);
  int i = 0;
  for (; i <= n - kL; i += kL) vm = Simd::max(vm, Simd::load(x + i));
  if (i < n) vm = Simd::max(vm, Simd::load_partial(x + i, n - i, kNegInf));
  return Simd::reduce_max(vm);
}

float softmax(float* x, int n) {
  if (n <= 0) return -__builtin_inff();
  int i = 0;
  const float mxs = row_max(x, n);
  const V mx = Simd::set1(mxs);
  const V lo = Simd::set1(mxs - 120.0f);

  V s0 = Simd::zero(), s1 = Simd::zero();
  for (i = 0; i <= n - 2 * kL; i += 2 * kL) {
    const V e0 = exp_shifted(Simd::load(x + i), mx, lo);
    const V e1 = exp_shifted(Simd::load(x + i + kL), mx, lo);
    Simd::store(x + i, e0);
    Simd::store(x + i + kL, e1);
    s0 = Simd::add(s0, e0);
    s1 = Simd::add(s1, e1);
  }
  for (; i <= n - kL; i += kL) {
    const V e = exp_shifted(Simd::load(x + i), mx, lo);
    Simd::store(x + i, e);
    s0 = Simd::add(s0, e);
  }
  if (i < n) {
    const V e = Simd::zero_tail(exp_shifted(Simd::load_partial(x + i, n - i), mx, lo), n - i);
    Simd::store_partial(x + i, e, n - i);
    s1 = Simd::add(s1, e);
  }
  const float sum = Simd::reduce(Simd::add(s0, s1));
  const V inv = Simd::set1(1.0f / sum);
  for (i = 0; i <= n - kL; i += kL) Simd::store(x + i, Simd::mul(Simd::load(x + i), inv));
  if (i < n) Simd::store_partial(x + i, Simd::mul(Simd::load_partial(x + i, n - i), inv), n - i);
  return mxs + std::log(sum);
}

#include "kernels/simd/sum_exp_inl.h"

double log_sum_exp(const float* x, int n) {
  if (n <= 0) return -__builtin_inf();
  const float mx = row_max(x, n);
  return std::log(sum_exp_lanes<kL / 2>(x, n, mx)) + mx;
}

#endif  // MXLM_F32_SIMD

}  // namespace

void register_f32(F32Kernels* out) {
  out->gemm = &gemm;
  out->gemm_nn = &gemm_nn;
  out->gemm_bf16 = &gemm_bf16;
  out->to_bf16 = &to_bf16;
  out->dot = &dot;
  out->axpy = &axpy;
  out->rmsnorm = &rmsnorm;
  out->swiglu = &swiglu;
  out->softmax = &softmax;
  out->log_sum_exp = &log_sum_exp;
  out->sum = &sum;
}

}  // namespace mxlm::kernels::MXLM_TARGET_NS

#endif  // !MXLM_TARGET_NEON
