// The affine KV groups' fit: see runtime/kv_fit.h.

#include "runtime/kv_fit.h"

#include <algorithm>
#include <cstddef>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/qtype.h"
#include "kernels/quant.h"

namespace mxlm {

// The affine formats' groups (q4a_g32, q2a_g32): w = d * q + m, q in [0, top]. fit_affine
// starts from m = min, d = (max - min) / top, then runs two rounds of the least-squares (d, m)
// for the current levels and the levels for the new (d, m) (both as f16), keeping the pair of
// least squared error (tinymix-26m k4v4: +1.5 % -> +0.8 % ppl over f32 KV). The sums are those of
// every round in ascending order; x is summed once (it is the same each round), the last round
// sums only the error (its update would go unused), and a pair the update returns unchanged ends
// the rounds (the next would repeat it): the same bytes as running all three rounds whole.
namespace {
constexpr int kAffineRounds = 3;
}  // namespace

void fit_affine(const float* x, int ne, float top, uint16_t* d_out, uint16_t* m_out) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < ne; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  uint16_t best_m = f32_to_f16(lo), best_d = f32_to_f16((hi - lo) / top);
  float best_err = std::numeric_limits<float>::infinity();
  uint16_t mh = best_m, dh = best_d;
  double sx = 0;
  for (int i = 0; i < ne; ++i) sx += x[i];
  for (int round = 0; round < kAffineRounds; ++round) {
    const float m = f16_to_f32(mh), d = f16_to_f32(dh);
    const bool last = round == kAffineRounds - 1;
    double err = 0, sq = 0, sqq = 0, sxq = 0;
    for (int i = 0; i < ne; ++i) {
      const float v = x[i];
      const float r = d > 0 ? std::clamp(round_even((v - m) / d), 0.0f, top) : 0.0f;
      const float e = v - (d * r + m);
      err += double(e) * e;
      if (last) continue;
      sq += r;
      sqq += double(r) * r;
      sxq += double(v) * r;
    }
    if (err < best_err) {
      best_err = float(err);
      best_m = mh;
      best_d = dh;
    }
    if (last) break;
    const double det = ne * sqq - sq * sq;
    if (det <= 0) break;
    const double dn = (ne * sxq - sx * sq) / det;
    if (!(dn > 0)) break;
    const uint16_t dh2 = f32_to_f16(float(dn)), mh2 = f32_to_f16(float((sx - dn * sq) / ne));
    if (dh2 == dh && mh2 == mh) break;  // a fixed point: the next round repeats this one
    dh = dh2;
    mh = mh2;
  }
  *d_out = best_d;
  *m_out = best_m;
}

#if defined(__SSE2__)
namespace {
// round_even (kv_fit.h) in each lane, then clamped to [0, top] with max/min (+0 where std::clamp
// keeps -0: the same level).
inline __m128 round_clamp_ps(__m128 u, __m128 top) {
  const __m128 two23 = _mm_set1_ps(0x1p23f), sign = _mm_set1_ps(-0.0f);
  const __m128 a = _mm_andnot_ps(sign, u);
  const __m128 small = _mm_cmplt_ps(a, two23);
  const __m128 ra = _mm_or_ps(_mm_sub_ps(_mm_add_ps(a, two23), two23), _mm_and_ps(u, sign));
  const __m128 re = _mm_or_ps(_mm_and_ps(small, ra), _mm_andnot_ps(small, u));
  return _mm_min_ps(_mm_max_ps(re, _mm_setzero_ps()), top);
}
}  // namespace

// SSE2: fit_affine of `lanes` (1 to 4) whole groups at x, x + 32, ..., one group per lane of SSE2
// vectors: each lane runs fit_affine's operations on its group in fit_affine's order (IEEE
// single and double steps, no fused multiply-add: the bytes are the same; a lane whose fit ends
// is computed on and ignored), so a row of 128 costs one pass of 4-wide divisions and
// double-precision sums per round instead of four. Zeros: max/min give +0 where std::clamp
// keeps -0, which changes no sum, product or level.
void fit_affine4(const float* x, int lanes, float top, uint16_t* d_out, uint16_t* m_out) {
  constexpr int N = kAffineGroup;
  alignas(16) float xt[N * 4];  // xt[4 i + l]: element i of lane l's group
  uint16_t mh[4], dh[4], bm[4], bd[4];
  float best_err[4];
  bool active[4];
  for (int l = 0; l < 4; ++l) {
    const float* g = x + size_t(std::min(l, lanes - 1)) * N;
    float lo = g[0], hi = g[0];
    for (int i = 1; i < N; ++i) {
      lo = std::min(lo, g[i]);
      hi = std::max(hi, g[i]);
    }
    for (int i = 0; i < N; ++i) xt[4 * i + l] = g[i];
    bm[l] = mh[l] = f32_to_f16(lo);
    bd[l] = dh[l] = f32_to_f16((hi - lo) / top);
    best_err[l] = std::numeric_limits<float>::infinity();
    active[l] = l < lanes;
  }
  // Lanes 0-1 and 2-3 of a float vector as doubles.
  auto lo2 = [](__m128 v) { return _mm_cvtps_pd(v); };
  auto hi2 = [](__m128 v) { return _mm_cvtps_pd(_mm_movehl_ps(v, v)); };
  alignas(16) double sx[4];
  {
    __m128d s0 = _mm_setzero_pd(), s1 = _mm_setzero_pd();
    for (int i = 0; i < N; ++i) {
      const __m128 v = _mm_load_ps(xt + 4 * i);
      s0 = _mm_add_pd(s0, lo2(v));
      s1 = _mm_add_pd(s1, hi2(v));
    }
    _mm_store_pd(sx, s0);
    _mm_store_pd(sx + 2, s1);
  }
  const __m128 zero = _mm_setzero_ps(), topv = _mm_set1_ps(top);
  for (int round = 0; round < kAffineRounds; ++round) {
    alignas(16) float mf[4], df[4];
    for (int l = 0; l < 4; ++l) {
      mf[l] = f16_to_f32(mh[l]);
      df[l] = f16_to_f32(dh[l]);
    }
    const __m128 m = _mm_load_ps(mf), d = _mm_load_ps(df), dpos = _mm_cmpgt_ps(d, zero);
    const bool last = round == kAffineRounds - 1;
    __m128d err0 = _mm_setzero_pd(), err1 = err0, sq0 = err0, sq1 = err0, sqq0 = err0, sqq1 = err0, sxq0 = err0,
            sxq1 = err0;
    for (int i = 0; i < N; ++i) {
      const __m128 v = _mm_load_ps(xt + 4 * i);
      // round_even of (v - m) / d, clamped to [0, top]; 0 where d <= 0.
      const __m128 u = _mm_div_ps(_mm_sub_ps(v, m), d);
      const __m128 r = _mm_and_ps(dpos, round_clamp_ps(u, topv));
      const __m128 e = _mm_sub_ps(v, _mm_add_ps(_mm_mul_ps(d, r), m));
      const __m128d e0 = lo2(e), e1 = hi2(e);
      err0 = _mm_add_pd(err0, _mm_mul_pd(e0, e0));
      err1 = _mm_add_pd(err1, _mm_mul_pd(e1, e1));
      if (last) continue;
      const __m128d r0 = lo2(r), r1 = hi2(r), v0 = lo2(v), v1 = hi2(v);
      sq0 = _mm_add_pd(sq0, r0);
      sq1 = _mm_add_pd(sq1, r1);
      sqq0 = _mm_add_pd(sqq0, _mm_mul_pd(r0, r0));
      sqq1 = _mm_add_pd(sqq1, _mm_mul_pd(r1, r1));
      sxq0 = _mm_add_pd(sxq0, _mm_mul_pd(v0, r0));
      sxq1 = _mm_add_pd(sxq1, _mm_mul_pd(v1, r1));
    }
    alignas(16) double err[4], sq[4], sqq[4], sxq[4];
    _mm_store_pd(err, err0);
    _mm_store_pd(err + 2, err1);
    _mm_store_pd(sq, sq0);
    _mm_store_pd(sq + 2, sq1);
    _mm_store_pd(sqq, sqq0);
    _mm_store_pd(sqq + 2, sqq1);
    _mm_store_pd(sxq, sxq0);
    _mm_store_pd(sxq + 2, sxq1);
    bool any = false;
    for (int l = 0; l < lanes; ++l) {
      if (!active[l]) continue;
      if (err[l] < best_err[l]) {
        best_err[l] = float(err[l]);
        bm[l] = mh[l];
        bd[l] = dh[l];
      }
      active[l] = false;
      if (last) continue;
      const double det = N * sqq[l] - sq[l] * sq[l];
      if (det <= 0) continue;
      const double dn = (N * sxq[l] - sx[l] * sq[l]) / det;
      if (!(dn > 0)) continue;
      const uint16_t dh2 = f32_to_f16(float(dn)), mh2 = f32_to_f16(float((sx[l] - dn * sq[l]) / N));
      if (dh2 == dh[l] && mh2 == mh[l]) continue;
      dh[l] = dh2;
      mh[l] = mh2;
      active[l] = any = true;
    }
    if (!any) break;
  }
  for (int l = 0; l < lanes; ++l) {
    d_out[l] = bd[l];
    m_out[l] = bm[l];
  }
}
#else
void fit_affine4(const float* x, int lanes, float top, uint16_t* d_out, uint16_t* m_out) {
  for (int l = 0; l < lanes; ++l) fit_affine(x + l * kAffineGroup, kAffineGroup, top, &d_out[l], &m_out[l]);
}
#endif

namespace {
void quantize_affine_group_scalar(const float* x, int ne, float d, float m, int bits, uint8_t* dst) {
  const float top = float((1 << bits) - 1);
  uint8_t q[kAffineGroup];
  for (int i = 0; i < kAffineGroup; ++i) {
    const float r = i < ne && d > 0 ? round_even((x[i] - m) / d) : 0.0f;
    q[i] = uint8_t(std::clamp(r, 0.0f, top));
  }
  pack_group(bits, kAffineGroup, q, dst);
}
}  // namespace

#if defined(__SSE2__)
// Four elements per lane-wise step: round_clamp_ps (as in fit_affine4), truncated to int32 (the
// value is an integer), narrowed to bytes and packed with shifts within bytes (levels < 2^bits:
// no carry).
// Measured (`kv_store/` in mxlm_bench_kernels, one Llama-7B layer-token, one thread, Zen 5, two
// alternating runs of the builds; the scalar loop and pack_group before): k4v4 89.7-91.7 ->
// 70.9-71.0 us, k2v2 113-114 -> 108-109 us. The fit (fit_affine4) is now ~40 % of k4v4's store.
void quantize_affine_group(const float* x, int ne, float d, float m, int bits, uint8_t* dst) {
  if (ne != kAffineGroup || !(d > 0) || (bits != 4 && bits != 2)) {
    quantize_affine_group_scalar(x, ne, d, m, bits, dst);
    return;
  }
  const __m128 vm = _mm_set1_ps(m), vd = _mm_set1_ps(d), topv = _mm_set1_ps(float((1 << bits) - 1));
  __m128i q[8];
  for (int i = 0; i < 8; ++i) {
    q[i] = _mm_cvttps_epi32(round_clamp_ps(_mm_div_ps(_mm_sub_ps(_mm_loadu_ps(x + 4 * i), vm), vd), topv));
  }
  // Bytes of elements 0-15 and 16-31.
  const __m128i lo = _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
  const __m128i hi = _mm_packus_epi16(_mm_packs_epi32(q[4], q[5]), _mm_packs_epi32(q[6], q[7]));
  if (bits == 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
    return;
  }
  const __m128i b = _mm_or_si128(_mm_or_si128(lo, _mm_slli_epi16(_mm_srli_si128(lo, 8), 2)),
                                 _mm_or_si128(_mm_slli_epi16(hi, 4), _mm_slli_epi16(_mm_srli_si128(hi, 8), 6)));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), b);
}
#else
void quantize_affine_group(const float* x, int ne, float d, float m, int bits, uint8_t* dst) {
  quantize_affine_group_scalar(x, ne, d, m, bits, dst);
}
#endif

}  // namespace mxlm
