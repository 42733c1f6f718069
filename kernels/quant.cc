// Reference quantizers, dequantizers, activation quantization and GEMM (the spec of every
// format), plus the (QType, ISA) kernel registry.
//
// The quantizer is the one implementation of each format's fit: quantize_row (parameters and
// quant indices) and quantize_row_params (parameters only: the GPTQ encoder, model/encode.cc)
// run the same row fit (kernels/quant_fit.cc, one copy per ISA, bit-identical).
#include "kernels/quant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "base/error.h"
#include "kernels/quant_fit.h"
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
  float rs[2] = {0, 0};
  detail::fit_row_fn()(info, x, k, importance, d, mm, cb, nullptr, rs);
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

namespace {

void quantize_row_by(detail::FitRowFn fit, QType t, const float* x, int64_t k, uint8_t* dst, const float* importance) {
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
  fit(info, x, k, importance, d.data(), m.data(), cb, q.data(), rs);
  if (info.two_level) {
    // The codes moved d and m: the levels follow them.
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

}  // namespace

void quantize_row(QType t, const float* x, int64_t k, uint8_t* dst, const float* importance) {
  quantize_row_by(detail::fit_row_fn(), t, x, k, dst, importance);
}

bool quantize_row_with(Isa isa, QType t, const float* x, int64_t k, uint8_t* dst, const float* importance) {
  const detail::FitRowFn fit = detail::fit_row_for(isa);
  if (!fit) return false;
  quantize_row_by(fit, t, x, k, dst, importance);
  return true;
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
  std::array<std::array<int, kNumIsa>, kNumQ> pack_rows{};
  std::array<QuantizeActFn, kNumIsa> act{};
  std::array<Int8PeakFn, kNumIsa> peak{};
};

Registry& registry_storage() {
  static Registry r;
  return r;
}

template <QType T>
void ref_gemm(int M, int n0, int n1, int /*N*/, int64_t K, const ActQ8& a, const uint8_t* w, size_t w_row_bytes, float* y, size_t ldy) {
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

void register_qkernel(QType t, Isa isa, QGemmFn fn, QPackFn pack, int pack_rows) {
  MXLM_ASSERT(pack_rows >= 1 && (pack_rows == 1 || pack));
  registry_storage().gemm[static_cast<int>(t)][static_cast<int>(isa)] = fn;
  registry_storage().pack[static_cast<int>(t)][static_cast<int>(isa)] = pack;
  registry_storage().pack_rows[static_cast<int>(t)][static_cast<int>(isa)] = pack_rows;
}
void register_quantize_act(Isa isa, QuantizeActFn fn) { registry_storage().act[static_cast<int>(isa)] = fn; }
void register_int8_peak(Isa isa, Int8PeakFn fn) { registry_storage().peak[static_cast<int>(isa)] = fn; }

Int8PeakFn find_int8_peak(Isa isa) { return registry().peak[static_cast<int>(isa)]; }

QKernel find_qkernel(QType t, Isa isa) {
  const Registry& r = registry();
  for (Isa i : fallback_chain(isa)) {
    const int ti = static_cast<int>(t), ii = static_cast<int>(i);
    if (QGemmFn fn = r.gemm[ti][ii]) return {fn, r.pack[ti][ii], r.pack_rows[ti][ii], i};
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
