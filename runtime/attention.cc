// attend(), attend_slice(), combine_slices(): see runtime/attention.h.

#include "runtime/attention.h"

#include <algorithm>
#include <cmath>

namespace mxlm {

size_t attention_window_scratch(const KvCache& kv, int rows, int nb) {
  return size_t(rows) * size_t(kv.window() + KvCache::kBlock + nb);
}

namespace {

// One chunk's attention over one KV head, in three steps per slice [a, e) of positions, each on
// the slice's score columns (position p at sc[r * lds + p - a]): the scores, their softmax, P·V.
// A slice's numbers do not depend on the row stride or on which step of another slice ran in
// between, so attend() may run every slice's scores first (one forward stream over the keys, then
// one over the values) and attend_slice() one slice's three steps, and both give the same bits.
// (Reading each slice's keys then its values, and unrotating each slice's output, cost 20-30 %
// more time than one slice in the attention benchmark at depth 2048 with slices of 512, one
// thread; in this order, unrotated once after the combination, 8-13 %.)
class HeadAttention {
 public:
  HeadAttention(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
                int group)
      : kr_(kr), kv_(kv), K_(kv.keys(l)), V_(kv.values(l)), h_(h), batch_(batch), pf_(pf), group_(group),
        D_(kv.head_dim()), R_(nb * group), pl_(pf + nb - 1) {}

  int R() const { return R_; }
  int end(int a, int slice) const { return std::min(a + slice, pl_ + 1); }

  // scores = q·Kᵀ over [a, e). ws: the window's scratch.
  void scores(const float* q, int a, int e, float* sc, size_t lds, float* ws) const {
    const int D = D_, R = R_, G = KvCache::kBlock;
    const int kq_hi = std::min(kv_.quant_end(K_, pl_), e);
    if (kq_hi > a) {
      if (K_.per_channel) {
        const size_t rb = K_.seg / size_t(D);
        for (int b = a / G; b < kq_hi / G; ++b) {
          kr_.gemm_nn(R, G, D, q, size_t(D), kv_.rows(K_, h_) + size_t(b) * K_.seg, rb, K_.qtype, sc + (b * G - a), lds,
                      false);
        }
      } else if (gemm_i8_reads(K_.qtype) && D <= kGemmI8MaxK) {
        // int8 and int4 keys: the query quantized to int8 per row, exact integer dots (f32_ops.h).
        kr_.gemm_i8(R, kq_hi - a, D, q, size_t(D), kv_.rows(K_, h_) + size_t(a) * K_.seg, K_.seg, K_.qtype, sc, lds);
      } else {
        kr_.gemm(R, 0, kq_hi - a, D, q, size_t(D), kv_.rows(K_, h_) + size_t(a) * K_.seg, K_.seg, K_.qtype, sc, lds);
      }
    }
    if (!K_.windowed) return;
    const int lo = std::clamp(kv_.quant_end(K_, pf_), a, e), nw = e - lo;
    if (nw <= 0) return;
    window_runs(K_, batch_.k, lo, e, [&](int p, const void* rows, size_t stride, QType type, int cnt) {
      kr_.gemm(R, 0, cnt, D, q, size_t(D), rows, stride, type, ws + (p - lo), size_t(nw));
    });
    for (int r = 0; r < R; ++r) {
      const int qe = std::clamp(kv_.quant_end(K_, pos_of(r)), lo, e);
      std::copy(ws + size_t(r) * nw + (qe - lo), ws + size_t(r) * nw + nw, sc + size_t(r) * lds + (qe - a));
    }
  }

  // Each row's softmax over its positions in [a, e) (none: zeros, lse -inf), zeros after them.
  void softmax(int a, int e, float* sc, size_t lds, float* lse) const {
    for (int r = 0; r < R_; ++r) {
      float* row = sc + size_t(r) * lds;
      const int n_keys = std::max(std::min(e, pos_of(r) + 1) - a, 0);
      lse[r] = kr_.softmax(row, n_keys);
      std::fill(row + n_keys, row + (e - a), 0.0f);
    }
  }

  // P·V over [a, e) in two parts: qout over the quantized values (rotated when they are: undone
  // once the slices are combined) and, where V keeps a window, wout over its rows. A row's
  // probabilities over its window positions move to ws (zeros before them), leaving zeros in the
  // scores.
  void pv(int a, int e, float* sc, size_t lds, float* ws, float* qout, float* wout) const {
    const int D = D_, R = R_;
    const int vq_hi = std::min(kv_.quant_end(V_, pl_), e);
    int vlo = e;
    if (V_.windowed) {
      vlo = std::clamp(kv_.quant_end(V_, pf_), a, e);
      const int nw = e - vlo;
      for (int r = 0; r < R; ++r) {
        const int qe = std::clamp(kv_.quant_end(V_, pos_of(r)), vlo, e);
        float* row = sc + size_t(r) * lds;
        float* wrow = ws + size_t(r) * nw;
        std::fill(wrow, wrow + (qe - vlo), 0.0f);
        std::copy(row + (qe - a), row + (e - a), wrow + (qe - vlo));
        std::fill(row + (qe - a), row + (e - a), 0.0f);
      }
    }
    if (vq_hi > a) {
      kr_.gemm_nn(R, D, vq_hi - a, sc, lds, kv_.rows(V_, h_) + size_t(a) * V_.seg, V_.seg, V_.qtype, qout, size_t(D), false);
    } else {
      std::fill(qout, qout + size_t(R) * D, 0.0f);
    }
    if (!V_.windowed) return;
    if (vlo < e) {
      // One chain over the window's positions in ascending order, whichever part of them the
      // batch holds: the same rounding for a prompt in one batch or token by token.
      const int nw = e - vlo;
      window_runs(V_, batch_.v, vlo, e, [&](int p, const void* rows, size_t stride, QType type, int cnt) {
        kr_.gemm_nn(R, D, cnt, ws + (p - vlo), size_t(nw), rows, stride, type, wout, size_t(D), p > vlo);
      });
    } else {
      std::fill(wout, wout + size_t(R) * D, 0.0f);
    }
  }

 private:
  int pos_of(int r) const { return pf_ + r / group_; }
  // Full-precision rows of positions [lo, e) of tensor t: the window's (f16) before the batch,
  // then the batch's (f32, rounded to f16 alike). fn(first position, rows, row stride in bytes,
  // format, count).
  template <class Fn>
  void window_runs(const KvCache::Tensor& t, const float* x, int lo, int e, Fn fn) const {
    const int p0 = batch_.p0, we = std::min(p0, e);
    if (lo < we) fn(lo, kv_.window_row(t, h_, lo), size_t(D_) * sizeof(uint16_t), QType::kF16, we - lo);
    const int b = std::max(lo, p0);
    if (b < e) fn(b, x + size_t(b - p0) * batch_.ld + size_t(h_) * D_, batch_.ld * sizeof(float), QType::kF32, e - b);
  }

  const F32Kernels& kr_;
  const KvCache& kv_;
  const KvCache::Tensor& K_;
  const KvCache::Tensor& V_;
  int h_;
  AttentionBatch batch_;
  int pf_, group_, D_, R_, pl_;
};

}  // namespace

void attend_slice(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
                  int group, const float* q, int a, int slice, const AttentionScratch& s, float* out, float* lse) {
  const HeadAttention att(kr, kv, l, h, batch, pf, nb, group);
  const int e = att.end(a, slice);
  const size_t W = size_t(e - a);
  att.scores(q, a, e, s.scores, W, s.wscores);
  att.softmax(a, e, s.scores, W, lse);
  att.pv(a, e, s.scores, W, s.wscores, out, out + size_t(att.R()) * kv.head_dim());
}

void combine_slices(const KvCache& kv, int l, int R, int n, const float* parts, size_t part_stride, const float* lse,
                    size_t lse_stride, float* out) {
  const KvCache::Tensor& V = kv.values(l);
  const int d = kv.head_dim();
  const size_t win = size_t(R) * d;  // a slot's window part
  for (int r = 0; r < R; ++r) {
    float* o = out + size_t(r) * d;
    float m = -INFINITY;
    for (int j = 0; j < n; ++j) m = std::max(m, lse[size_t(j) * lse_stride + size_t(r)]);
    double z = 0.0;
    for (int j = 0; j < n; ++j) z += std::exp(double(lse[size_t(j) * lse_stride + size_t(r)]) - m);
    // Sum over the slices of w_j times their part at offset off, in ascending j.
    auto add = [&](size_t off) {
      for (int j = 0; j < n; ++j) {
        const float wj = float(std::exp(double(lse[size_t(j) * lse_stride + size_t(r)]) - m) / z);
        if (wj == 0.0f) continue;  // also a slice the row does not reach (lse -inf)
        const float* p = parts + size_t(j) * part_stride + off + size_t(r) * d;
        for (int i = 0; i < d; ++i) o[i] += wj * p[i];
      }
    };
    std::fill(o, o + d, 0.0f);
    add(0);
    if (V.rotated) kv.unrotate(o);  // once for all slices: linear
    if (V.windowed) add(win);
  }
}

void attend(const F32Kernels& kr, const KvCache& kv, int l, int h, const AttentionBatch& batch, int pf, int nb,
            int group, const float* q, int slice, const AttentionScratch& s, float* out) {
  const HeadAttention att(kr, kv, l, h, batch, pf, nb, group);
  const int R = att.R(), D = kv.head_dim(), T = pf + nb, n = attention_slices(T - 1, slice);
  const size_t slot = 2 * size_t(R) * D;
  // fn(j, a, e, the slice's score columns) for every slice in order.
  auto each = [&](auto fn) {
    for (int j = 0; j < n; ++j) fn(j, j * slice, att.end(j * slice, slice), s.scores + j * slice);
  };
  // Every slice's scores (one stream over the keys), softmaxes, then P·V (one over the values).
  each([&](int, int a, int e, float* sc) { att.scores(q, a, e, sc, size_t(T), s.wscores); });
  each([&](int j, int a, int e, float* sc) { att.softmax(a, e, sc, size_t(T), s.lse + size_t(j) * R); });
  each([&](int j, int a, int e, float* sc) {
    float* part = s.parts + size_t(j) * slot;
    att.pv(a, e, sc, size_t(T), s.wscores, part, part + size_t(R) * D);
  });
  combine_slices(kv, l, R, n, s.parts, slot, s.lse, size_t(R), out);
}

}  // namespace mxlm
