// Reference quantizers, dequantizers, activation quantization and GEMM (the spec of every
// format), plus the (QType, ISA) kernel registry.
#include "kernels/quant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/common.h"

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
  uint8_t* d;         // f16[nb]
  uint8_t* m;         // f16[nb] or null
  uint8_t* quants;    // nb * qbytes
  int qbytes;
};

RowView row_view(QType t, int64_t k, const uint8_t* row) {
  const QTypeInfo& info = qtype_info(t);
  RowView v{};
  v.info = &info;
  v.nb = (k + info.block_elems - 1) / info.block_elems;
  auto* p = const_cast<uint8_t*>(row);
  v.codebook = info.kind == QKind::kCodebook ? p : nullptr;
  p += info.row_prefix_bytes;
  v.d = p;
  p += 2 * v.nb;
  v.m = info.kind == QKind::kAsymmetric ? p : nullptr;
  if (v.m) p += 2 * v.nb;
  v.quants = p;
  v.qbytes = info.block_elems * info.bits / 8;
  return v;
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
float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

// Weighted squared error of reconstructing x with levels value(q) and per-element q chosen as
// the nearest level; returns the error and writes q.
template <typename Level>
double assign_nearest(const float* x, const float* w, int n, int levels, Level level, uint8_t* q) {
  double err = 0;
  for (int i = 0; i < n; ++i) {
    int best = 0;
    float best_e = INFINITY;
    for (int l = 0; l < levels; ++l) {
      const float e = std::abs(x[i] - level(l));
      if (e < best_e) {
        best_e = e;
        best = l;
      }
    }
    q[i] = static_cast<uint8_t>(best);
    err += double(w[i]) * best_e * best_e;
  }
  return err;
}

// round(clamp(t, lo, hi)) for small integer lo, hi under the default rounding mode (ties to
// even, like std::nearbyint), NaN stays NaN; branch-free, so loops over it vectorize. Without
// SSE4.1 x86-64 compiles std::nearbyint to a libm call, and the scale searches below round ~60
// times per weight.
inline float round_clampf(float t, float lo, float hi) {
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: t + kMagic rounds t to an integer
  return (t + kMagic) - kMagic;
}

// The same as an int, NaN -> lo.
inline int round_clamp(float v, int lo, int hi) {
  return v == v ? static_cast<int>(round_clampf(v, static_cast<float>(lo), static_cast<float>(hi))) : lo;
}

// Symmetric: w = d * (q - z). Tries scales that map the largest-magnitude value to levels near
// -z (and near z-1), refits d by weighted least squares for each assignment, keeps the best.
void quantize_group_sym(int bits, const float* x, const float* w, int n, float* d_out, uint8_t* q) {
  const int z = 1 << (bits - 1), qmax = (1 << bits) - 1;
  float vmax = 0;
  for (int i = 0; i < n; ++i) {
    if (std::abs(x[i]) > std::abs(vmax)) vmax = x[i];
  }
  if (vmax == 0) {
    *d_out = 0;
    for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(z);
    return;
  }
  // x and w hold a whole group (a multiple of 8 values, zero weight past n).
  const int n8 = (n + 7) & ~7;
  const float lo = static_cast<float>(-z), hi = static_cast<float>(qmax - z);
  float wx[128];
  double sxx = 0;
  for (int i = 0; i < n8; ++i) {
    wx[i] = w[i] * x[i];
    sxx += double(wx[i]) * x[i];
  }
  double best_err = INFINITY;
  float best_d = 0;
  for (int step = -8; step <= 8; ++step) {
    for (int side = 0; side < 2; ++side) {
      // side 0 maps vmax to -z (full negative range), side 1 to +(z-1).
      const float target = side == 0 ? -(z + 0.0625f * step) : (z - 1 + 0.0625f * step);
      if (std::abs(target) < 0.5f) continue;
      const float id = target / vmax;
      // 8 independent float partial sums: the loop vectorizes and no add waits on the last.
      float sxq8[8] = {}, sqq8[8] = {};
      for (int i = 0; i < n8; i += 8) {
        for (int j = 0; j < 8; ++j) {
          const float v = round_clampf(x[i + j] * id, lo, hi);
          sxq8[j] += wx[i + j] * v;
          sqq8[j] += w[i + j] * v * v;
        }
      }
      double sxq = 0, sqq = 0;
      for (int j = 0; j < 8; ++j) {
        sxq += sxq8[j];
        sqq += sqq8[j];
      }
      if (sqq <= 0) continue;
      const float d = round_f16(static_cast<float>(sxq / sqq));
      // sum w (x - d v)^2, expanded: no second pass over the group.
      const double err = sxx - 2.0 * d * sxq + double(d) * d * sqq;
      if (err < best_err) {
        best_err = err;
        best_d = d;
      }
    }
  }
  *d_out = best_d;
  if (best_d == 0) {
    for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(z);
    return;
  }
  const float id = 1.0f / best_d;
  for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(round_clamp(x[i] * id, -z, qmax - z) + z);
}

// Asymmetric: w = d * q + m. Starts from the min/max range and shrinks it, refitting (d, m) by
// weighted least squares for each assignment.
void quantize_group_asym(int bits, const float* x, const float* w, int n, float* d_out, float* m_out, uint8_t* q) {
  const int qmax = (1 << bits) - 1;
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (hi == lo) {
    *d_out = 0;
    *m_out = round_f16(lo);
    std::fill(q, q + n, uint8_t{0});
    return;
  }
  // x and w hold a whole group (a multiple of 8 values, zero weight past n); sums run in 8
  // independent float lanes so that the loops vectorize.
  const int n8 = (n + 7) & ~7;
  const float fq = static_cast<float>(qmax);
  double sw = 0, sx = 0;
  for (int i = 0; i < n8; ++i) {
    sw += w[i];
    sx += double(w[i]) * x[i];
  }
  double best_err = INFINITY;
  float best_d = 0, best_m = round_f16(lo);
  for (int step = 0; step <= 12; ++step) {
    const float shrink = 1.0f - 0.02f * step;
    for (int anchor = 0; anchor < 3; ++anchor) {
      float a = lo, b = hi;
      const float span = (hi - lo) * (1 - shrink);
      if (anchor == 0) b -= span;
      if (anchor == 1) a += span;
      if (anchor == 2) { a += span / 2; b -= span / 2; }
      if (b <= a) continue;
      const float id = qmax / (b - a);
      // Least squares for (d, m) given q.
      float sq8[8] = {}, sqq8[8] = {}, sxq8[8] = {};
      for (int i = 0; i < n8; i += 8) {
        for (int j = 0; j < 8; ++j) {
          const float qi = round_clampf((x[i + j] - a) * id, 0.0f, fq), wq = w[i + j] * qi;
          sq8[j] += wq;
          sqq8[j] += wq * qi;
          sxq8[j] += wq * x[i + j];
        }
      }
      double sq = 0, sqq = 0, sxq = 0;
      for (int j = 0; j < 8; ++j) {
        sq += sq8[j];
        sqq += sqq8[j];
        sxq += sxq8[j];
      }
      const double det = sw * sqq - sq * sq;
      float d, m;
      if (det > 1e-20 * sw * sqq) {
        d = static_cast<float>((sw * sxq - sq * sx) / det);
        m = static_cast<float>((sqq * sx - sq * sxq) / det);
      } else {
        d = (b - a) / qmax;
        m = a;
      }
      d = round_f16(d);
      m = round_f16(m);
      if (d <= 0) continue;
      // Re-assign with the rounded parameters and measure.
      float err8[8] = {};
      for (int i = 0; i < n8; i += 8) {
        for (int j = 0; j < 8; ++j) {
          const float l = round_clampf((x[i + j] - m) / d, 0.0f, fq);
          const float e = x[i + j] - (d * l + m);
          err8[j] += w[i + j] * e * e;
        }
      }
      double err = 0;
      for (int j = 0; j < 8; ++j) err += err8[j];
      if (err < best_err) {
        best_err = err;
        best_d = d;
        best_m = m;
      }
    }
  }
  *d_out = best_d;
  *m_out = best_m;
  for (int i = 0; i < n; ++i) {
    q[i] = best_d > 0 ? static_cast<uint8_t>(round_clamp((x[i] - best_m) / best_d, 0, qmax)) : 0;
  }
}

// Codebook: fits 2^b int8 levels to the row's values normalized by each group's absolute
// maximum (weighted 1-D k-means over a histogram), then refits each group's scale.
void quantize_row_codebook(const QTypeInfo& info, const float* x, int64_t k, const float* imp, RowView& v) {
  const int G = info.block_elems, L = 1 << info.bits;
  constexpr int kBins = 2048;
  std::vector<double> hist_w(kBins, 0.0), hist_wx(kBins, 0.0);
  std::vector<float> amax(static_cast<size_t>(v.nb), 0.0f);
  for (int64_t g = 0; g < v.nb; ++g) {
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
  // Lloyd iterations from uniformly spaced levels.
  std::vector<double> c(L);
  for (int l = 0; l < L; ++l) c[l] = -1.0 + 2.0 * (l + 0.5) / L;
  for (int it = 0; it < 30; ++it) {
    std::vector<double> sw(L, 0.0), swx(L, 0.0);
    int l = 0;
    for (int b = 0; b < kBins; ++b) {
      if (hist_w[b] == 0) continue;
      const double y = hist_wx[b] / hist_w[b];
      while (l + 1 < L && std::abs(y - c[l + 1]) < std::abs(y - c[l])) ++l;
      while (l > 0 && std::abs(y - c[l - 1]) < std::abs(y - c[l])) --l;
      sw[l] += hist_w[b];
      swx[l] += hist_wx[b];
    }
    for (int j = 0; j < L; ++j) {
      if (sw[j] > 0) c[j] = swx[j] / sw[j];
    }
    std::sort(c.begin(), c.end());
  }
  int8_t cb[16];
  for (int l = 0; l < L; ++l) cb[l] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(c[l] * 127.0)), -127, 127));
  std::memcpy(v.codebook, cb, static_cast<size_t>(L));
  // Per group: start from amax / 127, refit d by least squares on the assignment, keep the best.
  std::vector<float> xg(G), wg(G);
  std::vector<uint8_t> q(G), qbest(G);
  for (int64_t g = 0; g < v.nb; ++g) {
    for (int i = 0; i < G; ++i) {
      const int64_t e = g * G + i;
      xg[i] = e < k ? x[e] : 0.0f;
      wg[i] = e < k ? (imp ? imp[e] : 1.0f) : 0.0f;
    }
    float best_d = 0;
    double best_err = INFINITY;
    std::fill(qbest.begin(), qbest.end(), 0);
    if (amax[g] > 0) {
      float d = round_f16(amax[g] / 127.0f);
      for (int it = 0; it < 4 && d != 0; ++it) {
        const float dd = d;
        const double err = assign_nearest(xg.data(), wg.data(), G, L, [&](int l) { return dd * cb[l]; }, q.data());
        if (err < best_err) {
          best_err = err;
          best_d = d;
          qbest = q;
        }
        double sxc = 0, scc = 0;
        for (int i = 0; i < G; ++i) {
          sxc += double(wg[i]) * xg[i] * cb[q[i]];
          scc += double(wg[i]) * cb[q[i]] * cb[q[i]];
        }
        if (scc <= 0) break;
        d = round_f16(static_cast<float>(sxc / scc));
      }
    }
    store_f16(v.d, g, best_d);
    pack_group(info.bits, G, qbest.data(), v.quants + g * v.qbytes);
  }
}

}  // namespace

void quantize_row(QType t, const float* x, int64_t k, uint8_t* dst, const float* importance) {
  const QTypeInfo& info = qtype_info(t);
  if (info.kind == QKind::kFloat) {
    convert_row_from_f32(t, x, dst, static_cast<size_t>(k));
    return;
  }
  RowView v = row_view(t, k, dst);
  if (info.kind == QKind::kCodebook) {
    quantize_row_codebook(info, x, k, importance, v);
    return;
  }
  const int G = info.block_elems;
  std::vector<float> xg(G), wg(G);
  std::vector<uint8_t> q(G);
  for (int64_t g = 0; g < v.nb; ++g) {
    for (int i = 0; i < G; ++i) {
      const int64_t e = g * G + i;
      xg[i] = e < k ? x[e] : 0.0f;
      wg[i] = e < k ? (importance ? importance[e] : 1.0f) : 0.0f;
    }
    const int n = static_cast<int>(std::min<int64_t>(G, k - g * G));
    if (info.kind == QKind::kSymmetric) {
      float d;
      quantize_group_sym(info.bits, xg.data(), wg.data(), n, &d, q.data());
      for (int i = n; i < G; ++i) q[i] = static_cast<uint8_t>(1 << (info.bits - 1));  // padding decodes to 0
      store_f16(v.d, g, d);
    } else {
      float d, m;
      quantize_group_asym(info.bits, xg.data(), wg.data(), n, &d, &m, q.data());
      for (int i = n; i < G; ++i) q[i] = 0;
      store_f16(v.d, g, d);
      store_f16(v.m, g, m);
    }
    pack_group(info.bits, G, q.data(), v.quants + g * v.qbytes);
  }
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
    const float d = load_f16(v.d, g);
    const float m = v.m ? load_f16(v.m, g) : 0.0f;
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
        const float dw = load_f16(v.d, g);
        const float mw = v.m ? load_f16(v.m, g) : 0.0f;
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
#ifdef MXLM_HAVE_AVX2
    kernels::avx2::register_quant_kernels();
#endif
#ifdef MXLM_HAVE_AVX512
    kernels::avx512::register_quant_kernels();
#endif
#ifdef MXLM_HAVE_NEON
    kernels::neon::register_quant_kernels();
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
