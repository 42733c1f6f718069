// Sparse outliers by error reduction per byte (outliers.h has the math).
//
// Per chunk of 64 rows (fixed: the picks do not depend on the thread count): ΔW from the
// dequantized rows (ΔW = V − W), G = ΔW · H by the f32 GEMM kernel on H's off-diagonal part (symmetric, so
// its rows are its columns) plus the diagonal, then each row's greedy sequence: the argmax of
// gᵢ² / Hᵢᵢ over the columns not yet taken, its f16 correction o = −gᵢ / Hᵢᵢ, g += o·H[i] (the
// kernel's axpy).
// The rows' sequences are merged by a heap on each row's next gain (ties: the lower row), which
// keeps every row's own order.
#include "model/outliers.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <queue>
#include <string>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/quant.h"

namespace mxlm {

namespace {

constexpr int64_t kRowChunk = 64;
constexpr float kF16Max = 65504.0f;

[[noreturn]] void fail(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, "pick_outliers: " + what); }

struct RowPick {
  int32_t col;
  uint16_t value;
  double gain;
};

}  // namespace

double OutlierPicks::gain_of_first(int64_t m) const {
  double s = 0;
  for (int64_t i = 0; i < std::min(m, size()); ++i) s += gain[size_t(i)];
  return s;
}

SparseOutliers OutlierPicks::first(int64_t m) const {
  SparseOutliers o;
  m = std::clamp<int64_t>(m, 0, size());
  if (m == 0) return o;
  std::vector<int64_t> idx(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) idx[size_t(i)] = i;
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return row[size_t(a)] != row[size_t(b)] ? row[size_t(a)] < row[size_t(b)] : col[size_t(a)] < col[size_t(b)];
  });
  o.row_ptr.assign(static_cast<size_t>(n + 1), 0);
  for (int64_t i : idx) {
    ++o.row_ptr[size_t(row[size_t(i)]) + 1];
    o.cols.push_back(col[size_t(i)]);
    o.values.push_back(value[size_t(i)]);
  }
  for (int64_t r = 0; r < n; ++r) o.row_ptr[size_t(r + 1)] += o.row_ptr[size_t(r)];
  return o;
}

OutlierPicks pick_outliers(QType t, const uint8_t* bytes, const float* w, int64_t n, int64_t k, const OutputErrorH& h,
                           int64_t max_nnz, int64_t row_cap, int threads) {
  if (n <= 0 || k <= 0) fail("shape " + std::to_string(n) + "x" + std::to_string(k) + " must have n > 0 and k > 0");
  if (!bytes || !w) fail("null bytes or weights");
  if (h.k() != k) fail("prepared h of k = " + std::to_string(h.k()) + " for a tensor of k = " + std::to_string(k));
  if (max_nnz < 0 || row_cap < 0) fail("max_nnz = " + std::to_string(max_nnz) + " and row_cap must be >= 0");
  const auto rb = qtype_row_bytes(t, uint64_t(k));
  if (!rb) fail("row size of k = " + std::to_string(k) + " overflows");
  for (int64_t i = 0; i < n * k; ++i) {
    if (!std::isfinite(w[i])) fail("weight [" + std::to_string(i / k) + "][" + std::to_string(i % k) + "] is not finite");
  }
  OutlierPicks out;
  out.n = n;
  out.k = k;
  max_nnz = std::min(max_nnz, n * k);
  if (max_nnz == 0) return out;
  const int64_t cap = std::min(k, row_cap > 0 ? row_cap : std::max<int64_t>(16, 4 * ((max_nnz + n - 1) / n)));

  const F32Kernels& fk = f32_kernels(selected_isa());
  const float* off = h.off();
  const double* diag = h.diag();
  std::vector<std::vector<RowPick>> seq(static_cast<size_t>(n));
  const int64_t nchunks = (n + kRowChunk - 1) / kRowChunk;
  const int nt = threads > 0 ? threads : std::max(1, omp_get_max_threads());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t r0 = c * kRowChunk, R = std::min(n, r0 + kRowChunk) - r0;
    std::vector<float> D(static_cast<size_t>(R * k)), G(static_cast<size_t>(R * k));
    for (int64_t r = 0; r < R; ++r) {
      float* Dr = D.data() + r * k;
      dequantize_row(t, bytes + size_t(r0 + r) * *rb, k, Dr);
      for (int64_t i = 0; i < k; ++i) Dr[i] -= w[(r0 + r) * k + i];
    }
    fk.gemm(static_cast<int>(R), 0, static_cast<int>(k), static_cast<int>(k), D.data(), size_t(k), off, size_t(k) * sizeof(float),
            QType::kF32, G.data(), size_t(k));
    std::vector<char> taken(static_cast<size_t>(k));
    for (int64_t r = 0; r < R; ++r) {
      float* g = G.data() + r * k;
      const float* Dr = D.data() + r * k;
      for (int64_t i = 0; i < k; ++i) g[i] += static_cast<float>(diag[i] * double(Dr[i]));
      std::fill(taken.begin(), taken.end(), 0);
      std::vector<RowPick>& s = seq[size_t(r0 + r)];
      while (int64_t(s.size()) < cap) {
        int64_t best = -1;
        double best_v = 0;
        for (int64_t i = 0; i < k; ++i) {
          if (taken[size_t(i)] || !(diag[i] > 0)) continue;
          const double v = double(g[i]) * double(g[i]) / diag[i];
          if (v > best_v) best_v = v, best = i;
        }
        if (best < 0) break;
        const double hii = diag[best];
        const uint16_t q = f32_to_f16(std::clamp(static_cast<float>(-double(g[best]) / hii), -kF16Max, kF16Max));
        const double o = f16_to_f32(q);
        const double gain = -2.0 * o * double(g[best]) - o * o * hii;
        if (!(gain > 0)) break;
        s.push_back({static_cast<int32_t>(best), q, gain});
        taken[size_t(best)] = 1;
        // g = H Δwᵀ with Δw_best raised by o: g += o·H[best] (off-diagonal row, then the diagonal).
        fk.axpy(static_cast<float>(o), off + best * k, g, static_cast<int>(k));
        g[best] += static_cast<float>(o * hii);
      }
    }
  }
  // Merge by gain: each row's next pick in a max-heap (ties: the lower row first).
  using Head = std::pair<double, int64_t>;  // (gain, −row)
  std::priority_queue<Head> heap;
  std::vector<size_t> next(static_cast<size_t>(n), 0);
  for (int64_t r = 0; r < n; ++r) {
    if (!seq[size_t(r)].empty()) heap.push({seq[size_t(r)][0].gain, -r});
  }
  while (!heap.empty() && out.size() < max_nnz) {
    const int64_t r = -heap.top().second;
    heap.pop();
    const RowPick& p = seq[size_t(r)][next[size_t(r)]++];
    out.row.push_back(static_cast<int32_t>(r));
    out.col.push_back(p.col);
    out.value.push_back(p.value);
    out.gain.push_back(p.gain);
    if (next[size_t(r)] < seq[size_t(r)].size()) heap.push({seq[size_t(r)][next[size_t(r)]].gain, -r});
  }
  return out;
}

void add_outliers(const SparseOutliers& o, int64_t n, int64_t k, float* w) {
  if (o.row_ptr.empty()) return;
  MXLM_ASSERT(int64_t(o.row_ptr.size()) == n + 1);
  for (int64_t r = 0; r < n; ++r) {
    for (int32_t j = o.row_ptr[size_t(r)]; j < o.row_ptr[size_t(r + 1)]; ++j) {
      MXLM_ASSERT(o.cols[size_t(j)] >= 0 && o.cols[size_t(j)] < k);
      w[r * k + o.cols[size_t(j)]] += f16_to_f32(o.values[size_t(j)]);
    }
  }
}

}  // namespace mxlm
