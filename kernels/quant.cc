// Reference quantizers, dequantizers, activation quantization and GEMM (the spec of every
// format), plus the (QType, ISA) kernel registry.
//
// The quantizer is the one implementation of each format's fit: quantize_row (parameters and
// quant indices) and quantize_row_params (parameters only: the GPTQ encoder, model/encode.cc)
// run the same code. Its searches keep 8 float partial sums per candidate as 8-lane vectors and
// run all candidates' sums before their double reductions (see search_sym); the codebook fit
// walks only the non-empty histogram bins and stops at the k-means fixed point. The row fit is
// compiled twice on x86-64, baseline and AVX2 (no FMA: both round alike, bit-identical), and
// the runtime's selected ISA picks the copy. Measured, ns per weight at k = 512 with importance
// (one thread, 2-core shared VM, load ~1.7), quantize_row with scalar-lane searches and a
// 30-iteration Lloyd walk over all 2048 bins → this layout (AVX2 copy; baseline copy): q4_g32
// 62 → 22 (61), q4a_g32 115 → 44 (152), nu3_g32 207 → 50 (114), q4_g128 42 → 12 (35), q2a_g64
// 96 → 33 (120), nu4_g32 234 → 53 (144). The bytes did not change (every format, k in {32, 172,
// 512, 1280}, with and without importance; x86-64 both copies, and AArch64).
#include "kernels/quant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "base/error.h"
#include "kernels/round.h"

namespace mxlm {

// ---- bit planes -----------------------------------------------------------------------------

namespace {

void pack_plane(int pbits, int group, const uint8_t* v, uint8_t* dst) {
  const int per_byte = 8 / pbits, stride = group / per_byte;
  std::memset(dst, 0, static_cast<size_t>(stride));
  if (pbits == 1) {
    for (int e = 0; e < group; ++e) dst[e / 8] |= static_cast<uint8_t>((v[e] & 1) << (e % 8));
    return;
  }
  const int mask = (1 << pbits) - 1;
  for (int e = 0; e < group; ++e) dst[e % stride] |= static_cast<uint8_t>((v[e] & mask) << (pbits * (e / stride)));
}

void unpack_plane(int pbits, int group, const uint8_t* src, uint8_t* v, int shift_into) {
  const int per_byte = 8 / pbits, stride = group / per_byte;
  if (pbits == 1) {
    for (int e = 0; e < group; ++e) v[e] |= static_cast<uint8_t>(((src[e / 8] >> (e % 8)) & 1) << shift_into);
    return;
  }
  const int mask = (1 << pbits) - 1;
  for (int e = 0; e < group; ++e) v[e] |= static_cast<uint8_t>(((src[e % stride] >> (pbits * (e / stride))) & mask) << shift_into);
}

// The planes of a b-bit format: (plane bits, value shift) from low to high.
struct Plane {
  int bits, shift;
};
int planes_of(int bits, Plane out[2]) {
  switch (bits) {
    case 8: out[0] = {8, 0}; return 1;
    case 4: out[0] = {4, 0}; return 1;
    case 2: out[0] = {2, 0}; return 1;
    case 6: out[0] = {4, 0}; out[1] = {2, 4}; return 2;
    case 5: out[0] = {4, 0}; out[1] = {1, 4}; return 2;
    case 3: out[0] = {2, 0}; out[1] = {1, 2}; return 2;
  }
  MXLM_ASSERT(!"unsupported bit width");
  return 0;
}

}  // namespace

void pack_group(int bits, int group, const uint8_t* q, uint8_t* dst) {
  if (bits == 8) {
    std::memcpy(dst, q, static_cast<size_t>(group));
    return;
  }
  Plane planes[2];
  const int n = planes_of(bits, planes);
  uint8_t part[128];
  for (int p = 0; p < n; ++p) {
    for (int e = 0; e < group; ++e) part[e] = static_cast<uint8_t>(q[e] >> planes[p].shift);
    pack_plane(planes[p].bits, group, part, dst);
    dst += group * planes[p].bits / 8;
  }
}

void unpack_group(int bits, int group, const uint8_t* src, uint8_t* q) {
  if (bits == 8) {
    std::memcpy(q, src, static_cast<size_t>(group));
    return;
  }
  std::memset(q, 0, static_cast<size_t>(group));
  Plane planes[2];
  const int n = planes_of(bits, planes);
  for (int p = 0; p < n; ++p) {
    unpack_plane(planes[p].bits, group, src, q, planes[p].shift);
    src += group * planes[p].bits / 8;
  }
}

// ---- row views ------------------------------------------------------------------------------

namespace {

// Pointers into one quantized row.
struct RowView {
  const QTypeInfo* info;
  int64_t nb;
  uint8_t* codebook;  // int8[2^b] or null
  uint8_t* d;         // f16[nb]; two-level: u8[nb] codes
  uint8_t* m;         // f16[nb] or null; two-level: i8[nb] codes
  uint8_t* quants;    // nb * qbytes
  int qbytes;
  uint8_t* rs;        // two-level: the f32 row scales D (and M); else null
};

RowView row_view(QType t, int64_t k, const uint8_t* row) {
  const QTypeInfo& info = qtype_info(t);
  const QRowLayout L = qrow_layout(t, k);
  auto* p = const_cast<uint8_t*>(row);
  RowView v{};
  v.info = &info;
  v.nb = L.nb;
  v.codebook = info.kind == QKind::kCodebook ? p : nullptr;
  v.rs = info.two_level ? p : nullptr;
  v.d = p + L.d_off;
  v.m = info.kind == QKind::kAsymmetric ? p + L.m_off : nullptr;
  v.quants = p + L.q_off;
  v.qbytes = L.qbytes;
  return v;
}

float load_f32(const uint8_t* p, int64_t i) {
  float f;
  std::memcpy(&f, p + 4 * i, 4);
  return f;
}

float load_f16(const uint8_t* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return f16_to_f32(h);
}
void store_f16(uint8_t* p, int64_t i, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p + 2 * i, &h, 2);
}

// A group's scale and offset as dequantization computes them.
float group_d(const RowView& v, int64_t g) {
  if (!v.rs) return load_f16(v.d, g);
  // Symmetric: i8 codes; asymmetric: u8.
  const int s = v.m ? int(v.d[g]) : int(static_cast<int8_t>(v.d[g]));
  return load_f32(v.rs, 0) * static_cast<float>(s);
}
float group_m(const RowView& v, int64_t g) {
  if (!v.m) return 0.0f;
  return v.rs ? load_f32(v.rs, 1) * static_cast<float>(static_cast<int8_t>(v.m[g])) : load_f16(v.m, g);
}

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

// The searches' sums run in 8 independent float lanes (V8, GCC vector extension: one ymm in the
// AVX2 copy below, two xmm or NEON registers in the baseline one): the spec is "lane j sums the
// elements i ≡ j (mod 8) in order, then lanes 0..7 are added in double". Lane-wise IEEE
// operations, so the copies round alike on x86-64 (the AVX2 copy is compiled without FMA, so no
// product is contracted into a sum). The 32-byte helpers are always inlined, so their (AVX vs
// baseline) argument-passing ABI never applies (GCC reports it at the end of the file, hence no
// pop).
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));

inline __attribute__((always_inline)) V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// round_clampf lane-wise.
inline __attribute__((always_inline)) V8 round_clamp8(V8 t, V8 lo, V8 hi) {
  const V8 magic = V8{} + 12582912.0f;
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  return (t + magic) - magic;
}

// Symmetric: w = d * (q - z). Tries scales that map the largest-magnitude value to levels near
// -z (and near z-1), refits d by weighted least squares for each assignment, keeps the best
// (the first of equal errors, in candidate order). x and w hold a whole group (n rounded up to
// 8 values, zero weight past n). Returns d (f16-rounded; 0 for an all-zero group).
// Order of work: all candidates' lane sums first, then their double reductions across
// candidates (the candidates' chains are independent, so they overlap; the same operations in
// the same order per candidate).
inline __attribute__((always_inline)) float search_sym(int bits, const float* x, const float* w, int n) {
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

// Asymmetric: w = d * q + m. Starts from the min/max range and shrinks it (three anchors),
// refits (d, m) by weighted least squares for each assignment, rounds them to f16, re-assigns
// and measures; keeps the best. Same group layout as search_sym; in phases, each over all
// candidates: sums, (d, m), the error pass, then the choice in candidate order. Returns d
// (0 for a constant group), writes m.
inline __attribute__((always_inline)) float search_asym(int bits, const float* x, const float* w, int n, float* m_out) {
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
  for (int i = 0; i < n8; ++i) {
    sw += w[i];
    sx += double(w[i]) * x[i];
  }
  constexpr int kMaxCand = 39;
  float ca[kMaxCand], cb[kMaxCand], cid[kMaxCand];
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
      cid[nc] = qmax / (b - a);
      ++nc;
    }
  }
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

// A row's group parameters (d, m per group, f16-rounded; the codebook) and, when q is not null,
// its quant indices (nb * G: padding past k is z = 2^(b-1) (symmetric), 0 (asymmetric), the
// best assignment's (codebook)). Each group is zero-padded to G with zero weight past k.
inline __attribute__((always_inline)) void fit_row_body(const QTypeInfo& info, const float* x, int64_t k,
                                                        const float* imp, float* d, float* m, int8_t* cb, uint8_t* q) {
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
      const float dg = search_sym(bits, xg, wg, n);
      d[g] = dg;
      if (!qg) continue;
      const float id = dg != 0 ? 1.0f / dg : 0.0f;
      for (int i = 0; i < G; ++i) {
        qg[i] = static_cast<uint8_t>(i < n && dg != 0 ? round_clamp(xg[i] * id, -z, qmax - z) + z : z);
      }
    } else {
      float mg;
      const float dg = search_asym(bits, xg, wg, n, &mg);
      d[g] = dg;
      m[g] = mg;
      if (!qg) continue;
      for (int i = 0; i < G; ++i) {
        qg[i] = static_cast<uint8_t>(i < n && dg > 0 ? round_clamp((xg[i] - mg) / dg, 0, qmax) : 0);
      }
    }
  }
}

using FitRowFn = void (*)(const QTypeInfo&, const float*, int64_t, const float*, float*, float*, int8_t*, uint8_t*);

void fit_row_base(const QTypeInfo& info, const float* x, int64_t k, const float* imp, float* d, float* m, int8_t* cb,
                  uint8_t* q) {
  fit_row_body(info, x, k, imp, d, m, cb, q);
}
#if defined(__x86_64__) && defined(__GNUC__)
// The same code for AVX2 (8-lane vectors in one ymm; no FMA: see V8): 2.3-3.6× faster than the
// baseline copy (two xmm per vector, SSE2 only; numbers at the top of the file).
__attribute__((target("avx2"))) void fit_row_avx2(const QTypeInfo& info, const float* x, int64_t k, const float* imp,
                                                  float* d, float* m, int8_t* cb, uint8_t* q) {
  fit_row_body(info, x, k, imp, d, m, cb, q);
}
#endif

// The copy for the runtime's ISA (selected_isa(), resolved once: MXLM_ISA=ref selects the
// baseline copy): the AVX2 copy on avx2 and avx512, the baseline one elsewhere (NEON: the
// baseline copy's vectors are NEON registers). The copies write the same bits, so the choice is
// speed only: an MXLM_ISA that selected_isa() rejects (it throws; kernels do not) leaves the
// choice to the CPU.
FitRowFn fit_row_fn() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const FitRowFn fn = [] {
    Isa isa = Isa::kRef;
    try {
      isa = selected_isa();
    } catch (const Error&) {
      isa = isa_available(Isa::kAvx2) ? Isa::kAvx2 : Isa::kRef;
    }
    return isa == Isa::kAvx2 || isa == Isa::kAvx512 ? &fit_row_avx2 : &fit_row_base;
  }();
  return fn;
#else
  return &fit_row_base;
#endif
}

// Two-level formats: the group scales (offsets) become codes under a row scale. From the
// one-level fit of the same kind (d*, m* per group: the searches above), D = max |d*| / 127
// (asymmetric: max d* / 255) and M = max |m*| / 127 (f32), then each group searches its codes
// around the nearest ones, s ∈ s0 ± 3 (asymmetric: s0 ± 2 × o0 ± 2), with round-to-nearest levels and the weighted
// squared error over the group (the first of equal errors, in candidate order), and d, m are
// replaced by D * s, M * o. rs receives D and M.
void fit_two_level(const QTypeInfo& info, const float* x, int64_t k, const float* imp, float* d, float* m, float* rs) {
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
  const float D = dmax / static_cast<float>(smax), M = asym ? mmax / 127.0f : 0.0f;
  rs[0] = D;
  rs[1] = M;
  for (int64_t g = 0; g < nb; ++g) {
    const int n = static_cast<int>(std::min<int64_t>(G, k - g * G));
    const float* xg = x + g * G;
    // The levels in one branch-free float loop (it vectorizes), then the weighted sum in double
    // in element order: the same values as one loop, ~2x faster.
    float wq[128];
    auto err_of = [&](float dg, float mg) {
      if (asym) {
        if (dg > 0) {
          for (int i = 0; i < n; ++i) wq[i] = dg * round_clampf((xg[i] - mg) / dg, 0.0f, float(qmax)) + mg;
        } else {
          for (int i = 0; i < n; ++i) wq[i] = mg;
        }
      } else if (dg != 0) {
        for (int i = 0; i < n; ++i) wq[i] = dg * round_clampf(xg[i] / dg, float(-z), float(qmax - z));
      } else {
        for (int i = 0; i < n; ++i) wq[i] = 0.0f;
      }
      double e = 0;
      for (int i = 0; i < n; ++i) {
        const double r = double(xg[i]) - wq[i];
        e += (imp ? double(imp[g * G + i]) : 1.0) * r * r;
      }
      return e;
    };
    const int s0 = D > 0 ? round_clamp(d[g] / D, smin, smax) : 0;
    const int o0 = M > 0 ? round_clamp(m[g] / M, -127, 127) : 0;
    const int sr = asym ? 2 : 3, orr = asym ? 2 : 0;
    double best = INFINITY;
    int bs = s0, bo = o0;
    for (int s = std::max(smin, s0 - sr); s <= std::min(smax, s0 + sr); ++s) {
      if (D == 0 && s != 0) continue;
      for (int o = std::max(-127, o0 - orr); o <= std::min(127, o0 + orr); ++o) {
        if (M == 0 && o != 0) continue;
        const double e = err_of(D * static_cast<float>(s), M * static_cast<float>(o));
        if (e < best) {
          best = e;
          bs = s;
          bo = o;
        }
      }
    }
    d[g] = D * static_cast<float>(bs);
    if (asym) m[g] = M * static_cast<float>(bo);
  }
}

// The levels of one group under its final d, m (quantize_row's rounding): symmetric and
// asymmetric formats (codebook levels come with their fit).
void assign_levels(const QTypeInfo& info, const float* xg, int n, float dg, float mg, uint8_t* qg) {
  const int G = info.block_elems, z = 1 << (info.bits - 1), qmax = (1 << info.bits) - 1;
  if (info.kind == QKind::kSymmetric) {
    const float id = dg != 0 ? 1.0f / dg : 0.0f;
    for (int i = 0; i < G; ++i) qg[i] = static_cast<uint8_t>(i < n && dg != 0 ? round_clamp(xg[i] * id, -z, qmax - z) + z : z);
  } else {
    for (int i = 0; i < G; ++i) qg[i] = static_cast<uint8_t>(i < n && dg > 0 ? round_clamp((xg[i] - mg) / dg, 0, qmax) : 0);
  }
}

}  // namespace

QRowLayout qrow_layout(QType t, int64_t k) {
  const QTypeInfo& info = qtype_info(t);
  MXLM_DASSERT(info.kind != QKind::kFloat && k > 0);
  QRowLayout L{};
  L.nb = (k + info.block_elems - 1) / info.block_elems;
  L.qbytes = info.block_elems * info.bits / 8;
  const size_t code = info.two_level ? 1 : 2;  // bytes per group scale (offset)
  L.d_off = static_cast<size_t>(info.row_prefix_bytes);
  L.m_off = L.d_off + code * static_cast<size_t>(L.nb);
  L.q_off = L.m_off + (info.kind == QKind::kAsymmetric ? code * static_cast<size_t>(L.nb) : 0);
  return L;
}

void quantize_row_params(QType t, const float* x, int64_t k, const float* importance, float* d, float* m,
                         int8_t* codebook, float* row_scales) {
  const QTypeInfo& info = qtype_info(t);
  MXLM_DASSERT(info.kind != QKind::kFloat && k > 0);
  const int64_t nb = (k + info.block_elems - 1) / info.block_elems;
  std::vector<float> m_tmp(info.kind == QKind::kAsymmetric && !m ? static_cast<size_t>(nb) : 0);
  int8_t cb[16] = {};
  float* mm = m ? m : m_tmp.data();
  fit_row_fn()(info, x, k, importance, d, mm, cb, nullptr);
  float rs[2] = {0, 0};
  if (info.two_level) fit_two_level(info, x, k, importance, d, mm, rs);
  if (row_scales) {
    row_scales[0] = rs[0];
    row_scales[1] = rs[1];
  }
  if (codebook && info.kind == QKind::kCodebook) std::memcpy(codebook, cb, static_cast<size_t>(1) << info.bits);
}

void store_row_params(QType t, int64_t k, const float* d, const float* m, const int8_t* codebook,
                      const float* row_scales, uint8_t* dst) {
  const QTypeInfo& info = qtype_info(t);
  const RowView v = row_view(t, k, dst);
  if (v.codebook) std::memcpy(v.codebook, codebook, static_cast<size_t>(1) << info.bits);
  if (v.rs) {
    const float D = row_scales[0], M = row_scales[1];
    std::memcpy(v.rs, &D, 4);
    if (v.m) std::memcpy(v.rs + 4, &M, 4);
    const bool asym = v.m != nullptr;
    for (int64_t g = 0; g < v.nb; ++g) {
      const int s = D > 0 ? round_clamp(d[g] / D, asym ? 0 : -127, asym ? 255 : 127) : 0;
      v.d[g] = static_cast<uint8_t>(asym ? s : static_cast<int>(static_cast<uint8_t>(static_cast<int8_t>(s))));
      if (v.m) v.m[g] = static_cast<uint8_t>(static_cast<int8_t>(M > 0 ? round_clamp(m[g] / M, -127, 127) : 0));
    }
    return;
  }
  for (int64_t g = 0; g < v.nb; ++g) {
    store_f16(v.d, g, d[g]);
    if (v.m) store_f16(v.m, g, m[g]);
  }
}

void quantize_row(QType t, const float* x, int64_t k, uint8_t* dst, const float* importance) {
  const QTypeInfo& info = qtype_info(t);
  if (info.kind == QKind::kFloat) {
    convert_row_from_f32(t, x, dst, static_cast<size_t>(k));
    return;
  }
  RowView v = row_view(t, k, dst);
  const int G = info.block_elems;
  std::vector<float> d(static_cast<size_t>(v.nb)), m(static_cast<size_t>(v.nb));
  std::vector<uint8_t> q(static_cast<size_t>(v.nb * G));
  int8_t cb[16] = {};
  float rs[2] = {0, 0};
  fit_row_fn()(info, x, k, importance, d.data(), m.data(), cb, q.data());
  if (info.two_level) {
    // The codes moved d and m: the levels follow them.
    fit_two_level(info, x, k, importance, d.data(), m.data(), rs);
    float xg[128];
    for (int64_t g = 0; g < v.nb; ++g) {
      const int n = static_cast<int>(std::min<int64_t>(G, k - g * G));
      for (int i = 0; i < G; ++i) xg[i] = i < n ? x[g * G + i] : 0.0f;
      assign_levels(info, xg, n, d[g], m[g], q.data() + g * G);
    }
  }
  store_row_params(t, k, d.data(), m.data(), cb, rs, dst);
  for (int64_t g = 0; g < v.nb; ++g) pack_group(info.bits, G, q.data() + g * G, v.quants + g * v.qbytes);
}

void dequantize_row(QType t, const uint8_t* row, int64_t k, float* dst) {
  const QTypeInfo& info = qtype_info(t);
  if (info.kind == QKind::kFloat) {
    convert_row_to_f32(t, row, dst, static_cast<size_t>(k));
    return;
  }
  const RowView v = row_view(t, k, row);
  const int G = info.block_elems, z = 1 << (info.bits - 1);
  uint8_t q[128];
  for (int64_t g = 0; g < v.nb; ++g) {
    unpack_group(info.bits, G, v.quants + g * v.qbytes, q);
    const float d = group_d(v, g);
    const float m = group_m(v, g);
    for (int i = 0; i < G && g * G + i < k; ++i) {
      float w;
      switch (info.kind) {
        case QKind::kSymmetric: w = d * static_cast<float>(q[i] - z); break;
        case QKind::kAsymmetric: w = d * q[i] + m; break;
        default: w = d * static_cast<float>(static_cast<int8_t>(v.codebook[q[i]])); break;
      }
      dst[g * G + i] = w;
    }
  }
}

// ---- activations ----------------------------------------------------------------------------

void quantize_act_row_ref(const float* x, int64_t k, int64_t kp, int8_t* q, float* d, float* ds, bool per_token) {
  const int64_t nb = kp / kActBlock;
  float row_amax = 0;
  if (per_token) {
    for (int64_t i = 0; i < k; ++i) row_amax = std::max(row_amax, std::abs(x[i]));
  }
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * kActBlock, i1 = std::min<int64_t>(k, i0 + kActBlock);
    float amax = row_amax;
    if (!per_token) {
      for (int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::abs(x[i]));
    }
    // Blocks below kActTiny quantize to zero (127 / amax would overflow).
    const bool zero = !(amax > kActTiny);
    const float id = zero ? 0.0f : 127.0f / amax;
    int sum = 0;
    for (int64_t i = i0; i < i0 + kActBlock; ++i) {
      const int v = i < i1 ? static_cast<int>(std::nearbyint(x[i] * id)) : 0;
      q[i] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = zero ? 0.0f : amax / 127.0f;
    ds[b] = d[b] * static_cast<float>(sum);
  }
}

// ---- reference GEMM -------------------------------------------------------------------------

void qgemm_ref(QType t, int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes,
               float* y, size_t ldy) {
  const QTypeInfo& info = qtype_info(t);
  MXLM_DASSERT(info.kind != QKind::kFloat);
  const int G = info.block_elems, z = 1 << (info.bits - 1), sub = G / kActBlock;
  const int64_t nbs = a.kp / kActBlock;
  uint8_t q[128];
  int lv[128];
  for (int n = n0; n < n1; ++n) {
    const RowView v = row_view(t, K, w + static_cast<size_t>(n) * w_row_bytes);
    for (int m = 0; m < M; ++m) {
      const int8_t* aq = a.q + static_cast<int64_t>(m) * a.kp;
      const float* ad = a.d + static_cast<int64_t>(m) * nbs;
      const float* ads = a.ds + static_cast<int64_t>(m) * nbs;
      float acc = 0;
      for (int64_t g = 0; g < v.nb; ++g) {
        unpack_group(info.bits, G, v.quants + g * v.qbytes, q);
        for (int i = 0; i < G; ++i) {
          lv[i] = info.kind == QKind::kCodebook ? static_cast<int8_t>(v.codebook[q[i]]) : q[i];
        }
        const float dw = group_d(v, g);
        const float mw = group_m(v, g);
        float gacc = 0;
        for (int s = 0; s < sub; ++s) {
          const int64_t b = g * sub + s;
          int32_t dot = 0;
          for (int i = 0; i < kActBlock; ++i) dot += lv[s * kActBlock + i] * aq[b * kActBlock + i];
          switch (info.kind) {
            case QKind::kSymmetric: gacc += dw * (ad[b] * static_cast<float>(dot) - static_cast<float>(z) * ads[b]); break;
            case QKind::kAsymmetric: gacc += dw * ad[b] * static_cast<float>(dot) + mw * ads[b]; break;
            default: gacc += dw * ad[b] * static_cast<float>(dot); break;
          }
        }
        acc += gacc;
      }
      y[static_cast<size_t>(m) * ldy + n] = acc;
    }
  }
}

// ---- registry -------------------------------------------------------------------------------

namespace kernels {
#ifdef MXLM_HAVE_AVX2
namespace avx2 {
void register_quant_kernels();
}
#endif
#ifdef MXLM_HAVE_AVX512
namespace avx512 {
void register_quant_kernels();
}
#endif
#ifdef MXLM_HAVE_NEON
namespace neon {
void register_quant_kernels();
}
#endif
}  // namespace kernels

namespace {

constexpr int kNumIsa = 4;
constexpr int kNumQ = 256;

struct Registry {
  std::array<std::array<QGemmFn, kNumIsa>, kNumQ> gemm{};
  std::array<std::array<QPackFn, kNumIsa>, kNumQ> pack{};
  std::array<QuantizeActFn, kNumIsa> act{};
  std::array<Int8PeakFn, kNumIsa> peak{};
};

Registry& registry_storage() {
  static Registry r;
  return r;
}

template <QType T>
void ref_gemm(int M, int n0, int n1, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes, float* y, size_t ldy) {
  qgemm_ref(T, M, n0, n1, K, a, w, w_row_bytes, y, ldy);
}

template <size_t... I>
void register_refs(std::index_sequence<I...>) {
  ((kQTypes[I].kind != QKind::kFloat ? register_qkernel(kQTypes[I].type, Isa::kRef, &ref_gemm<kQTypes[I].type>) : void()), ...);
}

const Registry& registry() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_refs(std::make_index_sequence<std::size(kQTypes)>());
    register_quantize_act(Isa::kRef, &quantize_act_row_ref);
    // An ISA's registration runs its code (the x86 decoders' layout probes), so only ISAs this
    // CPU can run register: on an AVX2-only host (a Zen 3 EPYC) probing the AVX-512 decoders
    // was an illegal instruction before any kernel was chosen.
#ifdef MXLM_HAVE_AVX2
    if (isa_available(Isa::kAvx2)) kernels::avx2::register_quant_kernels();
#endif
#ifdef MXLM_HAVE_AVX512
    if (isa_available(Isa::kAvx512)) kernels::avx512::register_quant_kernels();
#endif
#ifdef MXLM_HAVE_NEON
    if (isa_available(Isa::kNeon)) kernels::neon::register_quant_kernels();
#endif
  });
  return registry_storage();
}

// ISAs from `isa` down to ref, in order of preference.
std::vector<Isa> fallback_chain(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return {Isa::kAvx512, Isa::kAvx2, Isa::kRef};
    case Isa::kAvx2: return {Isa::kAvx2, Isa::kRef};
    case Isa::kNeon: return {Isa::kNeon, Isa::kRef};
    default: return {Isa::kRef};
  }
}

}  // namespace

void register_qkernel(QType t, Isa isa, QGemmFn fn, QPackFn pack) {
  registry_storage().gemm[static_cast<int>(t)][static_cast<int>(isa)] = fn;
  registry_storage().pack[static_cast<int>(t)][static_cast<int>(isa)] = pack;
}
void register_quantize_act(Isa isa, QuantizeActFn fn) { registry_storage().act[static_cast<int>(isa)] = fn; }
void register_int8_peak(Isa isa, Int8PeakFn fn) { registry_storage().peak[static_cast<int>(isa)] = fn; }

Int8PeakFn find_int8_peak(Isa isa) { return registry().peak[static_cast<int>(isa)]; }

QKernel find_qkernel(QType t, Isa isa) {
  const Registry& r = registry();
  for (Isa i : fallback_chain(isa)) {
    if (QGemmFn fn = r.gemm[static_cast<int>(t)][static_cast<int>(i)]) return {fn, r.pack[static_cast<int>(t)][static_cast<int>(i)], i};
  }
  return {};
}

bool has_own_qkernel(QType t, Isa isa) { return registry().gemm[static_cast<int>(t)][static_cast<int>(isa)] != nullptr; }

QuantizeActFn find_quantize_act(Isa isa) {
  const Registry& r = registry();
  for (Isa i : fallback_chain(isa)) {
    if (QuantizeActFn fn = r.act[static_cast<int>(i)]) return fn;
  }
  return &quantize_act_row_ref;
}

}  // namespace mxlm
