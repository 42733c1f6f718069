// attend(): see runtime/attention.h.

#include "runtime/attention.h"

#include <algorithm>

namespace mxlm {

size_t attention_window_scratch(const KvCache& kv, int rows, int nb) {
  return size_t(rows) * size_t(kv.window() + KvCache::kBlock + nb);
}

void attend(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
            int group, const float* q, const AttentionScratch& s, float* out) {
  const KvCache::Tensor& K = kv.keys(l);
  const KvCache::Tensor& V = kv.values(l);
  const int D = kv.head_dim(), G = KvCache::kBlock;
  const int R = nb * group, pl = pf + nb - 1, T = pl + 1, p0 = batch.p0;
  const size_t ldb = batch.ld * sizeof(float);
  float* sc = s.scores;
  auto pos_of = [&](int r) { return pf + r / group; };
  // Full-precision rows of positions [lo, T) of tensor t: the window's (f16) before p0, then the
  // batch's (f32, rounded to f16 alike). fn(first position, rows, row stride in bytes, format,
  // count).
  auto window_runs = [&](const KvCache::Tensor& t, const float* x, int lo, auto fn) {
    if (lo < p0) fn(lo, kv.window_row(t, h, lo), size_t(D) * sizeof(uint16_t), QType::kF16, p0 - lo);
    const int b = std::max(lo, p0);
    if (b < T) fn(b, x + size_t(b - p0) * batch.ld + size_t(h) * D, ldb, QType::kF32, T - b);
  };

  // scores = q·Kᵀ.
  const int kq_hi = kv.quant_end(K, pl);
  if (K.per_channel) {
    const size_t rb = K.seg / size_t(D);
    for (int b = 0; b < kq_hi / G; ++b) {
      kr.gemm_nn(R, G, D, q, size_t(D), kv.rows(K, h) + size_t(b) * K.seg, rb, K.qtype, sc + size_t(b) * G, size_t(T), false);
    }
  } else if (gemm_i8_reads(K.qtype) && D <= kGemmI8MaxK) {
    // int8 and int4 keys: the query quantized to int8 per row, exact integer dots (f32_ops.h).
    kr.gemm_i8(R, kq_hi, D, q, size_t(D), kv.rows(K, h), K.seg, K.qtype, sc, size_t(T));
  } else {
    kr.gemm(R, 0, kq_hi, D, q, size_t(D), kv.rows(K, h), K.seg, K.qtype, sc, size_t(T));
  }
  if (K.windowed) {
    const int lo = kv.quant_end(K, pf), nw = T - lo;
    float* ws = s.wscores;
    window_runs(K, batch.k, lo, [&](int p, const void* rows, size_t stride, QType type, int cnt) {
      kr.gemm(R, 0, cnt, D, q, size_t(D), rows, stride, type, ws + (p - lo), size_t(nw));
    });
    for (int r = 0; r < R; ++r) {
      const int qe = kv.quant_end(K, pos_of(r));
      std::copy(ws + size_t(r) * nw + (qe - lo), ws + size_t(r) * nw + nw, sc + size_t(r) * T + qe);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* row = sc + size_t(r) * T;
    const int n_keys = pos_of(r) + 1;
    kr.softmax(row, n_keys);
    std::fill(row + n_keys, row + T, 0.0f);
  }

  // out = P·V: the quantized values' part, then the window's. A row's probabilities over its
  // window positions move to wscores (zeros before them), leaving zeros in the scores.
  const int vq_hi = kv.quant_end(V, pl);
  int vlo = T;
  if (V.windowed) {
    vlo = kv.quant_end(V, pf);
    const int nw = T - vlo;
    float* wp = s.wscores;
    for (int r = 0; r < R; ++r) {
      const int qe = kv.quant_end(V, pos_of(r));
      float* row = sc + size_t(r) * T;
      float* wrow = wp + size_t(r) * nw;
      std::fill(wrow, wrow + (qe - vlo), 0.0f);
      std::copy(row + qe, row + T, wrow + (qe - vlo));
      std::fill(row + qe, row + T, 0.0f);
    }
  }
  kr.gemm_nn(R, D, vq_hi, sc, size_t(T), kv.rows(V, h), V.seg, V.qtype, out, size_t(D), false);
  if (V.rotated) {
    for (int r = 0; r < R; ++r) kv.unrotate(out + size_t(r) * D);
  }
  if (V.windowed) {
    // One chain over the window's positions in ascending order, whichever part of them the
    // batch holds: the same rounding for a prompt in one batch or token by token.
    const int nw = T - vlo;
    window_runs(V, batch.v, vlo, [&](int p, const void* rows, size_t stride, QType type, int cnt) {
      kr.gemm_nn(R, D, cnt, s.wscores + (p - vlo), size_t(nw), rows, stride, type, s.out2, size_t(D), p > vlo);
    });
    for (size_t i = 0; i < size_t(R) * D; ++i) out[i] += s.out2[i];
  }
}

}  // namespace mxlm
