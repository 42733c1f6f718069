// Attention scores over int8 keys with int8 queries: F32Kernels::gemm_i8 (kernels/f32_ops.h),
// compiled once per ISA (MXLM_TARGET_NS names the namespace). Only register_kv is exported;
// everything else has internal linkage and the SIMD builds call no inline function from a
// library header (see kernels/simd/f32_kernels.cc for why).
//
// The math. A query row x (K floats) is quantized once per call in groups of 32 elements, as
// quantize_act_row_ref does activations: a = nearbyint(x * 127/amax_g), d_g = amax_g / 127,
// S_g = the sum of a over group g; X_g = the sum of x over group g (floats, ascending). A key
// row in a KV cache format is exact small integers under f16 scales (qtype.h):
//   q8_gG   w = dk * (u - 128)     one dk per G elements (G = 32, 64 or 128)
//   q4a_g32 w = dk_g * u + mk_g    u in [0, 15]
// so x·w ~ sum_g term_g with exact integer dots I_g over group g:
//   q8_gG:   term = (dk * d_g) * I_g,                  I_g = dot(u - 128, a) (= dot(u, a) - 128 S_g)
//   q4a_g32: term = (dk_g * d_g) * I_g + mk_g * X_g,   I_g = dot(u, a)
// The offset's term takes the float query's sum, not d_g * S_g: the offset is as large as the
// group's range, and X_g has no rounding error to multiply it by. Measured (tinymix, 64 x 512,
// k4v4, ppl against f32 KV; float queries before): bf16 weights +0.73 % float, +0.86 % int8 with
// one scale per row, +0.79 % per group with d_g * S_g, +0.85 % with X_g; q4 weights +0.99 %,
// +1.11 % (d_g * S_g), +0.91 % (X_g): the int8 query moves ppl by about 0.1 % either way.
// Every ISA evaluates the float part in one order: acc = 0; per group ascending acc = fma(dk *
// d_g, float(I_g), acc) (then acc = fma(mk_g, X_g, acc)); y = acc. The integers are exact
// (|I_g| <= 32 * 255 * 127, so float(I_g) is too), so every ISA, every M and every tile gives
// bit-identical results, the reference included.

// Why. Decode attention (no GQA) reads every key once per query: the float path (gemm) spent
// more time dequantizing each element than reading it (Zen 5, one thread, Llama-7B depth 2048:
// q4 keys at a third of the bytes of f16 took as long). Here a key costs a few integer dot
// instructions per 64 bytes, as in the weights' kernels (kernels/quant.h).
//
// Layout (x86). A tile is kKeys key rows (AVX-512 16, AVX2 8) in lanes: each row's chunk of
// kChunk quant bytes (64 / 32) is multiplied with the query's matching bytes by vpdpbusd
// (AVX-512: u8 keys x s8 query) or vpmaddubsw + vpmaddwd (AVX2: q8 keys made signed, u - 128,
// through the abs/sign trick so that the int16 pairs cannot saturate; q4 keys as they are). A row
// then holds int32 partial sums in its lanes; a transpose-add tree sums each 128-bit lane of the
// kKeys rows into one vector per 128-bit lane, rows in lane order. A 128-bit lane is 16 bytes of
// quants: half a q8 group, or one q4 group (its 16 bytes hold elements j and j + 16 in the low
// and high nibbles, multiplied by the query's elements 0..15 and 16..31 of that group, which
// the call prepares as two arrays). A tile's scales (and offsets) come from each row's first 16
// bytes, transposed like the sums (a 32-bit gather per group took half the time on Zen 5). The
// last chunk of a row may be short: masked (AVX-512) or half-width (AVX2) loads.
// NEON takes 4 rows per tile and one 32-element group at a time (SDOT, or SMULL + SADALP).

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/f32_ops.h"
#include "kernels/qtype.h"
#include "kernels/quant.h"

#if defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#elif defined(MXLM_TARGET_NEON)
#include <arm_neon.h>
#else
#include <cmath>
#endif

#ifndef MXLM_TARGET_NS
#error "kernels/simd/kv_kernels.cc must be compiled with -DMXLM_TARGET_NS=<isa>"
#endif

#define MXLM_AI inline __attribute__((always_inline))

namespace mxlm {
namespace detail {
bool cpu_has_neon_dotprod();  // kernels/cpu_features.cc (defined on AArch64 builds)
}  // namespace detail

namespace kernels::MXLM_TARGET_NS {
namespace {

constexpr int kMaxGroups = kGemmI8MaxK / 32;
constexpr int kPad = 192;  // bytes past the last group that a vector load of the query may read

// One quantized query row, and the forms the kernels read it in.
struct Query {
  alignas(64) int8_t a[kGemmI8MaxK + kPad];          // a, zero past K
  alignas(64) int8_t lo[kGemmI8MaxK / 2 + kPad];     // lo[16 g + i] = a[32 g + i]       (q4 keys)
  alignas(64) int8_t hi[kGemmI8MaxK / 2 + kPad];     // hi[16 g + i] = a[32 g + 16 + i]
  float d[kMaxGroups];                               // d_g
  float xs[kMaxGroups];                              // X_g: the float sum of x over group g
  int32_t s[kMaxGroups];                             // S_g
  int groups;                                        // ceil(K / 32)
};

MXLM_AI float abs_f(float v) { return v < 0.0f ? -v : v; }

// a = nearbyint(x * id): each ISA's round-to-nearest-even conversion (the reference's nearbyint).
MXLM_AI int round_even(float v) {
#if defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)
  return _mm_cvtss_si32(_mm_set_ss(v));
#elif defined(MXLM_TARGET_NEON)
  return vcvtns_s32_f32(v);
#else
  return static_cast<int>(std::nearbyint(v));
#endif
}

void quantize_query(const float* x, int K, Query* q) {
  q->groups = (K + 31) / 32;
  const int kp = q->groups * 32;
  for (int g = 0; g < q->groups; ++g) {
    const int i1 = 32 * g + 32 < K ? 32 * g + 32 : K;
    float amax = 0.0f;
    for (int i = 32 * g; i < i1; ++i) {
      const float v = abs_f(x[i]);
      amax = v > amax ? v : amax;  // NaN ignored, as std::max(amax, v) in the reference
    }
    const bool zero = !(amax > kActTiny);
    const float id = zero ? 0.0f : 127.0f / amax;
    int s = 0;
    for (int i = 32 * g; i < i1; ++i) {
      const int v = round_even(x[i] * id);
      q->a[i] = static_cast<int8_t>(v);
      s += v;
    }
    float sum = 0.0f;
    for (int i = 32 * g; i < i1; ++i) sum += x[i];
    q->d[g] = zero ? 0.0f : amax / 127.0f;
    q->s[g] = s;
    q->xs[g] = sum;
  }
  for (int i = K; i < kp + kPad; ++i) q->a[i] = 0;
  for (int g = 0; g < q->groups; ++g) {
    for (int i = 0; i < 16; ++i) {
      q->lo[16 * g + i] = q->a[32 * g + i];
      q->hi[16 * g + i] = q->a[32 * g + 16 + i];
    }
  }
  for (int i = 16 * q->groups; i < 16 * q->groups + kPad; ++i) q->lo[i] = q->hi[i] = 0;
}

// The q8 format's G, or 0 for q4a_g32.
constexpr int q8_group(QType t) {
  return t == QType::kQ8G32 ? 32 : t == QType::kQ8G64 ? 64 : t == QType::kQ8G128 ? 128 : 0;
}

#if !defined(MXLM_TARGET_AVX2) && !defined(MXLM_TARGET_AVX512) && !defined(MXLM_TARGET_NEON)
// ---- ref: the specification ---------------------------------------------------------------------

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

template <QType T>
float score(const Query& q, const uint8_t* row) {
  const int nb = q.groups;
  float acc = 0.0f;
  if constexpr (q8_group(T) != 0) {
    constexpr int per = q8_group(T) / 32;  // 32-element groups per scale
    const int ns = (nb + per - 1) / per;
    const uint8_t* u = row + 2 * ns;
    for (int g = 0; g < nb; ++g) {
      int32_t dot = 0;
      for (int e = 32 * g; e < 32 * g + 32; ++e) dot += (int32_t(u[e]) - 128) * q.a[e];
      acc = std::fma(f16_at(row + 2 * (g / per)) * q.d[g], static_cast<float>(dot), acc);
    }
  } else {
    const uint8_t* u = row + 4 * nb;
    for (int g = 0; g < nb; ++g) {
      int32_t dot = 0;
      for (int j = 0; j < 16; ++j) {
        dot += int32_t(u[16 * g + j] & 15) * q.a[32 * g + j] + int32_t(u[16 * g + j] >> 4) * q.a[32 * g + 16 + j];
      }
      acc = std::fma(f16_at(row + 2 * g) * q.d[g], static_cast<float>(dot), acc);
      acc = std::fma(f16_at(row + 2 * nb + 2 * g), q.xs[g], acc);
    }
  }
  return acc;
}

template <QType T>
void scores(const Query& q, int N, const uint8_t* w, size_t wrb, float* y) {
  for (int n = 0; n < N; ++n) y[n] = score<T>(q, w + static_cast<size_t>(n) * wrb);
}

#elif defined(MXLM_TARGET_AVX2) || defined(MXLM_TARGET_AVX512)
// ---- x86 -----------------------------------------------------------------------------------------

#if defined(MXLM_TARGET_AVX512)
using VI = __m512i;
using VF = __m512;
constexpr int kKeys = 16, kChunk = 64, kLanes = 4;

MXLM_AI VI load_q(const int8_t* p) { return _mm512_load_si512(p); }
// n in [16, 64], a multiple of 16: bytes past n read as zero (and are not touched).
MXLM_AI VI load_chunk(const uint8_t* p, int n) {
  return n >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8((1ull << n) - 1, p);
}
MXLM_AI VI dot_q8(VI w, VI a) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a); }
MXLM_AI VI dot_q4(VI w, VI alo, VI ahi) {
  const VI m = _mm512_set1_epi8(15);
  const VI lo = _mm512_and_si512(w, m), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m);
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, alo), hi, ahi);
}
// r[j] (row j's int32 lanes) -> L[k]: lane j = the sum of row j's 128-bit lane k.
MXLM_AI void reduce(VI* r, VI* L) {
  VI x[8], y[4];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    x[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    y[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_epi64(x[2 * i], x[2 * i + 1]));
  }
  const VI t0 = _mm512_shuffle_i32x4(y[0], y[1], 0x44), t1 = _mm512_shuffle_i32x4(y[0], y[1], 0xEE);
  const VI t2 = _mm512_shuffle_i32x4(y[2], y[3], 0x44), t3 = _mm512_shuffle_i32x4(y[2], y[3], 0xEE);
  L[0] = _mm512_shuffle_i32x4(t0, t2, 0x88);
  L[1] = _mm512_shuffle_i32x4(t0, t2, 0xDD);
  L[2] = _mm512_shuffle_i32x4(t1, t3, 0x88);
  L[3] = _mm512_shuffle_i32x4(t1, t3, 0xDD);
}
MXLM_AI VI add_i(VI a, VI b) { return _mm512_add_epi32(a, b); }
MXLM_AI VI zero_i() { return _mm512_setzero_si512(); }
MXLM_AI VI set1_i(int v) { return _mm512_set1_epi32(v); }
MXLM_AI VI sub_i(VI a, VI b) { return _mm512_sub_epi32(a, b); }
MXLM_AI VF fma_f(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
MXLM_AI VF cvt_f(VI a) { return _mm512_cvtepi32_ps(a); }
MXLM_AI VF set1_f(float v) { return _mm512_set1_ps(v); }
MXLM_AI VF zero_f() { return _mm512_setzero_ps(); }
MXLM_AI VF mul_f(VF a, VF b) { return _mm512_mul_ps(a, b); }
// The 16 bytes at rows[j] + off of each key j (8 f16 values), as 8 float vectors over the keys:
// out[e] lane j = f16 e of key j. Row j's bytes go to 128-bit lane j / 4 of Z[j % 4]; a 4 x 4
// dword transpose inside each lane then leaves dword i (f16 2i, 2i + 1) of rows 4l .. 4l + 3 in
// lane l of T[i].
MXLM_AI void header8(const uint8_t* const* rows, size_t off, VF* out) {
  VI Z[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    VI z = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k] + off)));
    z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k + 4] + off)), 1);
    z = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k + 8] + off)), 2);
    Z[k] = _mm512_inserti32x4(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k + 12] + off)), 3);
  }
  const VI a = _mm512_unpacklo_epi32(Z[0], Z[1]), b = _mm512_unpackhi_epi32(Z[0], Z[1]);
  const VI c = _mm512_unpacklo_epi32(Z[2], Z[3]), d = _mm512_unpackhi_epi32(Z[2], Z[3]);
  const VI T[4] = {_mm512_unpacklo_epi64(a, c), _mm512_unpackhi_epi64(a, c), _mm512_unpacklo_epi64(b, d),
                   _mm512_unpackhi_epi64(b, d)};
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(T[i]));
    out[2 * i + 1] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(T[i], 16)));
  }
}
MXLM_AI void store_f(float* y, VF v, int n) {
  if (n >= 16) {
    _mm512_storeu_ps(y, v);
  } else {
    _mm512_mask_storeu_ps(y, static_cast<__mmask16>((1u << n) - 1), v);
  }
}
// AVX-512 multiplies unsigned q8 bytes: I = dot(u, a) - 128 S.
constexpr bool kQ8Unsigned = true;

#else  // AVX2
using VI = __m256i;
using VF = __m256;
constexpr int kKeys = 8, kChunk = 32, kLanes = 2;

MXLM_AI VI load_q(const int8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
MXLM_AI VI load_chunk(const uint8_t* p, int n) {
  if (n >= 32) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), 0);
}
MXLM_AI VI dot_q8(VI w, VI a) {
  const VI s = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));  // u - 128 as int8
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(s), _mm256_sign_epi8(a, s)), _mm256_set1_epi16(1));
}
MXLM_AI VI dot_q4(VI w, VI alo, VI ahi) {
  const VI m = _mm256_set1_epi8(15);
  const VI lo = _mm256_and_si256(w, m), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
  // Each int16 pair sum is at most 2 * 15 * 127, so the two add in int16.
  const VI p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, alo), _mm256_maddubs_epi16(hi, ahi));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
MXLM_AI void reduce(VI* r, VI* L) {
  VI x[4], y[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]), _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    y[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(x[2 * i], x[2 * i + 1]), _mm256_unpackhi_epi64(x[2 * i], x[2 * i + 1]));
  }
  L[0] = _mm256_permute2x128_si256(y[0], y[1], 0x20);
  L[1] = _mm256_permute2x128_si256(y[0], y[1], 0x31);
}
MXLM_AI VI add_i(VI a, VI b) { return _mm256_add_epi32(a, b); }
MXLM_AI VI zero_i() { return _mm256_setzero_si256(); }
MXLM_AI VI set1_i(int v) { return _mm256_set1_epi32(v); }
MXLM_AI VI sub_i(VI a, VI b) { return _mm256_sub_epi32(a, b); }
MXLM_AI VF fma_f(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
MXLM_AI VF cvt_f(VI a) { return _mm256_cvtepi32_ps(a); }
MXLM_AI VF set1_f(float v) { return _mm256_set1_ps(v); }
MXLM_AI VF zero_f() { return _mm256_setzero_ps(); }
MXLM_AI VF mul_f(VF a, VF b) { return _mm256_mul_ps(a, b); }
// As the AVX-512 header8, for 8 keys: rows j and j + 4 in the lanes of Z[j % 4].
MXLM_AI void header8(const uint8_t* const* rows, size_t off, VF* out) {
  VI Z[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const VI z = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k] + off)));
    Z[k] = _mm256_inserti128_si256(z, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k + 4] + off)), 1);
  }
  const VI a = _mm256_unpacklo_epi32(Z[0], Z[1]), b = _mm256_unpackhi_epi32(Z[0], Z[1]);
  const VI c = _mm256_unpacklo_epi32(Z[2], Z[3]), d = _mm256_unpackhi_epi32(Z[2], Z[3]);
  const VI T[4] = {_mm256_unpacklo_epi64(a, c), _mm256_unpackhi_epi64(a, c), _mm256_unpacklo_epi64(b, d),
                   _mm256_unpackhi_epi64(b, d)};
  // The low (high) 16 bits of each dword into the low 8 bytes of each 128-bit lane, then the two
  // lanes' halves together.
  const VI lo = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13,
                                 -1, -1, -1, -1, -1, -1, -1, -1);
  const VI hi = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6, 7, 10, 11, 14,
                                 15, -1, -1, -1, -1, -1, -1, -1, -1);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_shuffle_epi8(T[i], lo), 0x08)));
    out[2 * i + 1] =
        _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_shuffle_epi8(T[i], hi), 0x08)));
  }
}
MXLM_AI void store_f(float* y, VF v, int n) {
  if (n >= 8) {
    _mm256_storeu_ps(y, v);
    return;
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int j = 0; j < n; ++j) y[j] = t[j];
}
// AVX2 multiplies q8 as signed u - 128: I = dot(u - 128, a) directly.
constexpr bool kQ8Unsigned = false;
#endif

// Tiles to prefetch ahead: a tile reads its rows' headers, then chunk by chunk across its rows,
// which the hardware prefetchers follow poorly (Zen 5, one thread, keys from DRAM: q4 keys 310-420
// us a layer without, 200-210 with 4 tiles ahead; q8 360-470 -> 250-340).
constexpr int kAhead = 4;
template <QType T>
void scores(const Query& q, int N, const uint8_t* w, size_t wrb, float* y) {
  constexpr int G = q8_group(T);
  const int nb = q.groups;
  const int per = G / 32;                                // q8: 32-element groups per scale
  const int ns = G != 0 ? (nb + per - 1) / per : nb;     // scales in a row
  const size_t qoff = G != 0 ? 2 * static_cast<size_t>(ns) : 4 * static_cast<size_t>(nb);
  const int qbytes = G != 0 ? ns * G : 16 * nb;
  // The row's f16 header (q8: the scales; q4: the scales, then the offsets), 8 values at a time:
  // each 16-byte read stays inside the row, whose quants follow and outnumber the header bytes.
  const int hdr = G != 0 ? ns : 2 * nb;
  VF h[2 * kMaxGroups + 8];
  for (int n0 = 0; n0 < N; n0 += kKeys) {
    const uint8_t* rows[kKeys];
#pragma GCC unroll 16
    for (int j = 0; j < kKeys; ++j) rows[j] = w + static_cast<size_t>(n0 + j < N ? n0 + j : N - 1) * wrb;
    if (n0 + kAhead * kKeys < N) {
      // The rows kAhead tiles on, a cache line at a time.
      const int ahead = N - n0 - kAhead * kKeys < kKeys ? N - n0 - kAhead * kKeys : kKeys;
      const char* pf = reinterpret_cast<const char*>(w) + static_cast<size_t>(n0 + kAhead * kKeys) * wrb;
      for (size_t b = 0; b < static_cast<size_t>(ahead) * wrb; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
    }
    for (int e = 0; e < hdr; e += 8) header8(rows, 2 * static_cast<size_t>(e), h + e);
    VF acc = zero_f();
    for (int c = 0; c * kChunk < qbytes; ++c) {
      const int bytes = qbytes - c * kChunk < kChunk ? qbytes - c * kChunk : kChunk;
      VI r[kKeys], L[kLanes];
      if constexpr (G != 0) {
        const VI a = load_q(q.a + c * kChunk);
#pragma GCC unroll 16
        for (int j = 0; j < kKeys; ++j) r[j] = dot_q8(load_chunk(rows[j] + qoff + c * kChunk, bytes), a);
        reduce(r, L);
        // 128-bit lane k holds elements [16 k, 16 k + 16) of the chunk: group (c kChunk + 16 k) / 32.
#pragma GCC unroll 4
        for (int k = 0; k < kLanes; k += 2) {
          const int g = (c * kChunk + 16 * k) / 32;
          if (g >= nb) break;
          VI I = add_i(L[k], L[k + 1]);
          if (kQ8Unsigned) I = sub_i(I, set1_i(128 * q.s[g]));
          acc = fma_f(mul_f(h[g / per], set1_f(q.d[g])), cvt_f(I), acc);
        }
      } else {
        const VI alo = load_q(q.lo + c * kChunk), ahi = load_q(q.hi + c * kChunk);
#pragma GCC unroll 16
        for (int j = 0; j < kKeys; ++j) r[j] = dot_q4(load_chunk(rows[j] + qoff + c * kChunk, bytes), alo, ahi);
        reduce(r, L);
        // 128-bit lane k is one group: c * kLanes + k.
#pragma GCC unroll 4
        for (int k = 0; k < kLanes; ++k) {
          const int g = c * kLanes + k;
          if (g >= nb) break;
          acc = fma_f(mul_f(h[g], set1_f(q.d[g])), cvt_f(L[k]), acc);
          acc = fma_f(h[nb + g], set1_f(q.xs[g]), acc);
        }
      }
    }
    store_f(y + n0, acc, N - n0);
  }
}

#else  // NEON
// ---- NEON ----------------------------------------------------------------------------------------

MXLM_AI float32x4_t f16x4(const uint8_t* const* p, size_t off) {
  uint16_t h[4];
  for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p[j] + off, 2);
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

namespace nodot {
MXLM_AI int32x4_t dot(int32x4_t acc, int8x16_t a, int8x16_t b) {
  return vpadalq_s16(vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b))), vmull_high_s8(a, b));
}
#include "kernels/simd/kv_neon_inl.h"
}  // namespace nodot

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace dotprod {
MXLM_AI int32x4_t dot(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
#include "kernels/simd/kv_neon_inl.h"
}  // namespace dotprod
#pragma GCC pop_options
#endif

// ---- the entry point ---------------------------------------------------------------------------

#if defined(MXLM_TARGET_NEON)
template <bool kDot, QType T>
void scores_of(const Query& q, int N, const uint8_t* w, size_t wrb, float* y) {
  if constexpr (kDot) {
    dotprod::scores<T>(q, N, w, wrb, y);
  } else {
    nodot::scores<T>(q, N, w, wrb, y);
  }
}
#endif

template <bool kDot>
void gemm_i8(int M, int N, int K, const float* x, size_t ldx, const void* w, size_t w_row_bytes, QType wtype,
             float* y, size_t ldy) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || K > kGemmI8MaxK || !gemm_i8_reads(wtype)) __builtin_trap();  // a caller bug
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  Query q;
  for (int m = 0; m < M; ++m) {
    quantize_query(x + static_cast<size_t>(m) * ldx, K, &q);
    float* ym = y + static_cast<size_t>(m) * ldy;
#if defined(MXLM_TARGET_NEON)
    switch (wtype) {
      case QType::kQ8G32: scores_of<kDot, QType::kQ8G32>(q, N, wb, w_row_bytes, ym); break;
      case QType::kQ8G64: scores_of<kDot, QType::kQ8G64>(q, N, wb, w_row_bytes, ym); break;
      case QType::kQ8G128: scores_of<kDot, QType::kQ8G128>(q, N, wb, w_row_bytes, ym); break;
      default: scores_of<kDot, QType::kQ4AG32>(q, N, wb, w_row_bytes, ym); break;
    }
#else
    switch (wtype) {
      case QType::kQ8G32: scores<QType::kQ8G32>(q, N, wb, w_row_bytes, ym); break;
      case QType::kQ8G64: scores<QType::kQ8G64>(q, N, wb, w_row_bytes, ym); break;
      case QType::kQ8G128: scores<QType::kQ8G128>(q, N, wb, w_row_bytes, ym); break;
      default: scores<QType::kQ4AG32>(q, N, wb, w_row_bytes, ym); break;
    }
#endif
  }
}

}  // namespace

void register_kv(F32Kernels* out) {
#if defined(MXLM_TARGET_NEON)
  out->gemm_i8 = detail::cpu_has_neon_dotprod() ? &gemm_i8<true> : &gemm_i8<false>;
#else
  out->gemm_i8 = &gemm_i8<false>;
#endif
}

}  // namespace kernels::MXLM_TARGET_NS
}  // namespace mxlm

#undef MXLM_AI
