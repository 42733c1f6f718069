// Reference quantizers (the spec of every format): packing, error ceilings on Gaussian and
// heavy-tailed data, activation quantization and the reference GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/quant.h"

namespace mxlm {
namespace {

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Student-t with 3 degrees of freedom: heavy tails like real weight rows with outliers.
std::vector<float> heavy_tailed(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(3.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = 0.01f * d(rng);
  return v;
}

double nmse(QType t, const std::vector<float>& x, int64_t k) {
  const int64_t rows = static_cast<int64_t>(x.size()) / k;
  const size_t rb = *qtype_row_bytes(t, static_cast<uint64_t>(k));
  std::vector<uint8_t> q(rb);
  std::vector<float> y(static_cast<size_t>(k));
  double err = 0, ref = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * k;
    quantize_row(t, xr, k, q.data());
    dequantize_row(t, q.data(), k, y.data());
    for (int64_t i = 0; i < k; ++i) {
      err += double(xr[i] - y[i]) * (xr[i] - y[i]);
      ref += double(xr[i]) * xr[i];
    }
  }
  return err / ref;
}

TEST(QuantPack, RoundTripsEveryWidth) {
  std::mt19937 rng(1);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int group : {32, 64, 128}) {
      std::vector<uint8_t> q(group), back(group), packed(group);
      for (auto& v : q) v = static_cast<uint8_t>(rng() % (1u << bits));
      pack_group(bits, group, q.data(), packed.data());
      unpack_group(bits, group, packed.data(), back.data());
      EXPECT_EQ(q, back) << bits << " bits, group " << group;
    }
  }
  // The documented layout: 4 bits, byte j = q[j] | q[j + G/2] << 4.
  uint8_t q[32], p[16];
  for (int i = 0; i < 32; ++i) q[i] = static_cast<uint8_t>(i % 16);
  pack_group(4, 32, q, p);
  EXPECT_EQ(p[3], 3 | (3 << 4));
  // 1-bit plane of 3 bits in natural order: q[e] bit 2 at bit e.
  uint8_t q3[32] = {}, p3[12];
  q3[9] = 4;
  pack_group(3, 32, q3, p3);
  EXPECT_EQ(p3[8 + 1], 1 << 1);
}

TEST(QuantTable, RowBytesMatchBitsPerWeight) {
  for (const auto& info : kQTypes) {
    const auto rb = qtype_row_bytes(info.type, 4096);
    ASSERT_TRUE(rb.has_value());
    EXPECT_NEAR(8.0 * double(*rb) / 4096, info.bits_per_weight, 0.01) << info.name;
    EXPECT_EQ(qtype_from_name(info.name), info.type);
  }
  EXPECT_EQ(*qtype_row_bytes(QType::kQ4G32, 172), 6u * 18u);  // a partial last group
  EXPECT_FALSE(qtype_from_name("q7_g32").has_value());
}

// NMSE ceilings per format on Gaussian and Student-t(3) rows (K = 4096): the values measured
// with the reference quantizer plus 25 % headroom.
struct Ceiling {
  QType t;
  double gaussian, heavy;
};

TEST(QuantError, CeilingsPerFormat) {
  const int64_t k = 4096;
  const auto g = gaussian(16 * k, 7), h = heavy_tailed(16 * k, 8);
  const Ceiling ceilings[] = {
      {QType::kQ8G32, 3.05e-05, 7.65e-05},
      {QType::kQ8G64, 3.99e-05, 1.29e-04},
      {QType::kQ8G128, 4.94e-05, 2.06e-04},
      {QType::kQ6G32, 5.03e-04, 1.28e-03},
      {QType::kQ5G32, 2.04e-03, 5.13e-03},
      {QType::kQ4G32, 8.39e-03, 1.93e-02},
      {QType::kQ4G64, 1.05e-02, 3.06e-02},
      {QType::kQ4G128, 1.25e-02, 4.50e-02},
      {QType::kQ3G32, 3.37e-02, 6.45e-02},
      {QType::kQ2G32, 1.41e-01, 1.87e-01},
      {QType::kQ4AG32, 6.13e-03, 9.99e-03},
      {QType::kQ3AG32, 2.63e-02, 4.15e-02},
      {QType::kQ2AG32, 1.12e-01, 1.58e-01},
      {QType::kQ4AG64, 8.40e-03, 1.76e-02},
      {QType::kQ2AG64, 1.35e-01, 2.25e-01},
      {QType::kNU4G32, 7.90e-03, 1.08e-02},
      {QType::kNU3G32, 3.31e-02, 4.24e-02},
  };
  for (const auto& c : ceilings) {
    const double eg = nmse(c.t, g, k), eh = nmse(c.t, h, k);
    EXPECT_LT(eg, c.gaussian) << qtype_info(c.t).name << " gaussian";
    EXPECT_LT(eh, c.heavy) << qtype_info(c.t).name << " heavy-tailed";
    std::printf("%-8s bpw %.3f  nmse gaussian %.3e  heavy %.3e\n", std::string(qtype_info(c.t).name).c_str(),
                qtype_info(c.t).bits_per_weight, eg, eh);
  }
}

TEST(QuantError, CodebookBeatsUniformOnHeavyTails) {
  const int64_t k = 4096;
  const auto h = heavy_tailed(16 * k, 11);
  EXPECT_LT(nmse(QType::kNU4G32, h, k), nmse(QType::kQ4G32, h, k));
  EXPECT_LT(nmse(QType::kNU3G32, h, k), nmse(QType::kQ3G32, h, k));
}

TEST(QuantError, TailsConstantsAndZeros) {
  for (const auto& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    for (int64_t k : {1, 17, 172, 200}) {
      std::vector<float> x = gaussian(static_cast<size_t>(k), static_cast<uint32_t>(k));
      std::vector<uint8_t> q(*qtype_row_bytes(info.type, static_cast<uint64_t>(k)));
      std::vector<float> y(static_cast<size_t>(k));
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      double err = 0, ref = 0;
      for (int64_t i = 0; i < k; ++i) {
        err += double(x[i] - y[i]) * (x[i] - y[i]);
        ref += double(x[i]) * x[i];
      }
      EXPECT_LT(err / ref, info.bits >= 4 ? 0.05 : 0.3) << info.name << " k=" << k;
      // All zeros stay zero; a constant row is close.
      std::fill(x.begin(), x.end(), 0.0f);
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      for (float v : y) EXPECT_EQ(v, 0.0f) << info.name;
      std::fill(x.begin(), x.end(), 0.25f);
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      for (float v : y) EXPECT_NEAR(v, 0.25f, 0.25f * 0.02f) << info.name;
    }
  }
}

TEST(ActQuant, ScalesSumsAndPadding) {
  const int64_t k = 100, kp = act_padded_k(k);
  EXPECT_EQ(kp, 128);
  std::vector<float> x = gaussian(static_cast<size_t>(k), 3);
  x[5] = 1.0f;  // an outlier in block 0
  for (bool per_token : {false, true}) {
    std::vector<int8_t> q(static_cast<size_t>(kp));
    std::vector<float> d(kp / 32), ds(kp / 32);
    quantize_act_row_ref(x.data(), k, kp, q.data(), d.data(), ds.data(), per_token);
    for (int64_t i = k; i < kp; ++i) EXPECT_EQ(q[i], 0);
    EXPECT_EQ(q[5], 127);
    for (int64_t b = 0; b < kp / 32; ++b) {
      int sum = 0;
      for (int i = 0; i < 32; ++i) sum += q[b * 32 + i];
      EXPECT_FLOAT_EQ(ds[b], d[b] * static_cast<float>(sum));
      for (int i = 0; i < 32 && b * 32 + i < k; ++i) EXPECT_NEAR(q[b * 32 + i] * d[b], x[b * 32 + i], 0.5001f * d[b]);
    }
    if (per_token) EXPECT_EQ(d[1], d[0]);
    else EXPECT_LT(d[1], d[0]);
  }
}

// The reference GEMM equals the float product of dequantized weights and dequantized
// activations up to float rounding (the integer dot is exact).
TEST(QGemmRef, MatchesDequantizedProduct) {
  const int M = 3, N = 5;
  for (const auto& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    for (int64_t K : {64, 172, 256}) {
      const int64_t kp = act_padded_k(K);
      const size_t rb = *qtype_row_bytes(info.type, static_cast<uint64_t>(K));
      std::vector<uint8_t> w(rb * N);
      auto wf = gaussian(static_cast<size_t>(N * K), 5);
      for (int n = 0; n < N; ++n) quantize_row(info.type, wf.data() + n * K, K, w.data() + n * rb);
      auto x = gaussian(static_cast<size_t>(M * K), 6);
      std::vector<int8_t> q(M * kp);
      std::vector<float> d(M * kp / 32), ds(M * kp / 32);
      for (int m = 0; m < M; ++m) {
        quantize_act_row_ref(x.data() + m * K, K, kp, q.data() + m * kp, d.data() + m * kp / 32, ds.data() + m * kp / 32, false);
      }
      std::vector<float> y(M * N, -1.0f);
      qgemm_ref(info.type, M, 0, N, K, ActQ8{q.data(), d.data(), ds.data(), kp}, w.data(), rb, y.data(), N);
      std::vector<float> wd(static_cast<size_t>(K));
      for (int n = 0; n < N; ++n) {
        dequantize_row(info.type, w.data() + n * rb, K, wd.data());
        for (int m = 0; m < M; ++m) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < K; ++i) {
            const double a = q[m * kp + i] * double(d[m * kp / 32 + i / 32]);
            ref += a * wd[i];
            mag += std::abs(a * wd[i]);
          }
          EXPECT_NEAR(y[m * N + n], ref, 1e-5 * mag + 1e-9) << info.name << " K=" << K;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mxlm
