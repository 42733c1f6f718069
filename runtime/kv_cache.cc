// KvCache: see runtime/kv_cache.h.

#include "runtime/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "base/error.h"
#include "kernels/quant.h"
#include "kernels/splitmix.h"
#include "model/rotate.h"
#include "runtime/kv_fit.h"
#include "runtime/thread_pool.h"

namespace mxlm {

namespace {

constexpr int kMaxAffineGroups = 64;  // head_dim <= 2048

// The integer formats, encoded per group (the others are floats, copied or rounded).
bool is_coded(KvType t) { return t == KvType::kQ8 || t == KvType::kQ4 || t == KvType::kQ2; }

std::optional<KvType> parse_kv_type(std::string_view s) {
  if (s == "32" || s == "f32") return KvType::kF32;
  if (s == "16" || s == "f16") return KvType::kF16;
  if (s == "bf16") return KvType::kBF16;
  if (s == "8") return KvType::kQ8;
  if (s == "4") return KvType::kQ4;
  if (s == "2") return KvType::kQ2;
  return std::nullopt;
}

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::kF32: return "32";
    case KvType::kF16: return "16";
    case KvType::kBF16: return "bf16";
    case KvType::kQ8: return "8";
    case KvType::kQ4: return "4";
    case KvType::kQ2: return "2";
  }
  return "?";
}

}  // namespace

std::optional<KvFormats> parse_kv_formats(std::string_view spec) {
  if (spec == "f32") return KvFormats{};
  if (spec == "f16") return KvFormats{KvType::kF16, KvType::kF16};
  if (spec == "bf16") return KvFormats{KvType::kBF16, KvType::kBF16};
  if (spec.size() < 4 || spec[0] != 'k') return std::nullopt;
  const size_t v = spec.find('v');
  if (v == std::string_view::npos) return std::nullopt;
  const auto k = parse_kv_type(spec.substr(1, v - 1)), vv = parse_kv_type(spec.substr(v + 1));
  if (!k || !vv) return std::nullopt;
  return KvFormats{*k, *vv};
}

std::string kv_formats_name(KvFormats f) {
  if (f.k == f.v && f.k == KvType::kF32) return "f32";
  if (f.k == f.v && f.k == KvType::kF16) return "f16";
  if (f.k == f.v && f.k == KvType::kBF16) return "bf16";
  return std::string("k") + kv_type_name(f.k) + "v" + kv_type_name(f.v);
}

std::optional<std::vector<KvFormats>> parse_kv_plan(std::string_view spec) {
  std::vector<KvFormats> plan;
  while (true) {
    const size_t slash = spec.find('/');
    const auto f = parse_kv_formats(spec.substr(0, slash));
    if (!f) return std::nullopt;
    plan.push_back(*f);
    if (slash == std::string_view::npos) return plan;
    spec.remove_prefix(slash + 1);
  }
}

std::string kv_plan_name(const std::vector<KvFormats>& plan) {
  bool uniform = true;
  for (const KvFormats& f : plan) uniform = uniform && f.k == plan[0].k && f.v == plan[0].v;
  if (uniform) return plan.empty() ? "f32" : kv_formats_name(plan[0]);
  std::string s;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (i) s += '/';  // (not "lit" + std::string: GCC 12 warns -Wrestrict on it)
    s += kv_formats_name(plan[i]);
  }
  return s;
}

QType kv_qtype(KvType t, int head_dim) {
  switch (t) {
    case KvType::kF32: return QType::kF32;
    case KvType::kF16: return QType::kF16;
    case KvType::kBF16: return QType::kBF16;
    case KvType::kQ8:
      return head_dim == 128 ? QType::kQ8G128 : head_dim == 64 ? QType::kQ8G64 : QType::kQ8G32;
    case KvType::kQ4: return QType::kQ4AG32;
    case KvType::kQ2: return QType::kQ2AG32;
  }
  return QType::kF32;
}

uint64_t kv_bytes_per_token(KvType t, bool is_k, int n_kv_heads, int head_dim) {
  const QType q = kv_qtype(t, head_dim);
  const uint64_t per_head = t == KvType::kQ2 && is_k ? uint64_t(head_dim) * *qtype_row_bytes(q, KvCache::kBlock) / KvCache::kBlock
                                                     : *qtype_row_bytes(q, uint64_t(head_dim));
  return per_head * uint64_t(n_kv_heads);
}

double kv_read_bytes(KvType t, bool is_k, int n_kv_heads, int head_dim, int n, int window) {
  const double per_token = double(kv_bytes_per_token(t, is_k, n_kv_heads, head_dim));
  if (t != KvType::kQ2) return per_token * n;
  const int v = n - window, qe = v <= 0 ? 0 : v / KvCache::kBlock * KvCache::kBlock;
  return per_token * qe + double(n - qe) * head_dim * sizeof(uint16_t) * n_kv_heads;
}

KvCacheSize kv_cache_size(const ModelConfig& c, const std::vector<KvFormats>& plan, int n_ctx, int window) {
  MXLM_ASSERT(plan.size() == 1 || plan.size() == size_t(c.n_layers));
  KvCacheSize s;
  window = std::min(window, n_ctx);
  for (int l = 0; l < c.n_layers; ++l) {
    const KvFormats f = plan[plan.size() == 1 ? 0 : size_t(l)];
    for (bool is_k : {true, false}) {
      const KvType t = is_k ? f.k : f.v;
      const uint64_t per_token = kv_bytes_per_token(t, is_k, c.n_kv_heads, c.head_dim);
      s.per_token += per_token;
      // Per-channel blocks: whole blocks only (KvCache::init).
      s.total += t == KvType::kQ2 && is_k ? uint64_t(n_ctx / KvCache::kBlock) * KvCache::kBlock * per_token : uint64_t(n_ctx) * per_token;
      if (t == KvType::kQ2) s.total += uint64_t(window + KvCache::kBlock) * c.head_dim * sizeof(uint16_t) * c.n_kv_heads;
    }
  }
  return s;
}

KvCache::KvCache(int n_layers, int n_ctx, int n_kv_heads, int head_dim, const std::vector<KvFormats>& formats,
                 int window)
    : n_layers_(n_layers), n_ctx_(n_ctx), n_heads_(n_kv_heads), head_dim_(head_dim), window_(window) {
  MXLM_ASSERT(n_layers > 0 && n_ctx > 0 && n_kv_heads > 0 && head_dim > 0 && window >= 0);
  MXLM_ASSERT(formats.size() == size_t(n_layers));
  win_cap_ = window + kBlock;
  k_.resize(size_t(n_layers));
  v_.resize(size_t(n_layers));
  for (int l = 0; l < n_layers; ++l) {
    init(k_[size_t(l)], formats[size_t(l)].k, true);
    init(v_[size_t(l)], formats[size_t(l)].v, false);
  }
  signs_.resize(size_t(head_dim));
  uint64_t state = 0x6d786c6d6b76ULL;  // "mxlmkv": the same signs in every run and file
  for (float& f : signs_) f = (splitmix64_next(state) >> 63) ? -1.0f : 1.0f;
  scratch_.resize(scratch_floats());
}

void KvCache::init(Tensor& t, KvType type, bool is_k) {
  const int D = head_dim_;
  t.type = type;
  t.qtype = kv_qtype(type, D);
  t.windowed = type == KvType::kQ2;
  t.per_channel = is_k && type == KvType::kQ2;
  t.rotated = (D & (D - 1)) == 0 && is_coded(type) && !t.per_channel;
  if (t.per_channel) {
    t.seg = size_t(D) * *qtype_row_bytes(t.qtype, kBlock);
    t.head_bytes = size_t(n_ctx_ / kBlock) * t.seg;
  } else {
    t.seg = *qtype_row_bytes(t.qtype, uint64_t(D));
    t.head_bytes = size_t(n_ctx_) * t.seg;
  }
  t.q.assign(size_t(n_heads_) * t.head_bytes, 0);
  if (t.windowed) t.win.assign(size_t(n_heads_) * win_cap_ * D, 0);
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

int KvCache::quant_end(const Tensor& t, int p) const {
  if (!t.windowed) return p + 1;
  const int v = p + 1 - window_;
  return v <= 0 ? 0 : v / kBlock * kBlock;
}

const uint16_t* KvCache::window_row(const Tensor& t, int h, int pos) const {
  MXLM_DASSERT(t.windowed && pos >= t.win0 && pos < t.win1);
  return &t.win[(size_t(h) * win_cap_ + size_t(pos - t.win0)) * head_dim_];
}

// Round-to-nearest from the range: q8 symmetric per row (head_dim <= its group), q4a and q2a per
// group of 32, floats rounded. A row of n elements.
void KvCache::encode(QType t, const float* x, uint8_t* dst, int n, const uint16_t* d_fit, const uint16_t* m_fit) const {
  if (t == QType::kF32) {
    std::memcpy(dst, x, sizeof(float) * n);
    return;
  }
  if (t == QType::kF16 || t == QType::kBF16) {
    quantize_row(t, x, n, dst);
    return;
  }
  const QRowLayout L = qrow_layout(t, n);
  std::memset(dst, 0, qtype_row_bytes(t, uint64_t(n)).value());
  const int G = qtype_info(t).block_elems, bits = qtype_info(t).bits;
  const bool affine = t == QType::kQ4AG32 || t == QType::kQ2AG32;
  const float top = float((1 << bits) - 1);
  // The affine groups' (d, m): whole groups four at a time (fit_affine4), the rest one by one.
  uint16_t dh[kMaxAffineGroups], mh[kMaxAffineGroups];
  if (affine && d_fit) {
    std::copy_n(d_fit, L.nb, dh);
    std::copy_n(m_fit, L.nb, mh);
  } else if (affine) {
    MXLM_ASSERT(G == kAffineGroup && L.nb <= kMaxAffineGroups);
    int64_t fitted = 0;
    for (const int64_t whole = n / kAffineGroup; fitted < whole;) {
      const int lanes = int(std::min<int64_t>(4, whole - fitted));
      fit_affine4(x + fitted * kAffineGroup, lanes, top, dh + fitted, mh + fitted);
      fitted += lanes;
    }
    for (int64_t g = fitted; g < L.nb; ++g) {
      const int e0 = int(g) * G;
      fit_affine(x + e0, std::min(G, n - e0), top, &dh[g], &mh[g]);
    }
  }
  for (int64_t g = 0; g < L.nb; ++g) {
    const int e0 = int(g) * G, ne = std::min(G, n - e0);
    if (affine) {
      quantize_affine_group(x + e0, ne, f16_to_f32(dh[g]), f16_to_f32(mh[g]), bits, dst + L.q_off + size_t(g) * L.qbytes);
      std::memcpy(dst + L.d_off + 2 * g, &dh[g], 2);
      std::memcpy(dst + L.m_off + 2 * g, &mh[g], 2);
    } else {
      uint8_t q[128];
      // w = d * (q - 128): d = max|x| / 127 as f16.
      float lo = x[e0], hi = x[e0];
      for (int i = 1; i < ne; ++i) {
        lo = std::min(lo, x[e0 + i]);
        hi = std::max(hi, x[e0 + i]);
      }
      const uint16_t dq = f32_to_f16(std::max(std::fabs(lo), std::fabs(hi)) / 127.0f);
      const float d = f16_to_f32(dq);
      for (int i = 0; i < G; ++i) {
        const float r = i < ne && d > 0 ? round_even(x[e0 + i] / d) : 0.0f;
        q[i] = uint8_t(std::clamp(r, -127.0f, 127.0f) + 128.0f);
      }
      std::memcpy(dst + L.d_off + 2 * g, &dq, 2);
      pack_group(bits, G, q, dst + L.q_off + size_t(g) * L.qbytes);
    }
  }
}

void KvCache::store_rows(Tensor& t, int h, int p0, int n, const float* x, size_t ld, float* scratch) const {
  const size_t D = size_t(head_dim_);
  for (int b = 0; b < n; ++b) {
    const float* src = x + size_t(b) * ld + h * D;
    if (t.rotated) {
      std::copy(src, src + D, scratch);
      rotate(scratch);
      src = scratch;
    }
    encode(t.qtype, src, &t.q[size_t(h) * t.head_bytes + size_t(p0 + b) * t.seg], head_dim_);
  }
}

// A block is head_dim rows, channel c's row the kBlock keys' element c as one q2a_g32 row.
template <class RowAt>
void KvCache::encode_blocks(Tensor& t, int h, int b0, int b1, RowAt row_at, float* chans) const {
  const int D = head_dim_;
  const size_t rb = t.seg / size_t(D);
  for (int b = b0; b < b1; ++b) {
    for (int i = 0; i < kBlock; ++i) {
      const float* r = row_at(b * kBlock + i);
      for (int c = 0; c < D; ++c) chans[size_t(c) * kBlock + i] = r[c];
    }
    uint8_t* blk = &t.q[size_t(h) * t.head_bytes + size_t(b) * t.seg];
    int c = 0;
    // The channels' rows (one group each, kBlock floats apart) fitted four at a time.
    static_assert(kBlock == kAffineGroup);
    for (; c + 4 <= D && t.qtype == QType::kQ2AG32; c += 4) {
      uint16_t dh[4], mh[4];
      fit_affine4(&chans[size_t(c) * kBlock], 4, 3.0f, dh, mh);
      for (int l = 0; l < 4; ++l) {
        encode(t.qtype, &chans[size_t(c + l) * kBlock], blk + size_t(c + l) * rb, kBlock, &dh[l], &mh[l]);
      }
    }
    for (; c < D; ++c) encode(t.qtype, &chans[size_t(c) * kBlock], blk + size_t(c) * rb, kBlock);
  }
}

void KvCache::store(int l, int p0, int n, const float* k, const float* v, size_t ld, ThreadPool* pool) {
  MXLM_ASSERT(l >= 0 && l < n_layers_ && p0 >= 0 && n > 0 && p0 + n <= n_ctx_);
  const size_t D = size_t(head_dim_);
  Tensor* const ts[2] = {&k_[size_t(l)], &v_[size_t(l)]};
  const float* const xs[2] = {k, v};
  for (Tensor* t : ts) {
    if (t->windowed && t->win1 != p0) {
      // A batch overwriting later positions (eval_layer over another sequence): as truncate.
      MXLM_ASSERT(p0 < t->win1);
      truncate(*t, p0);
    }
  }
  const int threads = pool ? pool->size() : 1;
  if (scratch_.size() < size_t(threads) * scratch_floats()) scratch_.resize(size_t(threads) * scratch_floats());
  // A task per tensor and head: their rows and blocks are disjoint, and each is encoded as it
  // would be alone, so the cache's bytes do not depend on the threads.
  auto task = [&](int task, int thread) {
    Tensor& t = *ts[task / n_heads_];
    const float* x = xs[task / n_heads_];
    const int h = task % n_heads_;
    float* scratch = &scratch_[size_t(thread) * scratch_floats()];
    if (!t.per_channel) {
      store_rows(t, h, p0, n, x, ld, scratch);
      return;
    }
    // The key blocks this batch completes, from the window's rows before p0 and the batch's.
    float* row = scratch + D * kBlock;
    encode_blocks(
        t, h, p0 / kBlock, (p0 + n) / kBlock,
        [&](int pos) {
          if (pos >= p0) return x + size_t(pos - p0) * ld + h * D;
          const uint16_t* w = window_row(t, h, pos);
          for (size_t i = 0; i < D; ++i) row[i] = f16_to_f32(w[i]);
          return const_cast<const float*>(row);
        },
        scratch);
  };
  // Float rows of one token are copies: not worth a parallel region.
  if (pool && (n > 1 || is_coded(ts[0]->type) || is_coded(ts[1]->type))) {
    pool->run(2 * n_heads_, task);
  } else {
    for (int i = 0; i < 2 * n_heads_; ++i) task(i, 0);
  }
}

void KvCache::round_window(int l, int n, float* k, float* v, size_t ld) const {
  const size_t D = size_t(head_dim_);
  for (auto [t, x] : {std::pair{&k_[size_t(l)], k}, std::pair{&v_[size_t(l)], v}}) {
    if (!t->windowed) continue;
    for (int b = 0; b < n; ++b) {
      float* r = x + size_t(b) * ld;
      for (size_t i = 0; i < size_t(n_heads_) * D; ++i) r[i] = f16_to_f32(f32_to_f16(r[i]));
    }
  }
}

void KvCache::settle(int l, int p0, int n, const float* k, const float* v, size_t ld) {
  const size_t D = size_t(head_dim_);
  for (auto [t, x] : {std::pair{&k_[size_t(l)], k}, std::pair{&v_[size_t(l)], v}}) {
    if (!t->windowed) continue;
    const int lo = quant_end(*t, p0 + n - 1), hi = p0 + n;
    MXLM_ASSERT(lo >= t->win0 && hi - lo <= win_cap_);
    for (int h = 0; h < n_heads_; ++h) {
      uint16_t* base = &t->win[size_t(h) * win_cap_ * D];
      if (lo < p0) std::memmove(base, base + size_t(lo - t->win0) * D, sizeof(uint16_t) * D * size_t(p0 - lo));
      for (int pos = std::max(lo, p0); pos < hi; ++pos) {
        const float* src = x + size_t(pos - p0) * ld + h * D;
        for (size_t i = 0; i < D; ++i) base[size_t(pos - lo) * D + i] = f32_to_f16(src[i]);
      }
    }
    t->win0 = lo;
    t->win1 = hi;
  }
}

void KvCache::row(const Tensor& t, int h, int pos, float* out) const {
  const int D = head_dim_;
  if (t.windowed && pos >= t.win0 && pos < t.win1) {
    const uint16_t* w = window_row(t, h, pos);
    for (int i = 0; i < D; ++i) out[i] = f16_to_f32(w[i]);
    return;
  }
  quantized_row(t, h, pos, out);
}

void KvCache::quantized_row(const Tensor& t, int h, int pos, float* out) const {
  const int D = head_dim_;
  const uint8_t* base = rows(t, h);
  if (t.per_channel) {
    std::vector<float> blk(size_t(kBlock) * D);
    decode_block(t, h, pos / kBlock, blk.data());
    std::copy_n(&blk[size_t(pos % kBlock) * D], D, out);
    return;
  }
  dequantize_row(t.qtype, base + size_t(pos) * t.seg, D, out);
  if (t.rotated) unrotate(out);
}

void KvCache::decode_block(const Tensor& t, int h, int b, float* out) const {
  const int D = head_dim_;
  const size_t rb = t.seg / size_t(D);
  const uint8_t* blk = rows(t, h) + size_t(b) * t.seg;
  float col[kBlock];
  for (int c = 0; c < D; ++c) {
    dequantize_row(t.qtype, blk + size_t(c) * rb, kBlock, col);
    for (int i = 0; i < kBlock; ++i) out[size_t(i) * D + c] = col[i];
  }
}

void KvCache::truncate(int n) {
  MXLM_ASSERT(n >= 0 && n <= n_ctx_);
  for (std::vector<Tensor>* ts : {&k_, &v_}) {
    for (Tensor& t : *ts) truncate(t, n);
  }
}

void KvCache::truncate(Tensor& t, int n) {
  if (!t.windowed) return;
  MXLM_ASSERT(n <= t.win1);
  const size_t D = size_t(head_dim_);
  const int lo = n > 0 ? quant_end(t, n - 1) : 0;
  if (lo >= t.win0) {
    // The rows are in the window: it keeps [lo, n).
    for (int h = 0; h < n_heads_; ++h) {
      uint16_t* base = &t.win[size_t(h) * win_cap_ * D];
      std::memmove(base, base + size_t(lo - t.win0) * D, sizeof(uint16_t) * D * size_t(n - lo));
    }
  } else {
    // Rows before the window are decoded from their quantized form.
    std::vector<float> keep(size_t(n - lo) * D);
    for (int h = 0; h < n_heads_; ++h) {
      for (int pos = lo; pos < n; ++pos) row(t, h, pos, &keep[size_t(pos - lo) * D]);
      for (size_t i = 0; i < keep.size(); ++i) t.win[size_t(h) * win_cap_ * D + i] = f32_to_f16(keep[i]);
    }
  }
  t.win0 = lo;
  t.win1 = n;
}

void KvCache::shift(int n_keep, int n_discard, int n_past, const float* cos_d, const float* sin_d) {
  MXLM_ASSERT(n_keep >= 0 && n_discard > 0 && n_keep + n_discard <= n_past && n_past <= n_ctx_);
  const int D = head_dim_, half = D / 2, n_new = n_past - n_discard;
  // RoPE by -n_discard positions: (a, b) -> (a cos + b sin, b cos - a sin).
  auto rerotate = [&](float* x) {
    for (int i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * cos_d[i] + b * sin_d[i];
      x[i + half] = b * cos_d[i] - a * sin_d[i];
    }
  };
  std::vector<float> x(static_cast<size_t>(D)), rows_new, blk;
  for (int l = 0; l < n_layers_; ++l) {
    for (Tensor* t : {&k_[size_t(l)], &v_[size_t(l)]}) {
      const bool is_k = t == &k_[size_t(l)];
      if (t->windowed) {
        // Every position the new layout re-forms (whole key blocks from the first one that
        // moves, the window's rows), decoded at its old position and rotated to its new one:
        // then the blocks are encoded again and the window refilled.
        const int lo = n_new > 0 ? quant_end(*t, n_new - 1) : 0;
        const int from = t->per_channel ? std::min(n_keep / kBlock * kBlock, lo) : lo;
        rows_new.resize(size_t(n_new - from) * D);
        blk.resize(size_t(kBlock) * D);
        for (int h = 0; h < n_heads_; ++h) {
          int cached = -1;  // the key block in blk (each decoded once)
          for (int p = from; p < n_new; ++p) {
            float* r = &rows_new[size_t(p - from) * D];
            const int old = p < n_keep ? p : p + n_discard;
            if (t->per_channel && old < t->win0) {
              if (old / kBlock != cached) decode_block(*t, h, cached = old / kBlock, blk.data());
              std::copy_n(&blk[size_t(old % kBlock) * D], D, r);
            } else {
              row(*t, h, old, r);
            }
            if (is_k && p >= n_keep) rerotate(r);
          }
          if (t->per_channel) {
            encode_blocks(
                *t, h, from / kBlock, lo / kBlock, [&](int pos) { return &rows_new[size_t(pos - from) * D]; },
                scratch_.data());
          } else {
            uint8_t* b = const_cast<uint8_t*>(rows(*t, h));
            std::memmove(b + size_t(n_keep) * t->seg, b + size_t(n_keep + n_discard) * t->seg, size_t(n_new - n_keep) * t->seg);
          }
          for (size_t i = size_t(lo - from) * D; i < rows_new.size(); ++i) {
            t->win[size_t(h) * win_cap_ * D + i - size_t(lo - from) * D] = f32_to_f16(rows_new[i]);
          }
        }
        t->win0 = lo;
        t->win1 = n_new;
        continue;
      }
      for (int h = 0; h < n_heads_; ++h) {
        uint8_t* b = &t->q[size_t(h) * t->head_bytes];
        if (!is_k) {
          std::memmove(b + size_t(n_keep) * t->seg, b + size_t(n_keep + n_discard) * t->seg, size_t(n_new - n_keep) * t->seg);
          continue;
        }
        for (int p = n_keep; p < n_new; ++p) {
          const uint8_t* src = b + size_t(p + n_discard) * t->seg;
          if (t->qtype == QType::kF32) {
            std::memcpy(x.data(), src, sizeof(float) * D);
          } else {
            dequantize_row(t->qtype, src, D, x.data());
            if (t->rotated) unrotate(x.data());
          }
          rerotate(x.data());
          uint8_t* dst = b + size_t(p) * t->seg;
          if (t->rotated) rotate(x.data());
          encode(t->qtype, x.data(), dst, D);
        }
      }
    }
  }
}

size_t KvCache::bytes_per_token() const {
  size_t b = 0;
  for (int l = 0; l < n_layers_; ++l) {
    b += kv_bytes_per_token(k_[size_t(l)].type, true, n_heads_, head_dim_) +
         kv_bytes_per_token(v_[size_t(l)].type, false, n_heads_, head_dim_);
  }
  return b;
}

size_t KvCache::window_bytes() const {
  size_t b = 0;
  for (const std::vector<Tensor>* ts : {&k_, &v_}) {
    for (const Tensor& t : *ts) b += t.win.size() * sizeof(uint16_t);
  }
  return b;
}

double KvCache::read_bytes(int n) const {
  double b = 0;
  for (int l = 0; l < n_layers_; ++l) {
    b += kv_read_bytes(k_[size_t(l)].type, true, n_heads_, head_dim_, n, window_) +
         kv_read_bytes(v_[size_t(l)].type, false, n_heads_, head_dim_, n, window_);
  }
  return b;
}

}  // namespace mxlm
