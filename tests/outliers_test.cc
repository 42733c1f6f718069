// Sparse outliers (model/outliers.h): the predicted gains are the true drop of the output error
// tr(ΔW H ΔWᵀ) (computed here in double from the dequantized rows plus the CSR), the first pick
// is the best single correction, the picks do not depend on the thread count, planted outlier
// weights are what they find, and bad arguments are rejected.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "base/error.h"
#include "kernels/quant.h"
#include "model/encode.h"
#include "model/outliers.h"
#include "tests/synthetic_layer.h"

namespace mxlm {
namespace {

using test::Layer;

// encode_test's synthetic layer (tests/synthetic_layer.h: correlated inputs, T = 2k tokens) with
// `planted` weights per row made 15× larger (their own generator, after the layer's draws).
Layer make_layer(int64_t n, int64_t k, int planted, uint32_t seed) {
  Layer L = test::make_layer(n, k, 2 * k, seed);
  std::mt19937 rng(seed + 1000);
  std::uniform_int_distribution<int64_t> col(0, k - 1);
  for (int64_t r = 0; r < n; ++r) {
    for (int p = 0; p < planted; ++p) L.w[size_t(r * k + col(rng))] *= 15.0f;
  }
  return L;
}

// tr(ΔW H ΔWᵀ) in double, ΔW = dequant(bytes) + outliers − W.
double true_error(QType t, const std::vector<uint8_t>& bytes, const SparseOutliers& o, const Layer& L) {
  const size_t rb = *qtype_row_bytes(t, uint64_t(L.k));
  std::vector<float> v(size_t(L.n * L.k));
  for (int64_t r = 0; r < L.n; ++r) dequantize_row(t, bytes.data() + size_t(r) * rb, L.k, v.data() + r * L.k);
  add_outliers(o, L.n, L.k, v.data());
  double e = 0;
  std::vector<double> d(size_t(L.k));
  for (int64_t r = 0; r < L.n; ++r) {
    for (int64_t i = 0; i < L.k; ++i) d[size_t(i)] = double(v[size_t(r * L.k + i)]) - double(L.w[size_t(r * L.k + i)]);
    for (int64_t i = 0; i < L.k; ++i) {
      double s = 0;
      for (int64_t j = 0; j < L.k; ++j) s += L.h[size_t(i * L.k + j)] * d[size_t(j)];
      e += d[size_t(i)] * s;
    }
  }
  return e;
}

std::vector<uint8_t> gptq(QType t, const Layer& L) {
  EncodeOptions o;
  return encode_tensor(t, L.w.data(), L.n, L.k, L.h.data(), o);
}

// The error after the first m picks is the dense error minus their predicted gains (to float
// rounding of g), for several m; the CSR is well formed.
TEST(Outliers, GainsAreTheTrueErrorDrop) {
  const Layer L = make_layer(96, 160, 2, 3);
  for (const char* name : {"q3_g32", "q4a_g64", "nu3_g32", "q2k_g32"}) {
    SCOPED_TRACE(name);
    const QType t = *qtype_from_name(name);
    const auto bytes = gptq(t, L);
    const auto hp = prepare_output_error_h(L.h.data(), L.k);
    const OutlierPicks p = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, L.n * L.k / 50);
    ASSERT_EQ(p.size(), L.n * L.k / 50);
    const double e0 = true_error(t, bytes, {}, L);
    EXPECT_NEAR(output_error(t, bytes.data(), L.w.data(), L.n, L.k, *hp) / e0, 1.0, 1e-4);
    for (int64_t m : {int64_t(1), int64_t(17), L.n, p.size()}) {
      const SparseOutliers o = p.first(m);
      ASSERT_EQ(o.nnz(), m);
      ASSERT_EQ(int64_t(o.row_ptr.size()), L.n + 1);
      EXPECT_EQ(o.row_ptr.back(), m);
      for (int64_t r = 0; r < L.n; ++r) {
        for (int32_t j = o.row_ptr[size_t(r)] + 1; j < o.row_ptr[size_t(r + 1)]; ++j) EXPECT_LT(o.cols[size_t(j - 1)], o.cols[size_t(j)]);
      }
      const double e = true_error(t, bytes, o, L);
      const double predicted = e0 - p.gain_of_first(m);
      EXPECT_NEAR(e / predicted, 1.0, 2e-3) << "m = " << m << ": true " << e << ", predicted " << predicted << ", dense " << e0;
      EXPECT_LT(e, e0);
    }
  }
}

// The first pick is the best single-weight correction over the whole tensor (brute force over
// every (row, column): the f16 correction gᵢ/Hᵢᵢ and its true error drop).
TEST(Outliers, FirstPickIsTheBestSingleCorrection) {
  const Layer L = make_layer(32, 96, 0, 5);
  const QType t = *qtype_from_name("q3_g32");
  const auto bytes = gptq(t, L);
  const auto hp = prepare_output_error_h(L.h.data(), L.k);
  const OutlierPicks p = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, 1);
  ASSERT_EQ(p.size(), 1);
  const double e0 = true_error(t, bytes, {}, L);
  double best = 0;
  for (int64_t r = 0; r < L.n; ++r) {
    for (int64_t i = 0; i < L.k; ++i) {
      SparseOutliers o;
      o.row_ptr.assign(size_t(L.n + 1), 0);
      for (int64_t q = r + 1; q <= L.n; ++q) o.row_ptr[size_t(q)] = 1;
      o.cols = {int32_t(i)};
      // g_i = (H Δw_r)_i from the dequantized row, in double.
      const size_t rb = *qtype_row_bytes(t, uint64_t(L.k));
      std::vector<float> v(size_t(L.k));
      dequantize_row(t, bytes.data() + size_t(r) * rb, L.k, v.data());
      double g = 0;
      for (int64_t j = 0; j < L.k; ++j) g += L.h[size_t(i * L.k + j)] * (double(v[size_t(j)]) - L.w[size_t(r * L.k + j)]);
      o.values = {f32_to_f16(float(g / L.h[size_t(i * L.k + i)]))};
      best = std::max(best, e0 - true_error(t, bytes, o, L));
    }
  }
  const double got = e0 - true_error(t, bytes, p.first(1), L);
  EXPECT_GE(got, best * (1 - 1e-3));
  EXPECT_NEAR(p.gain[0] / got, 1.0, 2e-3);
}

// Planted large weights: in a q3 encoding they carry a large part of the error (the scale search
// clips them or widens their group), and 2 % outliers remove far more of it than on the same
// layer without them. Measured: 37 % vs 18 % of the error (seed 9).
TEST(Outliers, FindPlantedOutliers) {
  const QType t = *qtype_from_name("q3_g32");
  double drop[2];
  for (int planted : {0, 2}) {
    const Layer L = make_layer(64, 128, planted, 9);
    const auto bytes = gptq(t, L);
    const auto hp = prepare_output_error_h(L.h.data(), L.k);
    const OutlierPicks p = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, L.n * 2 * 128 / 100);
    drop[planted / 2] = p.gain_of_first(p.size()) / output_error(t, bytes.data(), L.w.data(), L.n, L.k, *hp);
  }
  std::printf("q3_g32 + 2 %% outliers: %.3f of the error removed with planted weights, %.3f without\n", drop[1], drop[0]);
  EXPECT_GT(drop[1], 0.3);
  EXPECT_GT(drop[1], 1.5 * drop[0]) << "planted " << drop[1] << ", none " << drop[0];
}

TEST(Outliers, SamePicksForAnyThreadCount) {
  const Layer L = make_layer(200, 96, 1, 11);
  const QType t = *qtype_from_name("q4_g32");
  const auto bytes = gptq(t, L);
  const auto hp = prepare_output_error_h(L.h.data(), L.k);
  const OutlierPicks a = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, 300, 0, 1);
  const OutlierPicks b = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, 300, 0, 3);
  EXPECT_EQ(a.row, b.row);
  EXPECT_EQ(a.col, b.col);
  EXPECT_EQ(a.value, b.value);
  EXPECT_EQ(a.gain, b.gain);
  // A row cap limits each row's picks.
  const OutlierPicks c = pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, 300, 1);
  std::vector<int> per_row(size_t(L.n), 0);
  for (int32_t r : c.row) EXPECT_LE(++per_row[size_t(r)], 1);
}

TEST(Outliers, RejectsBadArguments) {
  const Layer L = make_layer(8, 64, 0, 1);
  const QType t = *qtype_from_name("q4_g32");
  const auto bytes = gptq(t, L);
  const auto hp = prepare_output_error_h(L.h.data(), L.k);
  EXPECT_THROW(pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, -1), Error);
  EXPECT_THROW(pick_outliers(t, bytes.data(), L.w.data(), L.n, 32, *hp, 4), Error);  // k does not match h
  EXPECT_THROW(pick_outliers(t, nullptr, L.w.data(), L.n, L.k, *hp, 4), Error);
  std::vector<float> w = L.w;
  w[5] = NAN;
  EXPECT_THROW(pick_outliers(t, bytes.data(), w.data(), L.n, L.k, *hp, 4), Error);
  EXPECT_EQ(pick_outliers(t, bytes.data(), L.w.data(), L.n, L.k, *hp, 0).size(), 0);
  EXPECT_EQ(outlier_bytes(L.n, 0), 0u);
  EXPECT_EQ(outlier_bytes(L.n, 3), 4u * 9 + 18);
}

}  // namespace
}  // namespace mxlm
