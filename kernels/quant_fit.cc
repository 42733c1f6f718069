// The quantizer's row fit (kernels/quant_fit.h): each group's scale (and offset) by a
// weighted search, a row's codebook by weighted k-means, and the two-level formats' codes. It
// is the one implementation of each format's fit: quantize_row and quantize_row_params
// (kernels/quant.cc) run it.
//
// Its searches keep 8 float partial sums per candidate and add them in double (see the
// searches' section below); the codebook fit walks only the non-empty histogram bins and stops
// at the k-means fixed point. The fit is compiled three times on x86-64 (baseline, AVX2,
// AVX-512; without FP contraction, kernels/CMakeLists.txt: all round alike, bit-identical,
// QuantCopies.SameBytesOnEveryIsa), and the runtime's selected ISA picks the copy. Measured, ns
// per weight at k = 512 with importance (one thread, 2-core shared VM, load ~1.7), quantize_row
// with scalar-lane searches and a 30-iteration Lloyd walk over all 2048 bins → the 8-lane layout
// (AVX2 copy; baseline copy): q4_g32 62 → 22 (61), q4a_g32 115 → 44 (152), nu3_g32 207 → 50
// (114), q4_g128 42 → 12 (35), q2a_g64 96 → 33 (120), nu4_g32 234 → 53 (144). The bytes did not
// change (every format, k in {32, 172, 512, 1280}, with and without importance; x86-64 both
// copies, and AArch64).
#include "kernels/quant_fit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "kernels/round.h"

namespace mxlm::detail {

namespace {

// f16 rounding, f16_to_f32(f32_to_f16(f)), inline where it is plain mantissa rounding: in f16's
// normal range [2^-14, 65520) rounding the mantissa to 10 bits (to nearest even) is exactly
// f32_to_f16's own integer arithmetic (kernels/qtype.cc); subnormals, overflow and NaN go
// through the functions. The searches round 2 or 4 values per candidate scale.
inline __attribute__((always_inline)) float round_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x38800000u && a < 0x477ff000u) {
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return f16_to_f32(f32_to_f16(f));
}

// The searches' sums run in 8 independent float lanes per candidate: the spec is "lane j sums
// the elements i ≡ j (mod 8) in order, then lanes 0..7 are added in double, in order". Two
// layouts compute it. The baseline and AVX2 copies hold a candidate's 8 lanes in one vector
// (V8, GCC vector extension: one ymm in the AVX2 copy, two xmm or NEON registers in the
// baseline one) and run all candidates' sums before their double reductions (search_sym8,
// search_asym8). The AVX-512 copy holds 16 candidates in one vector instead (Lanes<16>) and
// runs each lane j's chain over its elements, so the eight chains of a candidate come out as
// its eight partial sums ([j][candidate], the order the spec adds them) with no transposition;
// the candidates' scales, the double sums, the least-squares refits, the f16 rounding and the
// errors then run as loops over the candidates, 16 per instruction (search_sym16,
// search_asym16). The two-level code search holds its candidates in lanes on every copy (W = 8
// or 16: two_level_errors). Lane-wise IEEE operations only, in the same order per candidate, so
// every copy rounds alike (this file is compiled without FP contraction: kernels/CMakeLists.txt);
// tested bitwise (QuantCopies.SameBytesOnEveryIsa). Measured: see fit_row_avx512. The vector
// helpers are always inlined, so their (AVX vs baseline) argument-passing ABI never applies (GCC
// reports it at the end of the file, hence no pop).
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));

// Lanes<W>: W floats (F), their halves (H) and the halves in double (D), each one register
// (W = 16: zmm, ymm, zmm; W = 8: ymm, xmm, ymm); sums in double run on the two halves (GCC 12
// lowers a conversion of a whole F to doubles through the stack).
template <int W>
struct Lanes;
template <>
struct Lanes<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef float H __attribute__((vector_size(16)));
  typedef double D __attribute__((vector_size(32)));
  typedef uint32_t U __attribute__((vector_size(32)));
  static H lo(F f) { return __builtin_shufflevector(f, f, 0, 1, 2, 3); }
  static H hi(F f) { return __builtin_shufflevector(f, f, 4, 5, 6, 7); }
};
template <>
struct Lanes<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef float H __attribute__((vector_size(32)));
  typedef double D __attribute__((vector_size(64)));
  typedef uint32_t U __attribute__((vector_size(64)));
  static H lo(F f) { return __builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7); }
  static H hi(F f) { return __builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15); }
};

// The halves of f in double.
template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::D dlo(typename Lanes<W>::F f) {
  return __builtin_convertvector(Lanes<W>::lo(f), typename Lanes<W>::D);
}
template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::D dhi(typename Lanes<W>::F f) {
  return __builtin_convertvector(Lanes<W>::hi(f), typename Lanes<W>::D);
}
inline __attribute__((always_inline)) V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V, class T>
inline __attribute__((always_inline)) V loadv(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// round_clampf lane-wise.
template <class V>
inline __attribute__((always_inline)) V round_clampv(V t, V lo, V hi) {
  const V magic = V{} + 12582912.0f;
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  return (t + magic) - magic;
}

// round_f16 lane-wise: the mantissa rounding in f16's normal range, the functions elsewhere.
template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::F round_f16v(typename Lanes<W>::F f) {
  using U = typename Lanes<W>::U;
  U u;
  std::memcpy(&u, &f, sizeof(u));
  const U a = u & 0x7fffffffu;
  const auto normal = (a >= 0x38800000u) & (a < 0x477ff000u);
  u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
  typename Lanes<W>::F r;
  std::memcpy(&r, &u, sizeof(r));
  alignas(64) int32_t nm[W];
  std::memcpy(nm, &normal, sizeof(nm));
  int all = -1;
  for (int l = 0; l < W; ++l) all &= nm[l];
  if (all == 0) {
    for (int l = 0; l < W; ++l) {
      if (!nm[l]) r[l] = f16_to_f32(f32_to_f16(f[l]));
    }
  }
  return r;
}

// round_clampf lane-wise.
inline __attribute__((always_inline)) V8 round_clamp8(V8 t, V8 lo, V8 hi) {
  const V8 magic = V8{} + 12582912.0f;
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  return (t + magic) - magic;
}

// The asymmetric search's candidate ranges [a, b]: the min/max range shrunk by 0 to 24 % in
// steps of 2 %, from the top, the bottom and both ends; returns their count (at most 39).
inline int asym_ranges(float lo, float hi, float* ca, float* cb) {
  int nc = 0;
  for (int step = 0; step <= 12; ++step) {
    const float shrink = 1.0f - 0.02f * step;
    for (int anchor = 0; anchor < 3; ++anchor) {
      float a = lo, b = hi;
      const float span = (hi - lo) * (1 - shrink);
      if (anchor == 0) b -= span;
      if (anchor == 1) a += span;
      if (anchor == 2) { a += span / 2; b -= span / 2; }
      if (b <= a) continue;
      ca[nc] = a;
      cb[nc] = b;
      ++nc;
    }
  }
  return nc;
}

// The asymmetric search's choice: the first candidate of least error among those with d > 0
// (none: d = 0, m = lo rounded). Returns d, writes m.
inline float choose_asym(int nc, const float* cd, const float* cm, const double* errs, float lo, float* m_out) {
  double best_err = INFINITY;
  float best_d = 0, best_m = round_f16(lo);
  for (int c = 0; c < nc; ++c) {
    if (cd[c] <= 0) continue;
    if (errs[c] < best_err) {
      best_err = errs[c];
      best_d = cd[c];
      best_m = cm[c];
    }
  }
  *m_out = best_m;
  return best_d;
}

// Symmetric: w = d * (q - z). Tries scales that map the largest-magnitude value to levels near
// -z (and near z-1), refits d by weighted least squares for each assignment, keeps the best
// (the first of equal errors, in candidate order). x and w hold a whole group (n rounded up to
// 8 values, zero weight past n). Returns d (f16-rounded; 0 for an all-zero group).
// Order of work: all candidates' lane sums first, then their double reductions across
// candidates (the candidates' chains are independent, so they overlap; the same operations in
// the same order per candidate).
inline __attribute__((always_inline)) float search_sym8(int bits, const float* x, const float* w, int n) {
  const int z = 1 << (bits - 1), qmax = (1 << bits) - 1;
  float vmax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::abs(x[i]) > std::abs(vmax)) vmax = x[i];
  }
  if (vmax == 0) return 0;
  const int n8 = (n + 7) & ~7;
  const float lo = static_cast<float>(-z), hi = static_cast<float>(qmax - z);
  float wx[128];
  double sxx = 0;
  for (int i = 0; i < n8; ++i) {
    wx[i] = w[i] * x[i];
    sxx += double(wx[i]) * x[i];
  }
  constexpr int kMaxCand = 34;
  float ids[kMaxCand];
  int nc = 0;
  for (int step = -8; step <= 8; ++step) {
    for (int side = 0; side < 2; ++side) {
      // side 0 maps vmax to -z (full negative range), side 1 to +(z-1).
      const float target = side == 0 ? -(z + 0.0625f * step) : (z - 1 + 0.0625f * step);
      if (std::abs(target) < 0.5f) continue;
      ids[nc++] = target / vmax;
    }
  }
  // Lane sums transposed ([lane][candidate]) so that the reductions run across candidates in
  // vectors (each candidate still adds its lanes 0..7 in order, in double).
  alignas(32) float sxq8[8][kMaxCand], sqq8[8][kMaxCand];
  for (int c = 0; c < nc; ++c) {
    const V8 id = V8{} + ids[c], lo8 = V8{} + lo, hi8 = V8{} + hi;
    V8 a8 = {}, b8 = {};
    for (int i = 0; i < n8; i += 8) {
      const V8 v = round_clamp8(load8(x + i) * id, lo8, hi8);
      a8 += load8(wx + i) * v;
      b8 += load8(w + i) * v * v;
    }
    for (int j = 0; j < 8; ++j) {
      sxq8[j][c] = a8[j];
      sqq8[j][c] = b8[j];
    }
  }
  alignas(32) double sxqs[kMaxCand] = {}, sqqs[kMaxCand] = {};
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < kMaxCand; ++c) {
      sxqs[c] += sxq8[j][c];
      sqqs[c] += sqq8[j][c];
    }
  }
  double best_err = INFINITY;
  float best_d = 0;
  for (int c = 0; c < nc; ++c) {
    const double sxq = sxqs[c], sqq = sqqs[c];
    if (sqq <= 0) continue;
    const float d = round_f16(static_cast<float>(sxq / sqq));
    // sum w (x - d v)^2, expanded: no second pass over the group.
    const double err = sxx - 2.0 * d * sxq + double(d) * d * sqq;
    if (err < best_err) {
      best_err = err;
      best_d = d;
    }
  }
  return best_d;
}

// Σ w and Σ w x over the group padded to 8 (the padding's weights are 0), in order, in double:
// both asymmetric layouts' least-squares sums.
inline __attribute__((always_inline)) void asym_weight_sums(const float* x, const float* w, int n, double* sw, double* sx) {
  const int n8 = (n + 7) & ~7;
  for (int i = 0; i < n8; ++i) {
    *sw += w[i];
    *sx += double(w[i]) * x[i];
  }
}

// Asymmetric: w = d * q + m. Starts from the min/max range and shrinks it (three anchors),
// refits (d, m) by weighted least squares for each assignment, rounds them to f16, re-assigns
// and measures; keeps the best. Same group layout as search_sym; in phases, each over all
// candidates: sums, (d, m), the error pass, then the choice in candidate order. Returns d
// (0 for a constant group), writes m.
inline __attribute__((always_inline)) float search_asym8(int bits, const float* x, const float* w, int n, float* m_out) {
  const int qmax = (1 << bits) - 1;
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (hi == lo) {
    *m_out = round_f16(lo);
    return 0;
  }
  const int n8 = (n + 7) & ~7;
  const float fq = static_cast<float>(qmax);
  double sw = 0, sx = 0;
  asym_weight_sums(x, w, n, &sw, &sx);
  constexpr int kMaxCand = 39;
  float ca[kMaxCand], cb[kMaxCand], cid[kMaxCand];
  const int nc = asym_ranges(lo, hi, ca, cb);
  for (int c = 0; c < nc; ++c) cid[c] = qmax / (cb[c] - ca[c]);
  alignas(32) float sq8[8][kMaxCand], sqq8[8][kMaxCand], sxq8[8][kMaxCand];
  for (int c = 0; c < nc; ++c) {
    const V8 a = V8{} + ca[c], id = V8{} + cid[c], zero = {}, fq8 = V8{} + fq;
    V8 p8 = {}, r8 = {}, t8 = {};
    for (int i = 0; i < n8; i += 8) {
      const V8 xv = load8(x + i);
      const V8 qi = round_clamp8((xv - a) * id, zero, fq8), wq = load8(w + i) * qi;
      p8 += wq;
      r8 += wq * qi;
      t8 += wq * xv;
    }
    for (int j = 0; j < 8; ++j) {
      sq8[j][c] = p8[j];
      sqq8[j][c] = r8[j];
      sxq8[j][c] = t8[j];
    }
  }
  alignas(32) double sqs[kMaxCand] = {}, sqqs[kMaxCand] = {}, sxqs[kMaxCand] = {};
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < kMaxCand; ++c) {
      sqs[c] += sq8[j][c];
      sqqs[c] += sqq8[j][c];
      sxqs[c] += sxq8[j][c];
    }
  }
  float cd[kMaxCand], cm[kMaxCand];
  for (int c = 0; c < nc; ++c) {
    const double sq = sqs[c], sqq = sqqs[c], sxq = sxqs[c];
    const double det = sw * sqq - sq * sq;
    float d, m;
    if (det > 1e-20 * sw * sqq) {
      d = static_cast<float>((sw * sxq - sq * sx) / det);
      m = static_cast<float>((sqq * sx - sq * sxq) / det);
    } else {
      d = (cb[c] - ca[c]) / qmax;
      m = ca[c];
    }
    cd[c] = round_f16(d);
    cm[c] = round_f16(m);
  }
  alignas(32) float err8[8][kMaxCand] = {};
  for (int c = 0; c < nc; ++c) {
    const float d = cd[c], m = cm[c];
    if (d <= 0) continue;
    // Re-assign with the rounded parameters and measure.
    const V8 d8 = V8{} + d, m8 = V8{} + m, zero = {}, fq8 = V8{} + fq;
    V8 e8 = {};
    for (int i = 0; i < n8; i += 8) {
      const V8 xv = load8(x + i);
      const V8 l = round_clamp8((xv - m8) / d8, zero, fq8);
      const V8 e = xv - (d8 * l + m8);
      e8 += load8(w + i) * e * e;
    }
    for (int j = 0; j < 8; ++j) err8[j][c] = e8[j];
  }
  alignas(32) double errs[kMaxCand] = {};
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < kMaxCand; ++c) errs[c] += err8[j][c];
  }
  return choose_asym(nc, cd, cm, errs, lo, m_out);
}


// search_sym8's result with 16 candidates per vector (see the top of this section).
inline __attribute__((always_inline)) float search_sym16(int bits, const float* x, const float* w, int n) {
  using F = Lanes<16>::F;
  const int z = 1 << (bits - 1), qmax = (1 << bits) - 1;
  // The first value of the largest magnitude (NaN never wins): the largest |x| lane-wise, then
  // its first index (x holds G >= 32 values, zero past n).
  float vmax = 0;
  {
    using U = Lanes<16>::U;
    F amax = {};
    for (int i = 0; i < n; i += 16) {
      U u = loadv<U>(x + i) & 0x7fffffffu;
      F a;
      std::memcpy(&a, &u, sizeof(a));
      amax = a > amax ? a : amax;
    }
    float M = 0;
    for (int l = 0; l < 16; ++l) M = amax[l] > M ? amax[l] : M;
    for (int i = 0; i < n; ++i) {
      if (std::abs(x[i]) == M) {
        vmax = M == 0 ? 0.0f : x[i];
        break;
      }
    }
  }
  if (vmax == 0) return 0;
  const int n8 = (n + 7) & ~7;
  const float lo = static_cast<float>(-z), hi = static_cast<float>(qmax - z);
  float wx[128];
  double sxx = 0;
  for (int i = 0; i < n8; ++i) {
    wx[i] = w[i] * x[i];
    sxx += double(wx[i]) * x[i];
  }
  constexpr int kMaxCand = 34, NV = (kMaxCand + 15) / 16;
  alignas(64) float targets[NV * 16] = {};
  int nc = 0;
  for (int step = -8; step <= 8; ++step) {
    for (int side = 0; side < 2; ++side) {
      const float target = side == 0 ? -(z + 0.0625f * step) : (z - 1 + 0.0625f * step);
      if (std::abs(target) < 0.5f) continue;
      targets[nc++] = target;
    }
  }
  // The lane chains in float, stored per lane j ([j][candidate]); their double sums and the
  // refits in plain loops over the candidates (the compiler vectorizes them).
  constexpr int C = NV * 16;
  alignas(64) float pa[8][C], pb[8][C];
  const F lov = F{} + lo, hiv = F{} + hi;
  const int nv = (nc + 15) / 16;
  for (int v = 0; v < nv; ++v) {
    const F id = loadv<F>(targets + v * 16) / vmax;
    for (int j = 0; j < 8; ++j) {
      F a = {}, b = {};
      for (int i = j; i < n8; i += 8) {
        const F t = round_clampv(id * x[i], lov, hiv);
        a += wx[i] * t;
        b += w[i] * t * t;
      }
      std::memcpy(pa[j] + v * 16, &a, sizeof(a));
      std::memcpy(pb[j] + v * 16, &b, sizeof(b));
    }
  }
  const int nl = nv * 16;
  alignas(64) double sxqs[C] = {}, sqqs[C] = {}, errs[C];
  alignas(64) float ds[C];
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < nl; ++c) {
      sxqs[c] += pa[j][c];
      sqqs[c] += pb[j][c];
    }
  }
  for (int c = 0; c < nl; ++c) ds[c] = static_cast<float>(sxqs[c] / sqqs[c]);
  for (int v = 0; v < nv; ++v) {
    const F d = round_f16v<16>(loadv<F>(ds + v * 16));
    std::memcpy(ds + v * 16, &d, sizeof(d));
  }
  // sum w (x - d v)^2, expanded: no second pass over the group.
  for (int c = 0; c < nl; ++c) errs[c] = sxx - 2.0 * ds[c] * sxqs[c] + double(ds[c]) * ds[c] * sqqs[c];
  double best_err = INFINITY;
  float best_d = 0;
  for (int c = 0; c < nc; ++c) {
    if (sqqs[c] <= 0) continue;
    if (errs[c] < best_err) {
      best_err = errs[c];
      best_d = ds[c];
    }
  }
  return best_d;
}

// search_asym8's result with 16 candidates per vector.
inline __attribute__((always_inline)) float search_asym16(int bits, const float* x, const float* w, int n, float* m_out) {
  using F = Lanes<16>::F;
  const int qmax = (1 << bits) - 1;
  // The range lane-wise (each lane keeps its first of equal values), then across lanes; a zero
  // end (which of +0 and -0 came first) and a NaN x[0] take the scalar scan.
  float lo = x[0], hi = x[0];
  {
    F lv = F{} + x[0], hv = lv;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      const F xv = loadv<F>(x + i);
      lv = xv < lv ? xv : lv;
      hv = xv > hv ? xv : hv;
    }
    for (; i < n; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    for (int l = 0; l < 16; ++l) {
      lo = std::min(lo, lv[l]);
      hi = std::max(hi, hv[l]);
    }
    if (lo == 0 || hi == 0 || x[0] != x[0]) {
      lo = hi = x[0];
      for (int k = 1; k < n; ++k) {
        lo = std::min(lo, x[k]);
        hi = std::max(hi, x[k]);
      }
    }
  }
  if (hi == lo) {
    *m_out = round_f16(lo);
    return 0;
  }
  const int n8 = (n + 7) & ~7;
  const float fq = static_cast<float>(qmax);
  double sw = 0, sx = 0;
  asym_weight_sums(x, w, n, &sw, &sx);
  constexpr int kMaxCand = 39, NV = (kMaxCand + 15) / 16;
  alignas(64) float ca[NV * 16] = {}, cb[NV * 16] = {};
  const int nc = asym_ranges(lo, hi, ca, cb);
  // As search_sym16: float lane chains per lane j, then plain loops over the candidates.
  constexpr int C = NV * 16;
  const F zero = {}, fqv = F{} + fq;
  const int nv = (nc + 15) / 16, nl = nv * 16;
  alignas(64) float pp[8][C], pr[8][C], pt[8][C];
  for (int v = 0; v < nv; ++v) {
    const F a = loadv<F>(ca + v * 16), b = loadv<F>(cb + v * 16), id = fq / (b - a);
    for (int j = 0; j < 8; ++j) {
      F p = {}, r = {}, t = {};
      for (int i = j; i < n8; i += 8) {
        const F qi = round_clampv((x[i] - a) * id, zero, fqv), wq = w[i] * qi;
        p += wq;
        r += wq * qi;
        t += wq * x[i];
      }
      std::memcpy(pp[j] + v * 16, &p, sizeof(p));
      std::memcpy(pr[j] + v * 16, &r, sizeof(r));
      std::memcpy(pt[j] + v * 16, &t, sizeof(t));
    }
  }
  alignas(64) double sqs[C] = {}, sqqs[C] = {}, sxqs[C] = {}, errs[C] = {};
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < nl; ++c) {
      sqs[c] += pp[j][c];
      sqqs[c] += pr[j][c];
      sxqs[c] += pt[j][c];
    }
  }
  // (d, m) by weighted least squares where the system is well conditioned, else the range.
  alignas(64) float cd[C], cm[C];
  for (int c = 0; c < nl; ++c) {
    const double sq = sqs[c], sqq = sqqs[c], sxq = sxqs[c];
    const double det = sw * sqq - sq * sq;
    const bool ok = det > 1e-20 * sw * sqq;
    const float dl = static_cast<float>((sw * sxq - sq * sx) / det), ml = static_cast<float>((sqq * sx - sq * sxq) / det);
    cd[c] = ok ? dl : (cb[c] - ca[c]) / qmax;
    cm[c] = ok ? ml : ca[c];
  }
  for (int v = 0; v < nv; ++v) {
    const F d = round_f16v<16>(loadv<F>(cd + v * 16)), m = round_f16v<16>(loadv<F>(cm + v * 16));
    std::memcpy(cd + v * 16, &d, sizeof(d));
    std::memcpy(cm + v * 16, &m, sizeof(m));
    // Re-assign with the rounded parameters and measure (lanes with d <= 0 are not chosen).
    for (int j = 0; j < 8; ++j) {
      F e2 = {};
      for (int i = j; i < n8; i += 8) {
        const F l = round_clampv((x[i] - m) / d, zero, fqv);
        const F e = x[i] - (d * l + m);
        e2 += w[i] * e * e;
      }
      std::memcpy(pp[j] + v * 16, &e2, sizeof(e2));
    }
  }
  for (int j = 0; j < 8; ++j) {
    for (int c = 0; c < nl; ++c) errs[c] += pp[j][c];
  }
  return choose_asym(nc, cd, cm, errs, lo, m_out);
}

// Codebook: fits 2^b int8 levels to the row's values normalized by each group's absolute
// maximum (weighted 1-D k-means over a 2048-bin histogram: 30 Lloyd iterations from uniformly
// spaced levels, each assigning every non-empty bin's mean to its nearest level, then sorting),
// then per group starts from d = amax / 127 and refits d by least squares on the nearest-level
// assignment (4 tries), keeping the best. The Lloyd iterations walk only the non-empty bins (at
// most k of 2048) and stop at a fixed point (an iteration is a function of the levels alone);
// the nearest-level search runs level-major over the group (ties: the lowest level). Writes
// d[nb], cb[2^b] and, when q is not null, the group's indices (nb * G, padding included).
inline __attribute__((always_inline)) void fit_codebook_row(int G, int bits, int64_t nb, const float* x, int64_t k,
                                                            const float* imp, float* d_out, int8_t* cb_out, uint8_t* q_out) {
  const int L = 1 << bits;
  constexpr int kBins = 2048;
  std::vector<double> hist_w(kBins, 0.0), hist_wx(kBins, 0.0);
  std::vector<float> amax(static_cast<size_t>(nb), 0.0f);
  for (int64_t g = 0; g < nb; ++g) {
    for (int64_t i = g * G; i < std::min<int64_t>(k, (g + 1) * G); ++i) amax[g] = std::max(amax[g], std::abs(x[i]));
    if (amax[g] == 0) continue;
    for (int64_t i = g * G; i < std::min<int64_t>(k, (g + 1) * G); ++i) {
      const double y = x[i] / amax[g];  // [-1, 1]
      const int bin = std::clamp(static_cast<int>((y + 1.0) * 0.5 * kBins), 0, kBins - 1);
      const double wi = (imp ? imp[i] : 1.0) * double(amax[g]) * amax[g];
      hist_w[bin] += wi;
      hist_wx[bin] += wi * y;
    }
  }
  // The non-empty bins in order: weight, weighted sum and mean.
  std::vector<double> bw, bwx, by;
  for (int b = 0; b < kBins; ++b) {
    if (hist_w[b] == 0) continue;
    bw.push_back(hist_w[b]);
    bwx.push_back(hist_wx[b]);
    by.push_back(hist_wx[b] / hist_w[b]);
  }
  const size_t nbins = bw.size();
  double c[16], sw[16], swx[16];
  for (int l = 0; l < L; ++l) c[l] = -1.0 + 2.0 * (l + 0.5) / L;
  for (int it = 0; it < 30; ++it) {
    std::fill(sw, sw + L, 0.0);
    std::fill(swx, swx + L, 0.0);
    // sw[l], swx[l] of the current level live in registers (aw, awx) while consecutive bins
    // stay on it: the same additions in the same order, without a store-to-load chain.
    int l = 0;
    double aw = 0, awx = 0;
    for (size_t b = 0; b < nbins; ++b) {
      const double y = by[b];
      int nl = l;
      while (nl + 1 < L && std::abs(y - c[nl + 1]) < std::abs(y - c[nl])) ++nl;
      while (nl > 0 && std::abs(y - c[nl - 1]) < std::abs(y - c[nl])) --nl;
      if (nl != l) {
        sw[l] = aw;
        swx[l] = awx;
        l = nl;
        aw = sw[l];
        awx = swx[l];
      }
      aw += bw[b];
      awx += bwx[b];
    }
    sw[l] = aw;
    swx[l] = awx;
    double prev[16];
    std::copy(c, c + L, prev);
    for (int j = 0; j < L; ++j) {
      if (sw[j] > 0) c[j] = swx[j] / sw[j];
    }
    std::sort(c, c + L);
    if (std::equal(c, c + L, prev)) break;
  }
  int8_t cb[16] = {};
  for (int l = 0; l < L; ++l) cb[l] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(c[l] * 127.0)), -127, 127));
  std::memcpy(cb_out, cb, static_cast<size_t>(L));
  float cbf[16];
  for (int l = 0; l < L; ++l) cbf[l] = static_cast<float>(cb[l]);
  float xg[128], wg[128], be[128];
  int32_t bi[128];
  for (int64_t g = 0; g < nb; ++g) {
    for (int i = 0; i < G; ++i) {
      const int64_t e = g * G + i;
      xg[i] = e < k ? x[e] : 0.0f;
      wg[i] = e < k ? (imp ? imp[e] : 1.0f) : 0.0f;
    }
    uint8_t* qg = q_out ? q_out + g * G : nullptr;
    if (qg) std::memset(qg, 0, static_cast<size_t>(G));
    float best_d = 0;
    double best_err = INFINITY;
    if (amax[g] > 0) {
      float d = round_f16(amax[g] / 127.0f);
      for (int it = 0; it < 4 && d != 0; ++it) {
        // Nearest level per element: |x - d * cb[l]|, the first l of the least (NaN: level 0).
        for (int i0 = 0; i0 < G; i0 += 8) {
          const V8 xv = load8(xg + i0);
          V8 bev = V8{} + INFINITY;
          V8i biv = {};
          for (int l = 0; l < L; ++l) {
            V8 e = xv - (d * cbf[l]);
            e = e < 0 ? -e : e;  // |e| (a -0 stays -0: equal to 0 in the compare and the square)
            const auto better = e < bev;
            bev = better ? e : bev;
            biv = better ? V8i{} + l : biv;
          }
          std::memcpy(be + i0, &bev, sizeof(bev));
          std::memcpy(bi + i0, &biv, sizeof(biv));
        }
        double err = 0;
        for (int i = 0; i < G; ++i) err += double(wg[i]) * be[i] * be[i];
        if (err < best_err) {
          best_err = err;
          best_d = d;
          if (qg) {
            for (int i = 0; i < G; ++i) qg[i] = static_cast<uint8_t>(bi[i]);
          }
        }
        double sxc = 0, scc = 0;
        for (int i = 0; i < G; ++i) {
          sxc += double(wg[i]) * xg[i] * cb[bi[i]];
          scc += double(wg[i]) * cb[bi[i]] * cb[bi[i]];
        }
        if (scc <= 0) break;
        d = round_f16(static_cast<float>(sxc / scc));
      }
    }
    d_out[g] = best_d;
  }
}

// The two-level search's errors of NV vectors of W candidates (d, m): the level of x is
// asymmetric d * round((x - m) / d) + m (m where d <= 0), symmetric d * round(x / d) (0 where
// d = 0); each lane sums w (x - level)² in double over the group's elements in order. The
// elements run in the outer loop, so the NV vectors' chains overlap.
template <int W, int NV, bool Asym>
inline __attribute__((always_inline)) void two_level_errors(const float* xg, int n, const float* imp, const float* cd,
                                                            const float* cm, typename Lanes<W>::F lov,
                                                            typename Lanes<W>::F hiv, double* errs) {
  using F = typename Lanes<W>::F;
  using D = typename Lanes<W>::D;
  for (int v = 0; v < NV; ++v) {
    const F dg = loadv<F>(cd + v * W), mg = loadv<F>(cm + v * W);
    D e0 = {}, e1 = {};
    for (int i = 0; i < n; ++i) {
      F l;
      if constexpr (Asym) {
        l = dg * round_clampv((xg[i] - mg) / dg, lov, hiv) + mg;
      } else {
        l = dg * round_clampv(xg[i] / dg, lov, hiv);
      }
      const double xd = xg[i], wi = imp ? double(imp[i]) : 1.0;
      const D r0 = xd - dlo<W>(l), r1 = xd - dhi<W>(l);
      e0 += wi * r0 * r0;
      e1 += wi * r1 * r1;
    }
    std::memcpy(errs + v * W, &e0, sizeof(e0));
    std::memcpy(errs + v * W + W / 2, &e1, sizeof(e1));
  }
  // The candidates whose level is a constant (m where d <= 0, asymmetric; 0 where d = 0): their
  // sums again with that level.
  for (int c = 0; c < NV * W; ++c) {
    if (Asym ? !(cd[c] > 0) : !(cd[c] != 0)) {
      const float l = Asym ? cm[c] : 0.0f;
      double e = 0;
      for (int i = 0; i < n; ++i) {
        const double r = double(xg[i]) - l;
        e += (imp ? double(imp[i]) : 1.0) * r * r;
      }
      errs[c] = e;
    }
  }
}

// Two-level formats: the group scales (offsets) become codes under a row scale. From the
// one-level fit of the same kind (d*, m* per group: the searches above), D = max |d*| / 127
// (asymmetric: max d* / 255) and M = max |m*| / 127 (f32), then each group searches its codes
// around the nearest ones, s ∈ s0 ± 3 (asymmetric: s0 ± 2 × o0 ± 2), with round-to-nearest levels and the weighted
// squared error over the group (the first of equal errors, in candidate order), and d, m are
// replaced by D * s, M * o. rs receives D and M.
// The error of a candidate is Σᵢ wᵢ (xᵢ − levelᵢ)² in double, in element order; the candidates
// run in vector lanes (W floats, W doubles), each lane one candidate's chain.
template <int W>
inline __attribute__((always_inline)) void fit_two_level(const QTypeInfo& info, const float* x, int64_t k,
                                                         const float* imp, float* d, float* m, float* rs) {
  using F = typename Lanes<W>::F;
  const int G = info.block_elems, bits = info.bits, z = 1 << (bits - 1), qmax = (1 << bits) - 1;
  const bool asym = info.kind == QKind::kAsymmetric;
  const int64_t nb = (k + G - 1) / G;
  // Symmetric scales keep their sign (the searches map a group's largest magnitude to -z or
  // z - 1): i8 codes; asymmetric ones are positive: u8.
  const int smin = asym ? 0 : -127, smax = asym ? 255 : 127;
  float dmax = 0, mmax = 0;
  for (int64_t g = 0; g < nb; ++g) {
    dmax = std::max(dmax, std::abs(d[g]));
    if (asym) mmax = std::max(mmax, std::abs(m[g]));
  }
  const float Dr = dmax / static_cast<float>(smax), Mr = asym ? mmax / 127.0f : 0.0f;
  rs[0] = Dr;
  rs[1] = Mr;
  constexpr int kMaxCand = 25, NV = (kMaxCand + W - 1) / W;
  const F lov = F{} + (asym ? 0.0f : float(-z)), hiv = F{} + (asym ? float(qmax) : float(qmax - z));
  const typename Lanes<8>::F lov8 = Lanes<8>::F{} + float(-z), hiv8 = Lanes<8>::F{} + float(qmax - z);
  for (int64_t g = 0; g < nb; ++g) {
    const int n = static_cast<int>(std::min<int64_t>(G, k - g * G));
    const float* xg = x + g * G;
    const int s0 = Dr > 0 ? round_clamp(d[g] / Dr, smin, smax) : 0;
    const int o0 = Mr > 0 ? round_clamp(m[g] / Mr, -127, 127) : 0;
    const int sr = asym ? 2 : 3, orr = asym ? 2 : 0;
    alignas(64) float cdg[NV * W] = {}, cmg[NV * W] = {};
    int cs[kMaxCand], co[kMaxCand], nc = 0;
    for (int s = std::max(smin, s0 - sr); s <= std::min(smax, s0 + sr); ++s) {
      if (Dr == 0 && s != 0) continue;
      for (int o = std::max(-127, o0 - orr); o <= std::min(127, o0 + orr); ++o) {
        if (Mr == 0 && o != 0) continue;
        cdg[nc] = Dr * static_cast<float>(s);
        cmg[nc] = Mr * static_cast<float>(o);
        cs[nc] = s;
        co[nc] = o;
        ++nc;
      }
    }
    alignas(64) double errs[NV * W];
    const float* ig = imp ? imp + g * G : nullptr;
    if (asym) {
      // 25 candidates (s0 ± 2 × o0 ± 2) or fewer at the ends of the code range.
      if (nc <= W) {
        two_level_errors<W, 1, true>(xg, n, ig, cdg, cmg, lov, hiv, errs);
      } else {
        two_level_errors<W, NV, true>(xg, n, ig, cdg, cmg, lov, hiv, errs);
      }
    } else {
      // At most 7 candidates (s0 ± 3): 8 lanes.
      two_level_errors<8, 1, false>(xg, n, ig, cdg, cmg, lov8, hiv8, errs);
    }
    double best = INFINITY;
    int bs = s0, bo = o0;
    for (int c = 0; c < nc; ++c) {
      if (errs[c] < best) {
        best = errs[c];
        bs = cs[c];
        bo = co[c];
      }
    }
    d[g] = Dr * static_cast<float>(bs);
    if (asym) m[g] = Mr * static_cast<float>(bo);
  }
}

// A row's group parameters (d, m per group, f16-rounded; the codebook; two-level: the codes'
// d, m and the row scales rs) and, when q is not null, its quant indices (nb * G: padding past
// k is z = 2^(b-1) (symmetric), 0 (asymmetric), the best assignment's (codebook); two-level:
// the one-level fit's, which quantize_row re-assigns). Each group is zero-padded to G with zero
// weight past k.
template <int W>
inline __attribute__((always_inline)) void fit_row_body(const QTypeInfo& info, const float* x, int64_t k,
                                                        const float* imp, float* d, float* m, int8_t* cb, uint8_t* q,
                                                        float* rs) {
  const int G = info.block_elems, bits = info.bits;
  const int64_t nb = (k + G - 1) / G;
  if (info.kind == QKind::kCodebook) {
    fit_codebook_row(G, bits, nb, x, k, imp, d, cb, q);
    return;
  }
  const int z = 1 << (bits - 1), qmax = (1 << bits) - 1;
  float xg[128], wg[128];
  for (int64_t g = 0; g < nb; ++g) {
    for (int i = 0; i < G; ++i) {
      const int64_t e = g * G + i;
      xg[i] = e < k ? x[e] : 0.0f;
      wg[i] = e < k ? (imp ? imp[e] : 1.0f) : 0.0f;
    }
    const int n = static_cast<int>(std::min<int64_t>(G, k - g * G));
    uint8_t* qg = q ? q + g * G : nullptr;
    if (info.kind == QKind::kSymmetric) {
      float dg;
      if constexpr (W == 16) {
        dg = search_sym16(bits, xg, wg, n);
      } else {
        dg = search_sym8(bits, xg, wg, n);
      }
      d[g] = dg;
      if (!qg) continue;
      const float id = dg != 0 ? 1.0f / dg : 0.0f;
      for (int i = 0; i < G; ++i) {
        qg[i] = static_cast<uint8_t>(i < n && dg != 0 ? round_clamp(xg[i] * id, -z, qmax - z) + z : z);
      }
    } else {
      float mg, dg;
      if constexpr (W == 16) {
        dg = search_asym16(bits, xg, wg, n, &mg);
      } else {
        dg = search_asym8(bits, xg, wg, n, &mg);
      }
      d[g] = dg;
      m[g] = mg;
      if (!qg) continue;
      for (int i = 0; i < G; ++i) {
        qg[i] = static_cast<uint8_t>(i < n && dg > 0 ? round_clamp((xg[i] - mg) / dg, 0, qmax) : 0);
      }
    }
  }
  if (info.two_level) fit_two_level<W>(info, x, k, imp, d, m, rs);
}

void fit_row_base(const QTypeInfo& info, const float* x, int64_t k, const float* imp, float* d, float* m, int8_t* cb,
                  uint8_t* q, float* rs) {
  fit_row_body<8>(info, x, k, imp, d, m, cb, q, rs);
}
#if defined(__x86_64__) && defined(__GNUC__)
// The same code for AVX2 and AVX-512 (16 candidates per zmm in the searches; no FMA: see the
// searches' section). Measured, ns per weight, k = 2048 with importance, one thread, Zen 5,
// best of 15 (the AVX2 copy before this layout -> this copy): q8_g32 17.7 -> 14.9, q4_g128 9.3
// -> 6.8, q4a_g32 40.2 -> 25.4, q2a_g64 29.3 -> 18.8, q4k_g32 27.1 -> 20.7, q4ak_g32 71.9 ->
// 48.4. Whole runs: the 4-layer TinyLlama shape, `quantize --bpw 4`, 238.4 -> 223.0 s, the
// same bytes.
__attribute__((target("avx2"))) void fit_row_avx2(const QTypeInfo& info, const float* x, int64_t k, const float* imp,
                                                  float* d, float* m, int8_t* cb, uint8_t* q, float* rs) {
  fit_row_body<8>(info, x, k, imp, d, m, cb, q, rs);
}
__attribute__((target("avx2,avx512f,avx512vl,avx512dq,avx512bw"))) void fit_row_avx512(
    const QTypeInfo& info, const float* x, int64_t k, const float* imp, float* d, float* m, int8_t* cb, uint8_t* q,
    float* rs) {
  fit_row_body<16>(info, x, k, imp, d, m, cb, q, rs);
}
#endif

}  // namespace

// The copy for an ISA: AVX-512, AVX2, or the baseline one (ref; NEON: the baseline copy's
// vectors are NEON registers). Null where this build or CPU has no such copy.
FitRowFn fit_row_for(Isa isa) {
  if (!isa_available(isa)) return nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == Isa::kAvx512) return &fit_row_avx512;
  if (isa == Isa::kAvx2) return &fit_row_avx2;
#endif
  return isa == Isa::kRef || isa == Isa::kNeon ? &fit_row_base : nullptr;
}

// The copy for the runtime's ISA (selected_isa(), resolved once: MXLM_ISA=ref selects the
// baseline copy). The copies write the same bits, so the choice is speed only: an MXLM_ISA that
// selected_isa() rejects (it throws; kernels do not) leaves the choice to the CPU.
FitRowFn fit_row_fn() {
  static const FitRowFn fn = [] {
    Isa isa = Isa::kRef;
    try {
      isa = selected_isa();
    } catch (const Error&) {
      const std::vector<Isa> all = available_isas();
      isa = all.empty() ? Isa::kRef : all.back();
    }
    const FitRowFn f = fit_row_for(isa);
    return f ? f : &fit_row_base;
  }();
  return fn;
}

}  // namespace mxlm::detail
