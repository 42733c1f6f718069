// Float32 kernels (kernels/f32_ops.h) on every ISA against double-precision references, plus
// ISA detection and the MXLM_ISA override (kernels/isa.h).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/qtype.h"
#include "kernels/quant.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();  // 2^-23
constexpr Isa kAllIsas[] = {Isa::kRef, Isa::kAvx2, Isa::kAvx512, Isa::kNeon};
constexpr QType kWTypes[] = {QType::kF32, QType::kF16, QType::kBF16};
constexpr float kSentinel = 12345.5f;

size_t elem_bytes(QType t) { return t == QType::kF32 ? 4 : 2; }

std::vector<float> random_vec(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// Small integers: every product and partial sum is exact in float32 (|sum| < 2^24), so every ISA
// must reproduce the exact result whatever its summation order.
std::vector<float> int_vec(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> v(n);
  for (float& f : v) f = static_cast<float>(dist(rng));
  return v;
}

// A weight matrix [N][K] stored in `wtype` with a padded row stride, starting one element past an
// aligned address (no alignment is promised to kernels). `values` holds the weights as the kernel
// sees them (after rounding to wtype).
struct Weights {
  std::vector<uint8_t> storage;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
  std::vector<float> values;  // [N][K]
};

Weights make_weights(QType wtype, int N, int K, const std::vector<float>& src) {
  Weights w;
  const size_t eb = elem_bytes(wtype);
  w.row_bytes = (static_cast<size_t>(K) + 3) * eb;  // 3 elements of padding per row
  w.storage.assign(w.row_bytes * static_cast<size_t>(N) + 64, 0xff);
  uint8_t* base = w.storage.data() + eb;  // misaligned by one element
  w.data = base;
  w.values.resize(static_cast<size_t>(N) * K);
  std::vector<float> back(static_cast<size_t>(K));
  for (int n = 0; n < N; ++n) {
    const float* row = src.data() + static_cast<size_t>(n) * K;
    convert_row_from_f32(wtype, row, base + n * w.row_bytes, static_cast<size_t>(K));
    convert_row_to_f32(wtype, base + n * w.row_bytes, back.data(), static_cast<size_t>(K));
    std::memcpy(w.values.data() + static_cast<size_t>(n) * K, back.data(), back.size() * sizeof(float));
  }
  return w;
}

std::string shape_str(int M, int N, int K, int n0, int n1) {
  return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " n=[" +
         std::to_string(n0) + "," + std::to_string(n1) + ")";
}

// Runs gemm for x [M][K] (row stride K+5, misaligned by one float) against w, into y with row
// stride N+3 pre-filled with a sentinel; checks the sentinel survives outside [n0, n1) and returns
// y as [M][N].
std::vector<float> run_gemm(const F32Kernels& kern, int M, int N, int K, int n0, int n1, const std::vector<float>& x,
                            const Weights& w, QType wtype) {
  const size_t ldx = static_cast<size_t>(K) + 5;
  const size_t ldy = static_cast<size_t>(N) + 3;
  std::vector<float> xbuf(ldx * M + 1, kSentinel);
  for (int m = 0; m < M; ++m) std::memcpy(&xbuf[1 + m * ldx], &x[static_cast<size_t>(m) * K], sizeof(float) * K);
  std::vector<float> ybuf(ldy * M + 1, kSentinel);
  kern.gemm(M, n0, n1, K, xbuf.data() + 1, ldx, w.data, w.row_bytes, wtype, ybuf.data() + 1, ldy);
  std::vector<float> y(static_cast<size_t>(M) * N, 0.0f);
  EXPECT_EQ(ybuf[0], kSentinel) << "wrote before y";
  for (int m = 0; m < M; ++m) {
    for (size_t n = 0; n < ldy; ++n) {
      const float v = ybuf[1 + m * ldy + n];
      if (n >= static_cast<size_t>(n0) && n < static_cast<size_t>(n1)) {
        y[static_cast<size_t>(m) * N + n] = v;
      } else if (v != kSentinel) {
        ADD_FAILURE() << "gemm wrote y[" << m << "][" << n << "] outside [n0, n1)";
        return y;
      }
    }
  }
  return y;
}

// Checks y[m][n] for n in [n0, n1) against the double-precision product; the bound grows with
// the depth of the float summation (K / 8 lane-sequential adds plus a reduction tree).
void check_gemm(int M, int N, int K, int n0, int n1, const std::vector<float>& x, const std::vector<float>& wv,
                const std::vector<float>& y, bool exact) {
  int bad = 0;
  double worst = 0.0;
  std::string worst_at;
  for (int m = 0; m < M; ++m) {
    for (int n = n0; n < n1; ++n) {
      double ref = 0.0, mag = 0.0;
      for (int k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[static_cast<size_t>(m) * K + k]) * wv[static_cast<size_t>(n) * K + k];
        ref += p;
        mag += std::fabs(p);
      }
      const double got = y[static_cast<size_t>(m) * N + n];
      const double bound = exact ? 0.0 : (std::ceil(K / 8.0) + 8.0) * kEps * mag + 1e-30;
      const double err = std::fabs(got - ref);
      if (!(err <= bound)) {
        ++bad;
        if (!(err <= worst)) {
          worst = err;
          worst_at = "y[" + std::to_string(m) + "][" + std::to_string(n) + "] = " + std::to_string(got) +
                     ", expected " + std::to_string(ref) + " (bound " + std::to_string(bound) + ")";
        }
      }
    }
  }
  EXPECT_EQ(bad, 0) << bad << " outputs out of bound; worst " << worst_at;
}

// ---- gemm -------------------------------------------------------------------------------------

using GemmParam = std::tuple<Isa, QType, int>;  // isa, weight type, M

class F32GemmTest : public ::testing::TestWithParam<GemmParam> {
 protected:
  void SetUp() override {
    if (!isa_available(std::get<0>(GetParam()))) GTEST_SKIP() << "ISA not available on this host";
  }
  const F32Kernels& kern() const { return f32_kernels(std::get<0>(GetParam())); }
  QType wtype() const { return std::get<1>(GetParam()); }
  int m() const { return std::get<2>(GetParam()); }
};

TEST_P(F32GemmTest, MatchesDoubleReference) {
  const int M = m();
  std::mt19937 rng(1234 + M);
  for (int N : {1, 7, 33}) {
    for (int K : {1, 15, 16, 17, 100, 512, 1283}) {
      const std::vector<float> x = random_vec(rng, static_cast<size_t>(M) * K);
      const Weights w = make_weights(wtype(), N, K, random_vec(rng, static_cast<size_t>(N) * K));
      const int sub0 = N / 3, sub1 = N - N / 4;
      for (auto [n0, n1] : {std::pair{0, N}, std::pair{sub0, sub1}}) {
        if (n1 <= n0) continue;
        SCOPED_TRACE(shape_str(M, N, K, n0, n1));
        const std::vector<float> y = run_gemm(kern(), M, N, K, n0, n1, x, w, wtype());
        check_gemm(M, N, K, n0, n1, x, w.values, y, /*exact=*/false);
      }
    }
  }
}

TEST_P(F32GemmTest, ExactOnSmallIntegers) {
  const int M = m();
  std::mt19937 rng(99 + M);
  for (int N : {1, 7, 33}) {
    for (int K : {1, 15, 16, 17, 100, 512, 1283}) {
      SCOPED_TRACE(shape_str(M, N, K, 0, N));
      const std::vector<float> x = int_vec(rng, static_cast<size_t>(M) * K);
      const Weights w = make_weights(wtype(), N, K, int_vec(rng, static_cast<size_t>(N) * K));
      const std::vector<float> y = run_gemm(kern(), M, N, K, 0, N, x, w, wtype());
      check_gemm(M, N, K, 0, N, x, w.values, y, /*exact=*/true);
    }
  }
}

// The value of y[m][n] depends only on x row m, weight row n and K: the same bits whether the row
// is computed in a batch or alone, and whatever split of [n0, n1) is used (threads split N).
TEST_P(F32GemmTest, Deterministic) {
  const int M = m();
  const int N = 37;
  std::mt19937 rng(7 + M);
  // M = 1 takes weight rows one or eight at a time by row length; M >= 4 with K > 1024 runs the
  // K-sliced tiles, which must give the unsliced bits.
  for (int K : {1283, 2100}) {
    const std::vector<float> x = random_vec(rng, static_cast<size_t>(M) * K);
    const Weights w = make_weights(wtype(), N, K, random_vec(rng, static_cast<size_t>(N) * K));
    const std::vector<float> full = run_gemm(kern(), M, N, K, 0, N, x, w, wtype());
    for (int m = 0; m < M; ++m) {
      const std::vector<float> xm(x.begin() + static_cast<ptrdiff_t>(m) * K,
                                  x.begin() + static_cast<ptrdiff_t>(m + 1) * K);
      for (int split : {1, 5, 18}) {
        const std::vector<float> a = run_gemm(kern(), 1, N, K, 0, split, xm, w, wtype());
        const std::vector<float> b = run_gemm(kern(), 1, N, K, split, N, xm, w, wtype());
        for (int n = 0; n < N; ++n) {
          const float got = n < split ? a[n] : b[n];
          ASSERT_EQ(got, full[static_cast<size_t>(m) * N + n]) << "K=" << K << " m=" << m << " n=" << n << " split=" << split;
        }
      }
    }
  }
}

// Enough weight rows to span several of the kernels' N blocks.
TEST_P(F32GemmTest, ManyRows) {
  const int M = m();
  if (M > 17) GTEST_SKIP() << "covered by smaller M";
  const int N = 203, K = 1283;
  std::mt19937 rng(55 + M);
  const std::vector<float> x = random_vec(rng, static_cast<size_t>(M) * K);
  const Weights w = make_weights(wtype(), N, K, random_vec(rng, static_cast<size_t>(N) * K));
  SCOPED_TRACE(shape_str(M, N, K, 3, 198));
  const std::vector<float> y = run_gemm(kern(), M, N, K, 3, 198, x, w, wtype());
  check_gemm(M, N, K, 3, 198, x, w.values, y, /*exact=*/false);
}

TEST_P(F32GemmTest, EmptyRangesWriteNothing) {
  const int M = m();
  const int N = 8, K = 17;
  std::mt19937 rng(3);
  const std::vector<float> x = random_vec(rng, static_cast<size_t>(M) * K);
  const Weights w = make_weights(wtype(), N, K, random_vec(rng, static_cast<size_t>(N) * K));
  run_gemm(kern(), M, N, K, 4, 4, x, w, wtype());  // the sentinel checks are the test
}

std::string gemm_name(const ::testing::TestParamInfo<GemmParam>& info) {
  return std::string(isa_name(std::get<0>(info.param))) + "_" +
         std::string(qtype_info(std::get<1>(info.param)).name) + "_M" + std::to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(AllIsas, F32GemmTest,
                         ::testing::Combine(::testing::ValuesIn(kAllIsas), ::testing::ValuesIn(kWTypes),
                                            ::testing::Values(1, 3, 4, 5, 17, 64)),
                         gemm_name);

// ---- vector ops -------------------------------------------------------------------------------

class F32OpsTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!isa_available(GetParam())) GTEST_SKIP() << "ISA not available on this host";
  }
  const F32Kernels& kern() const { return f32_kernels(GetParam()); }
};

constexpr int kSizes[] = {1, 2, 7, 8, 15, 16, 17, 31, 33, 64, 100, 1000, 4097};

TEST_P(F32OpsTest, Dot) {
  std::mt19937 rng(11);
  for (int n : kSizes) {
    std::vector<float> a = random_vec(rng, n + 1), b = random_vec(rng, n + 1);
    double ref = 0.0, mag = 0.0;
    for (int i = 0; i < n; ++i) {
      ref += static_cast<double>(a[i + 1]) * b[i + 1];
      mag += std::fabs(static_cast<double>(a[i + 1]) * b[i + 1]);
    }
    const double got = kern().dot(a.data() + 1, b.data() + 1, n);
    EXPECT_LE(std::fabs(got - ref), (std::ceil(n / 8.0) + 8.0) * kEps * mag) << "n=" << n;
    // Exact on small integers.
    std::vector<float> ia = int_vec(rng, n), ib = int_vec(rng, n);
    double iref = 0.0;
    for (int i = 0; i < n; ++i) iref += static_cast<double>(ia[i]) * ib[i];
    EXPECT_EQ(kern().dot(ia.data(), ib.data(), n), iref) << "n=" << n;
  }
  EXPECT_EQ(kern().dot(nullptr, nullptr, 0), 0.0f);
}

TEST_P(F32OpsTest, Sum) {
  std::mt19937 rng(17);
  for (int n : kSizes) {
    std::vector<float> a = random_vec(rng, size_t(n) + 1);
    double ref = 0.0, mag = 0.0;
    for (int i = 0; i < n; ++i) {
      ref += a[size_t(i) + 1];
      mag += std::fabs(a[size_t(i) + 1]);
    }
    // An unaligned start; eight vector sums, then their sum: bounded like dot.
    EXPECT_LE(std::fabs(kern().sum(a.data() + 1, size_t(n)) - ref), (std::ceil(n / 8.0) + 8.0) * kEps * mag) << "n=" << n;
    // Exact on small integers, whatever the order.
    const std::vector<float> ia = int_vec(rng, size_t(n));
    double iref = 0.0;
    for (float v : ia) iref += v;
    EXPECT_EQ(kern().sum(ia.data(), size_t(n)), iref) << "n=" << n;
  }
  EXPECT_EQ(kern().sum(nullptr, 0), 0.0f);
}

// y = x · B with B row-major, in f32 and in the KV cache formats: every shape class (one row, the
// 4-row tiles and their 1-3 row tails, column counts that end mid-vector and mid-group, head widths
// 64 and 128), unaligned rows with a padded stride, and nothing written outside y's [M][N] block.
// Against the sum of x times B as dequantize_row (the format's spec) gives it, each element a
// K-term sum bounded like dot; exact on small integers; a single row equals that row of a batch.
TEST_P(F32OpsTest, GemmNn) {
  std::mt19937 rng(15);
  for (QType bt : {QType::kF32, QType::kQ8G32, QType::kQ8G64, QType::kQ8G128, QType::kQ4AG32, QType::kQ2AG32, QType::kF16, QType::kBF16}) {
    for (int M : {1, 2, 3, 4, 5, 7, 9}) {
      for (int N : {1, 5, 16, 17, 33, 64, 80, 128, 130}) {
        for (int K : {0, 1, 3, 17, 64, 301}) {
          const size_t ldx = size_t(K) + 3, ldy = size_t(N) + 2;
          const size_t rb = *qtype_row_bytes(bt, uint64_t(N)) + 5;
          const std::vector<float> x = random_vec(rng, size_t(M) * ldx + 1);
          // B's rows one byte past an aligned start, and their values as the spec decodes them.
          std::vector<uint8_t> braw(size_t(K) * rb + 1);
          std::vector<float> bval(size_t(K) * N), bmax(size_t(K), 0.0f);
          for (int k = 0; k < K; ++k) {
            const std::vector<float> src = random_vec(rng, size_t(N), -2.0f, 2.0f);
            uint8_t* row = braw.data() + 1 + size_t(k) * rb;
            quantize_row(bt, src.data(), N, row);
            dequantize_row(bt, row, N, &bval[size_t(k) * N]);
            for (int n = 0; n < N; ++n) bmax[k] = std::max(bmax[k], std::fabs(bval[size_t(k) * N + n]));
          }
          std::vector<float> y(size_t(M) * ldy + 1, kSentinel);
          kern().gemm_nn(M, N, K, x.data() + 1, ldx, braw.data() + 1, rb, bt, y.data(), ldy, false);
          std::vector<double> bound(size_t(M) * N);
          for (int m = 0; m < M; ++m) {
            for (int n = 0; n < N; ++n) {
              double ref = 0.0, mag = 0.0;
              for (int k = 0; k < K; ++k) {
                const double xv = x[1 + m * ldx + k];
                ref += xv * bval[size_t(k) * N + n];
                // d * q + m may round once differently from the spec (one fma): an error of the
                // size of the group's range, not of the element (they cancel near zero).
                mag += std::fabs(xv) * (std::fabs(bval[size_t(k) * N + n]) + bmax[k]);
              }
              bound[size_t(m) * N + n] = (K + 3) * kEps * mag + 1e-30;
              ASSERT_LE(std::fabs(y[m * ldy + n] - ref), bound[size_t(m) * N + n])
                  << qtype_info(bt).name << " M=" << M << " N=" << N << " K=" << K << " m=" << m << " n=" << n;
            }
            for (size_t n = size_t(N); n < ldy && m * ldy + n < y.size(); ++n) {
              ASSERT_EQ(y[m * ldy + n], kSentinel) << "wrote past column N, M=" << M << " N=" << N << " K=" << K;
            }
          }
          if (K > 1 && GetParam() != Isa::kRef) {
            // Accumulating: rows [0, k1) then [k1, K) onto them is one chain, bit for bit; the
            // quantized formats, factored on every SIMD ISA (f32_ops.h), round once more, within
            // the bound.
            const bool factored = bt != QType::kF32 && bt != QType::kF16 && bt != QType::kBF16;
            const int k1 = K / 3;
            std::vector<float> ya(size_t(M) * ldy + 1, kSentinel);
            kern().gemm_nn(M, N, k1, x.data() + 1, ldx, braw.data() + 1, rb, bt, ya.data(), ldy, false);
            kern().gemm_nn(M, N, K - k1, x.data() + 1 + k1, ldx, braw.data() + 1 + size_t(k1) * rb, rb, bt, ya.data(), ldy,
                           true);
            if (!factored) {
              ASSERT_EQ(ya, y) << qtype_info(bt).name << " split accumulation, M=" << M << " N=" << N << " K=" << K;
            } else {
              for (int m = 0; m < M; ++m) {
                for (int n = 0; n < N; ++n) {
                  ASSERT_LE(std::fabs(ya[m * ldy + n] - y[m * ldy + n]), 2 * bound[size_t(m) * N + n])
                      << qtype_info(bt).name << " split accumulation, M=" << M << " N=" << N << " K=" << K;
                }
                for (size_t n = size_t(N); n < ldy && m * ldy + n < ya.size(); ++n) ASSERT_EQ(ya[m * ldy + n], kSentinel);
              }
            }
          }
          if (K > 0 && M > 1) {
            std::vector<float> y1(size_t(N), kSentinel);
            kern().gemm_nn(1, N, K, x.data() + 1 + (M - 1) * ldx, ldx, braw.data() + 1, rb, bt, y1.data(), size_t(N), false);
            for (int n = 0; n < N; ++n) {
              ASSERT_EQ(y1[n], y[(M - 1) * ldy + n]) << "one row differs from the batch, M=" << M << " N=" << N;
            }
          }
        }
      }
    }
  }
  // Small integers in f32: exact whatever the order.
  const int M = 5, N = 70, K = 40;
  const std::vector<float> x = int_vec(rng, size_t(M) * K), b = int_vec(rng, size_t(K) * N);
  std::vector<float> y(size_t(M) * N);
  kern().gemm_nn(M, N, K, x.data(), K, b.data(), sizeof(float) * N, QType::kF32, y.data(), N, false);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double ref = 0.0;
      for (int k = 0; k < K; ++k) ref += double(x[m * K + k]) * b[k * N + n];
      ASSERT_EQ(y[m * N + n], ref);
    }
  }
}

// gemm (y = x · Wᵀ) over rows in the KV cache formats: attention's q·Kᵀ over quantized keys.
// Against the double sum with the rows as dequantize_row gives them; every tile shape, K tails
// that end inside a group (the kernels read the group's padding and multiply it by zeros), an
// [n0, n1) window, and a row of the batch alone equals its row in the batch bit for bit.
TEST_P(F32OpsTest, GemmKvFormats) {
  std::mt19937 rng(16);
  for (QType wt : {QType::kQ8G32, QType::kQ8G64, QType::kQ8G128, QType::kQ4AG32, QType::kQ2AG32}) {
    for (int M : {1, 2, 4, 5, 8, 9}) {
      for (int K : {1, 17, 32, 64, 80, 128, 130}) {
        const int N = 23, n0 = 2, n1 = 21;
        const size_t ldx = size_t(K) + 1, ldy = size_t(N) + 3;
        const size_t rb = *qtype_row_bytes(wt, uint64_t(K)) + 3;
        const std::vector<float> x = random_vec(rng, size_t(M) * ldx);
        std::vector<uint8_t> wraw(size_t(N) * rb + 1);
        std::vector<float> wval(size_t(N) * K), wmax(size_t(N), 0.0f);
        for (int n = 0; n < N; ++n) {
          const std::vector<float> src = random_vec(rng, size_t(K), -2.0f, 2.0f);
          uint8_t* row = wraw.data() + 1 + size_t(n) * rb;
          quantize_row(wt, src.data(), K, row);
          dequantize_row(wt, row, K, &wval[size_t(n) * K]);
          for (int k = 0; k < K; ++k) wmax[n] = std::max(wmax[n], std::fabs(wval[size_t(n) * K + k]));
        }
        std::vector<float> y(size_t(M) * ldy, kSentinel);
        kern().gemm(M, n0, n1, K, x.data(), ldx, wraw.data() + 1, rb, wt, y.data(), ldy);
        for (int m = 0; m < M; ++m) {
          for (int n = 0; n < N; ++n) {
            if (n < n0 || n >= n1) {
              ASSERT_EQ(y[m * ldy + n], kSentinel) << "wrote outside [n0, n1)";
              continue;
            }
            double ref = 0.0, mag = 0.0;
            for (int k = 0; k < K; ++k) {
              const double xv = x[m * ldx + k];
              ref += xv * wval[size_t(n) * K + k];
              mag += std::fabs(xv) * (std::fabs(wval[size_t(n) * K + k]) + wmax[n]);
            }
            ASSERT_LE(std::fabs(y[m * ldy + n] - ref), (K + 3) * kEps * mag + 1e-30)
                << qtype_info(wt).name << " M=" << M << " K=" << K << " m=" << m << " n=" << n;
          }
        }
        std::vector<float> y1(size_t(N), kSentinel);
        kern().gemm(1, n0, n1, K, x.data() + (M - 1) * ldx, ldx, wraw.data() + 1, rb, wt, y1.data(), size_t(N));
        for (int n = n0; n < n1; ++n) {
          ASSERT_EQ(y1[n], y[(M - 1) * ldy + n]) << qtype_info(wt).name << " one row differs from the batch, M=" << M;
        }
      }
    }
  }
}

// gemm_i8: bitwise equal to the reference on every ISA (exact integer dots, fixed float steps),
// for any M and any N (tiles of 16 / 8 / 4 keys and their tails, short last chunks), and within
// the derived bounds of the exact product of the quantized query and of the float query.
TEST_P(F32OpsTest, GemmI8) {
  std::mt19937 rng(18);
  const F32Kernels& ref = f32_kernels(Isa::kRef);
  for (QType wt : {QType::kQ8G32, QType::kQ8G64, QType::kQ8G128, QType::kQ4AG32}) {
    for (int K : {1, 17, 32, 64, 80, 96, 128, 130, 256}) {
      for (int N : {1, 5, 8, 16, 17, 40}) {
        const int M = 3;
        const size_t ldx = size_t(K) + 1, ldy = size_t(N) + 3;
        const size_t rb = *qtype_row_bytes(wt, uint64_t(K)) + 3;
        std::vector<float> x = random_vec(rng, size_t(M) * ldx);
        x[3 % K] *= 9.0f;  // an outlier channel: its group's scale follows it
        std::fill(x.begin() + 2 * ldx, x.begin() + 2 * ldx + K, 0.0f);  // row 2: a zero query
        std::vector<uint8_t> wraw(size_t(N) * rb + 1);
        std::vector<float> wval(size_t(N) * K);
        for (int n = 0; n < N; ++n) {
          const std::vector<float> src = random_vec(rng, size_t(K), -2.0f, 2.0f + float(n % 3));
          uint8_t* row = wraw.data() + 1 + size_t(n) * rb;
          quantize_row(wt, src.data(), K, row);
          dequantize_row(wt, row, K, &wval[size_t(n) * K]);
        }
        std::vector<float> y(size_t(M) * ldy, kSentinel), yr(size_t(M) * ldy, kSentinel), y1(size_t(N), kSentinel);
        kern().gemm_i8(M, N, K, x.data(), ldx, wraw.data() + 1, rb, wt, y.data(), ldy);
        ref.gemm_i8(M, N, K, x.data(), ldx, wraw.data() + 1, rb, wt, yr.data(), ldy);
        kern().gemm_i8(1, N, K, x.data() + ldx, ldx, wraw.data() + 1, rb, wt, y1.data(), size_t(N));
        const int64_t kp = (K + 31) / 32 * 32;
        std::vector<int8_t> qa(static_cast<size_t>(kp));
        std::vector<float> qd(size_t(kp / 32)), qds(size_t(kp / 32));
        for (int m = 0; m < M; ++m) {
          quantize_act_row_ref(&x[m * ldx], K, kp, qa.data(), qd.data(), qds.data(), false);
          for (int n = 0; n < N + 3; ++n) {
            const float got = y[m * ldy + n];
            const std::string at = std::string(qtype_info(wt).name) + " K=" + std::to_string(K) + " N=" +
                                   std::to_string(N) + " m=" + std::to_string(m) + " n=" + std::to_string(n);
            if (n >= N) {
              ASSERT_EQ(got, kSentinel) << "wrote past N: " << at;
              continue;
            }
            ASSERT_EQ(std::memcmp(&got, &yr[m * ldy + n], sizeof(float)), 0) << got << " vs ref " << yr[m * ldy + n] << ": " << at;
            if (m == 1) {
              ASSERT_EQ(std::memcmp(&got, &y1[n], sizeof(float)), 0) << "one row differs from the batch: " << at;
            }
            if (m == 2) {
              ASSERT_EQ(got, 0.0f) << at;
            }
            // The exact product of the dequantized query and key, up to float rounding of the
            // fma chain over at most 2 K / 32 + 1 terms each below d * sum |a| (|w| + max|w|).
            // q4a: the offset m_g multiplies the float query's group sum (kv_kernels.cc).
            const uint8_t* row = wraw.data() + 1 + size_t(n) * rb;
            auto offset = [&](int g) {
              if (wt != QType::kQ4AG32) return 0.0;
              uint16_t h;
              std::memcpy(&h, row + 2 * ((K + 31) / 32) + 2 * g, 2);
              return double(f16_to_f32(h));
            };
            double exact = 0.0, mag = 0.0, qerr = 0.0, xw = 0.0;
            for (int k = 0; k < K; ++k) {
              const double w = wval[size_t(n) * K + k], d = qd[size_t(k / 32)], mo = offset(k / 32);
              const double xk = x[m * ldx + k];
              exact += d * qa[size_t(k)] * (w - mo) + xk * mo;
              mag += (d * std::abs(qa[size_t(k)]) + std::fabs(xk)) * (std::fabs(w) + 8.0);
              qerr += 0.5 * d * std::fabs(w - mo);
              xw += xk * w;
            }
            ASSERT_LE(std::fabs(got - exact), (2 * K / 32 + 3) * kEps * mag + 1e-30) << at;
            // Against the float query: rounding each element to int8 moves it by at most d_g / 2.
            ASSERT_LE(std::fabs(got - xw), qerr * (1 + 1e-5) + (2 * K / 32 + 3) * kEps * mag + 1e-30) << at;
          }
        }
      }
    }
  }
}

TEST_P(F32OpsTest, GemmBf16) {
  // bf16 x [M][K] and w [N][K] with padded strides, every tile shape and K tail, against double
  // sums of the same bf16 values; then y[m][n] must not depend on M, n0 or the split of N.
  std::mt19937 rng(29);
  const F32Kernels& k = kern();
  for (int K : {1, 2, 7, 16, 31, 32, 33, 64, 100, 257, 2100, 4133}) {  // the last two in slices
    for (int M : {1, 3, 4, 5, 9}) {
      const int N = 13;
      const size_t ldx = size_t(K) + 3, ldw = size_t(K) + 5, ldy = N + 2;
      std::vector<float> xf = random_vec(rng, M * ldx), wf = random_vec(rng, N * ldw);
      std::vector<uint16_t> xb(xf.size()), wb(wf.size());
      k.to_bf16(xf.data(), QType::kF32, xb.data(), xb.size());
      k.to_bf16(wf.data(), QType::kF32, wb.data(), wb.size());
      std::vector<float> y(M * ldy, kSentinel);
      k.gemm_bf16(M, 0, N, K, xb.data(), ldx, wb.data(), ldw, y.data(), ldy);
      for (int m = 0; m < M; ++m) {
        for (int n = 0; n < N; ++n) {
          double ref = 0, mag = 0;
          for (int i = 0; i < K; ++i) {
            const double p = double(bf16_to_f32(xb[m * ldx + i])) * bf16_to_f32(wb[n * ldw + i]);
            ref += p;
            mag += std::fabs(p);
          }
          EXPECT_LE(std::fabs(y[m * ldy + n] - ref), (K / 8.0 + 8.0) * kEps * mag) << "K=" << K << " M=" << M;
        }
        EXPECT_EQ(y[m * ldy + N], kSentinel);  // nothing past n1
      }
      // One row alone, and N split at 5 and 6: the same bits.
      std::vector<float> y1(ldy, kSentinel);
      for (int m = 0; m < M; ++m) {
        k.gemm_bf16(1, 0, 5, K, xb.data() + m * ldx, ldx, wb.data(), ldw, y1.data(), ldy);
        k.gemm_bf16(1, 5, 11, K, xb.data() + m * ldx, ldx, wb.data(), ldw, y1.data(), ldy);
        k.gemm_bf16(1, 11, N, K, xb.data() + m * ldx, ldx, wb.data(), ldw, y1.data(), ldy);
        for (int n = 0; n < N; ++n) EXPECT_EQ(y1[n], y[m * ldy + n]) << "K=" << K << " M=" << M << " m=" << m << " n=" << n;
      }
    }
  }
}

TEST_P(F32OpsTest, ToBf16RoundsToNearestEven) {
  std::mt19937 rng(31);
  std::vector<float> f = random_vec(rng, 1000, -1e4f, 1e4f);
  // Exact ties (the low 16 bits 0x8000) both ways, and values a bf16 holds exactly.
  for (uint32_t u : {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f800000u, 0x00000000u, 0x80000000u, 0x477fffffu}) {
    float v;
    std::memcpy(&v, &u, 4);
    f.push_back(v);
  }
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{17}, f.size()}) {
    std::vector<uint16_t> got(n + 1, 0xabcd);
    kern().to_bf16(f.data(), QType::kF32, got.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(got[i], f32_to_bf16(f[i])) << i;
    EXPECT_EQ(got[n], 0xabcd);
    std::vector<uint16_t> h(n), b(n), via(n), from_b(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = f32_to_f16(f[i] / 1e2f);
      b[i] = f32_to_bf16(f[i]);
    }
    kern().to_bf16(h.data(), QType::kF16, via.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(via[i], f32_to_bf16(f16_to_f32(h[i]))) << i;
    kern().to_bf16(b.data(), QType::kBF16, from_b.data(), n);
    EXPECT_EQ(from_b, b);
  }
}

TEST_P(F32OpsTest, Axpy) {
  std::mt19937 rng(12);
  for (int n : kSizes) {
    const std::vector<float> x = random_vec(rng, n + 1);
    std::vector<float> y = random_vec(rng, n + 2);
    const std::vector<float> y0 = y;
    const float a = 0.37f;
    kern().axpy(a, x.data() + 1, y.data() + 1, n);
    EXPECT_EQ(y[0], y0[0]);
    EXPECT_EQ(y[n + 1], y0[n + 1]) << "wrote past the end, n=" << n;
    for (int i = 0; i < n; ++i) {
      const double ref = static_cast<double>(y0[i + 1]) + static_cast<double>(a) * x[i + 1];
      ASSERT_LE(std::fabs(y[i + 1] - ref), kEps * std::fabs(ref) + 1e-38) << "n=" << n << " i=" << i;
    }
  }
}

TEST_P(F32OpsTest, RmsNorm) {
  std::mt19937 rng(13);
  for (int n : kSizes) {
    for (bool alias : {false, true}) {
      const std::vector<float> x = random_vec(rng, n + 1, -3.0f, 3.0f);
      const std::vector<float> w = random_vec(rng, n + 1, 0.5f, 1.5f);
      std::vector<float> y(n + 2, kSentinel);
      const float eps = 1e-5f;
      double ss = 0.0;
      for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i + 1]) * x[i + 1];
      const double scale = 1.0 / std::sqrt(ss / n + eps);
      std::vector<float> xin = x;
      float* out = alias ? xin.data() + 1 : y.data() + 1;
      kern().rmsnorm(xin.data() + 1, w.data() + 1, out, n, eps);
      if (!alias) {
        EXPECT_EQ(y[n + 1], kSentinel) << "wrote past the end, n=" << n;
      }
      for (int i = 0; i < n; ++i) {
        const double ref = x[i + 1] * scale * w[i + 1];
        ASSERT_LE(std::fabs(out[i] - ref), (8.0 + n / 8.0) * kEps * std::fabs(ref) + 1e-30)
            << "n=" << n << " i=" << i << " alias=" << alias;
      }
    }
  }
}

double silu_mul_ref(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

TEST_P(F32OpsTest, SwiGlu) {
  std::mt19937 rng(14);
  for (int n : kSizes) {
    for (int alias = 0; alias < 3; ++alias) {  // 0: separate out, 1: out = gate, 2: out = up
      std::vector<float> g = random_vec(rng, n + 1, -12.0f, 12.0f);
      std::vector<float> u = random_vec(rng, n + 1, -2.0f, 2.0f);
      const std::vector<float> g0 = g, u0 = u;
      std::vector<float> o(n + 2, kSentinel);
      float* out = alias == 0 ? o.data() + 1 : alias == 1 ? g.data() + 1 : u.data() + 1;
      kern().swiglu(g.data() + 1, u.data() + 1, out, n);
      if (alias == 0) {
        EXPECT_EQ(o[n + 1], kSentinel) << "wrote past the end, n=" << n;
      }
      for (int i = 0; i < n; ++i) {
        const double ref = silu_mul_ref(g0[i + 1], u0[i + 1]);
        ASSERT_LE(std::fabs(out[i] - ref), 5e-7 * std::fabs(ref) + 1e-37) << "n=" << n << " i=" << i;
      }
    }
  }
}

// Relative error of silu over the whole float range that matters, including where e^-g
// overflows (the result is then a tiny negative number or -0) and where it underflows.
TEST_P(F32OpsTest, SwiGluRange) {
  std::vector<float> g;
  for (double v = -110.0; v <= 110.0; v += 0.0137) g.push_back(static_cast<float>(v));
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 88.7f, -88.7f, 1e30f, -1e30f}) g.push_back(v);
  const int n = static_cast<int>(g.size());
  std::vector<float> u(g.size(), 1.0f), out(g.size());
  kern().swiglu(g.data(), u.data(), out.data(), n);
  double worst = 0.0;
  for (int i = 0; i < n; ++i) {
    const double ref = silu_mul_ref(g[i], 1.0);
    ASSERT_LE(std::fabs(out[i] - ref), 5e-7 * std::fabs(ref) + 1e-36) << "g=" << g[i] << " got " << out[i];
    if (std::fabs(ref) > 1e-30) worst = std::max(worst, std::fabs(out[i] - ref) / std::fabs(ref));
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", worst);
  RecordProperty("worst_rel_err", buf);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float gn[3] = {nan, 1.0f, nan}, un[3] = {1.0f, nan, 2.0f}, on[3];
  kern().swiglu(gn, un, on, 3);
  EXPECT_TRUE(std::isnan(on[0]) && std::isnan(on[1]) && std::isnan(on[2]));
}

TEST_P(F32OpsTest, Softmax) {
  std::mt19937 rng(15);
  for (int n : kSizes) {
    for (float range : {1.0f, 30.0f, 200.0f}) {
      std::vector<float> x = random_vec(rng, n + 2, -range, range);
      if (n > 3) x[1 + n / 2] = -std::numeric_limits<float>::infinity();  // a masked position
      x[0] = x[n + 1] = kSentinel;
      const std::vector<float> x0 = x;
      const float lse = kern().softmax(x.data() + 1, n);
      EXPECT_EQ(x[0], kSentinel);
      EXPECT_EQ(x[n + 1], kSentinel) << "wrote past the end, n=" << n;
      double mx = -INFINITY, sum = 0.0, total = 0.0;
      for (int i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x0[i + 1]));
      for (int i = 0; i < n; ++i) sum += std::exp(x0[i + 1] - mx);
      const double tol = (8.0 + n / 8.0) * kEps;
      for (int i = 0; i < n; ++i) {
        const double ref = std::exp(x0[i + 1] - mx) / sum;
        total += x[i + 1];
        ASSERT_LE(std::fabs(x[i + 1] - ref), tol * ref + 1e-38) << "n=" << n << " range=" << range << " i=" << i;
      }
      EXPECT_NEAR(total, 1.0, tol + n * kEps) << "n=" << n;
      // The log-sum-exp: max + log(sum), each part within the sum's rounding.
      EXPECT_NEAR(lse, mx + std::log(sum), (std::fabs(mx) + 1.0) * kEps + tol) << "n=" << n;
    }
  }
  float one = 3.0f;
  EXPECT_EQ(kern().softmax(&one, 1), 3.0f);
  EXPECT_EQ(one, 1.0f);
  EXPECT_EQ(kern().softmax(nullptr, 0), -INFINITY);
}

// log_sum_exp against libm's exp summed in order, in double: within the sum's rounding (n + 8
// double epsilons relative; each SIMD term is ~2 ulp). Rows of every tail length and a
// vocabulary-sized one, spreads from 1 (every term counts) to 2000 (most terms under 2^-1021,
// flushed to 0), a -inf entry; NaN propagates; n = 0 gives -inf.
TEST_P(F32OpsTest, LogSumExp) {
  constexpr double kDEps = 2.220446049250313e-16;
  std::mt19937 rng(16);
  std::vector<int> sizes(std::begin(kSizes), std::end(kSizes));
  sizes.push_back(32000);
  double worst = 0;
  for (int n : sizes) {
    for (float range : {1.0f, 30.0f, 200.0f, 2000.0f}) {
      std::vector<float> x = random_vec(rng, n, -range, range);
      if (n > 3) x[size_t(n / 2)] = -std::numeric_limits<float>::infinity();
      float mx = x[0];
      for (float v : x) mx = std::max(mx, v);
      double sum = 0;
      for (float v : x) sum += std::exp(double(v) - mx);
      const double ref = mx + std::log(sum);
      const double got = kern().log_sum_exp(x.data(), n);
      const double tol = (n + 8) * kDEps + std::fabs(ref) * 2 * kDEps;
      ASSERT_LE(std::fabs(got - ref), tol) << "n=" << n << " range=" << range;
      worst = std::max(worst, std::fabs(got - ref) / tol);
    }
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", worst);
  RecordProperty("worst_of_bound", buf);
  const float one = 3.0f;
  EXPECT_EQ(kern().log_sum_exp(&one, 1), 3.0);
  const float two[2] = {0.0f, 0.0f};
  EXPECT_NEAR(kern().log_sum_exp(two, 2), std::log(2.0), 2 * kDEps);
  EXPECT_EQ(kern().log_sum_exp(nullptr, 0), -INFINITY);
  std::vector<float> with_nan(37, 1.0f);
  with_nan[20] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(kern().log_sum_exp(with_nan.data(), 37)));
}

INSTANTIATE_TEST_SUITE_P(AllIsas, F32OpsTest, ::testing::ValuesIn(kAllIsas),
                         [](const ::testing::TestParamInfo<Isa>& info) { return std::string(isa_name(info.param)); });

// ---- ISA selection ------------------------------------------------------------------------------

TEST(IsaTest, NamesRoundTrip) {
  for (Isa isa : kAllIsas) EXPECT_EQ(isa_from_name(isa_name(isa)), isa);
  EXPECT_EQ(isa_from_name("sse2"), std::nullopt);
  EXPECT_EQ(isa_from_name(""), std::nullopt);
}

TEST(IsaTest, AvailableListStartsWithRef) {
  const std::vector<Isa> isas = available_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kRef);
  for (Isa isa : kAllIsas) EXPECT_EQ(isa_available(isa), std::find(isas.begin(), isas.end(), isa) != isas.end());
#if defined(__x86_64__)
  EXPECT_FALSE(isa_available(Isa::kNeon));
  if (isa_available(Isa::kAvx512)) {
    EXPECT_TRUE(isa_available(Isa::kAvx2));
  }
#endif
}

TEST(IsaTest, DefaultIsBestAvailable) {
  test::ScopedIsaEnv env(nullptr);
  const Isa sel = selected_isa();
  EXPECT_TRUE(isa_available(sel));
  if (isa_available(Isa::kAvx512)) {
    EXPECT_EQ(sel, Isa::kAvx512);
  } else if (isa_available(Isa::kAvx2)) {
    EXPECT_EQ(sel, Isa::kAvx2);
  }
}

TEST(IsaTest, ForcedIsa) {
  for (Isa isa : kAllIsas) {
    const std::string name(isa_name(isa));
    test::ScopedIsaEnv env(name.c_str());
    if (isa_available(isa)) {
      EXPECT_EQ(selected_isa(), isa) << name;
    } else {
      try {
        selected_isa();
        ADD_FAILURE() << "MXLM_ISA=" << name << " should throw on this host";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("ref"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(IsaTest, UnknownIsaThrows) {
  test::ScopedIsaEnv env("sse9000");
  try {
    selected_isa();
    FAIL() << "MXLM_ISA=sse9000 should throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("sse9000"), std::string::npos) << msg;
    for (Isa isa : available_isas()) EXPECT_NE(msg.find(std::string(isa_name(isa))), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace mxlm
