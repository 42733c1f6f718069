// KvCache: see runtime/kv_cache.h.

#include "runtime/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/common.h"
#include "kernels/quant.h"
#include "kernels/splitmix.h"
#include "model/rotate.h"

namespace mxlm {

std::optional<KvFormats> parse_kv_formats(std::string_view spec) {
  if (spec == "f32") return KvFormats{};
  auto bits = [](std::string_view s) -> std::optional<KvType> {
    if (s == "32") return KvType::kF32;
    if (s == "8") return KvType::kQ8;
    if (s == "4") return KvType::kQ4;
    return std::nullopt;
  };
  if (spec.size() < 4 || spec[0] != 'k') return std::nullopt;
  const size_t v = spec.find('v');
  if (v == std::string_view::npos) return std::nullopt;
  const auto k = bits(spec.substr(1, v - 1)), vv = bits(spec.substr(v + 1));
  if (!k || !vv) return std::nullopt;
  return KvFormats{*k, *vv};
}

std::string kv_formats_name(KvFormats f) {
  auto b = [](KvType t) { return t == KvType::kF32 ? "32" : t == KvType::kQ8 ? "8" : "4"; };
  if (f.k == KvType::kF32 && f.v == KvType::kF32) return "f32";
  return std::string("k") + b(f.k) + "v" + b(f.v);
}

QType kv_qtype(KvType t, int head_dim) {
  switch (t) {
    case KvType::kF32: return QType::kF32;
    case KvType::kQ8:
      return head_dim == 128 ? QType::kQ8G128 : head_dim == 64 ? QType::kQ8G64 : QType::kQ8G32;
    case KvType::kQ4: return QType::kQ4AG32;
  }
  return QType::kF32;
}

KvCache::KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim, KvFormats formats)
    : n_layers_(n_layers), n_ctx_(n_ctx), n_heads_(n_kv_heads), head_dim_(head_dim) {
  MXLM_ASSERT(n_layers > 0 && n_ctx > 0 && n_kv_heads > 0 && head_dim > 0);
  kq_ = kv_qtype(formats.k, head_dim);
  vq_ = kv_qtype(formats.v, head_dim);
  k_seg_ = *qtype_row_bytes(kq_, uint64_t(head_dim));
  v_seg_ = *qtype_row_bytes(vq_, uint64_t(head_dim));
  k_.assign(size_t(n_layers) * n_kv_heads * n_ctx * k_seg_, 0);
  v_.assign(size_t(n_layers) * n_kv_heads * n_ctx * v_seg_, 0);
  const bool pow2 = (head_dim & (head_dim - 1)) == 0;
  rotate_k_ = pow2 && kq_ != QType::kF32;
  rotate_v_ = pow2 && vq_ != QType::kF32;
  signs_.resize(size_t(head_dim));
  uint64_t state = 0x6d786c6d6b76ULL;  // "mxlmkv": the same signs in every run and file
  for (float& f : signs_) f = (splitmix64_next(state) >> 63) ? -1.0f : 1.0f;
  rot_.resize(size_t(head_dim));
}

void KvCache::rotate(float* x) const {
  const float norm = 1.0f / std::sqrt(float(head_dim_));
  for (int i = 0; i < head_dim_; ++i) x[i] *= signs_[i] * norm;
  fwht(x, head_dim_);
}

void KvCache::unrotate(float* x) const {
  const float norm = 1.0f / std::sqrt(float(head_dim_));
  fwht(x, head_dim_);
  for (int i = 0; i < head_dim_; ++i) x[i] *= signs_[i] * norm;
}

// Round-to-nearest from the range: q8 symmetric per row (head_dim <= its group), q4a per group.
void KvCache::encode(QType t, const float* x, uint8_t* dst) {
  const int D = head_dim_;
  if (t == QType::kF32) {
    std::memcpy(dst, x, sizeof(float) * D);
    return;
  }
  const QRowLayout L = qrow_layout(t, D);
  std::memset(dst, 0, qtype_row_bytes(t, uint64_t(D)).value());
  const int G = qtype_info(t).block_elems;
  for (int64_t g = 0; g < L.nb; ++g) {
    const int e0 = int(g) * G, n = std::min(G, D - e0);
    float lo = x[e0], hi = x[e0];
    for (int i = 1; i < n; ++i) {
      lo = std::min(lo, x[e0 + i]);
      hi = std::max(hi, x[e0 + i]);
    }
    uint8_t q[128];
    if (t == QType::kQ4AG32) {
      // w = d * q + m: from m = min, d = (max - min) / 15, then two rounds of the least-squares
      // (d, m) for the current levels and the levels for the new (d, m) (both as f16), keeping
      // the pair of least squared error (tinymix-26m k4v4: +1.5 % -> +0.8 % ppl over f32 KV).
      uint16_t best_m = f32_to_f16(lo), best_d = f32_to_f16((hi - lo) / 15.0f);
      float best_err = std::numeric_limits<float>::infinity();
      uint16_t mh = best_m, dh = best_d;
      for (int round = 0; round < 3; ++round) {
        const float m = f16_to_f32(mh), d = f16_to_f32(dh);
        double err = 0, sq = 0, sqq = 0, sx = 0, sxq = 0;
        for (int i = 0; i < n; ++i) {
          const float v = x[e0 + i];
          const float r = d > 0 ? std::clamp(std::nearbyint((v - m) / d), 0.0f, 15.0f) : 0.0f;
          const float e = v - (d * r + m);
          err += double(e) * e;
          sq += r;
          sqq += double(r) * r;
          sx += v;
          sxq += double(v) * r;
        }
        if (err < best_err) {
          best_err = float(err);
          best_m = mh;
          best_d = dh;
        }
        const double det = n * sqq - sq * sq;
        if (det <= 0) break;
        const double dn = (n * sxq - sx * sq) / det;
        if (!(dn > 0)) break;
        dh = f32_to_f16(float(dn));
        mh = f32_to_f16(float((sx - dn * sq) / n));
      }
      const float m = f16_to_f32(best_m), d = f16_to_f32(best_d);
      for (int i = 0; i < G; ++i) {
        const float r = i < n && d > 0 ? std::nearbyint((x[e0 + i] - m) / d) : 0.0f;
        q[i] = uint8_t(std::clamp(r, 0.0f, 15.0f));
      }
      std::memcpy(dst + L.d_off + 2 * g, &best_d, 2);
      std::memcpy(dst + L.m_off + 2 * g, &best_m, 2);
    } else {
      // w = d * (q - 128): d = max|x| / 127 as f16.
      const uint16_t dh = f32_to_f16(std::max(std::fabs(lo), std::fabs(hi)) / 127.0f);
      const float d = f16_to_f32(dh);
      for (int i = 0; i < G; ++i) {
        const float r = i < n && d > 0 ? std::nearbyint(x[e0 + i] / d) : 0.0f;
        q[i] = uint8_t(std::clamp(r, -127.0f, 127.0f) + 128.0f);
      }
      std::memcpy(dst + L.d_off + 2 * g, &dh, 2);
    }
    pack_group(qtype_info(t).bits, G, q, dst + L.q_off + size_t(g) * L.qbytes);
  }
}

void KvCache::store(int l, int pos, const float* k, const float* v) {
  MXLM_DASSERT(l >= 0 && l < n_layers_ && pos >= 0 && pos < n_ctx_);
  const size_t D = size_t(head_dim_);
  // One head's row: rotated first when its format is, then encoded at row `pos`.
  auto put = [&](QType t, bool rot, const float* x, uint8_t* dst) {
    if (rot) {
      std::copy(x, x + D, rot_.begin());
      rotate(rot_.data());
      x = rot_.data();
    }
    encode(t, x, dst);
  };
  for (int h = 0; h < n_heads_; ++h) {
    put(kq_, rotate_k_, k + h * D, &k_[row(l, h, pos) * k_seg_]);
    put(vq_, rotate_v_, v + h * D, &v_[row(l, h, pos) * v_seg_]);
  }
}

void KvCache::shift(int n_keep, int n_discard, int n_past, const float* cos_d, const float* sin_d) {
  MXLM_ASSERT(n_keep >= 0 && n_discard > 0 && n_keep + n_discard <= n_past && n_past <= n_ctx_);
  const int D = head_dim_, half = D / 2, n_move = n_past - n_keep - n_discard;
  std::vector<float> x(static_cast<size_t>(D));
  for (int l = 0; l < n_layers_; ++l) {
    for (int h = 0; h < n_heads_; ++h) {
      uint8_t* kb = &k_[row(l, h, 0) * k_seg_];
      uint8_t* vb = &v_[row(l, h, 0) * v_seg_];
      std::memmove(vb + size_t(n_keep) * v_seg_, vb + size_t(n_keep + n_discard) * v_seg_, size_t(n_move) * v_seg_);
      for (int t = n_keep; t < n_keep + n_move; ++t) {
        const uint8_t* src = kb + size_t(t + n_discard) * k_seg_;
        if (kq_ == QType::kF32) {
          std::memcpy(x.data(), src, sizeof(float) * D);
        } else {
          dequantize_row(kq_, src, D, x.data());
          if (rotate_k_) unrotate(x.data());
        }
        // RoPE by -n_discard positions: (a, b) -> (a cos + b sin, b cos - a sin).
        for (int i = 0; i < half; ++i) {
          const float a = x[i], b = x[i + half];
          x[i] = a * cos_d[i] + b * sin_d[i];
          x[i + half] = b * cos_d[i] - a * sin_d[i];
        }
        uint8_t* dst = kb + size_t(t) * k_seg_;
        if (kq_ == QType::kF32) {
          std::memcpy(dst, x.data(), sizeof(float) * D);
        } else {
          if (rotate_k_) rotate(x.data());
          encode(kq_, x.data(), dst);
        }
      }
    }
  }
}

}  // namespace mxlm
