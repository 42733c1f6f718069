// The oneDNN prefill backend: bf16 matmul on dequantized panels, against a double-precision
// product of the same dequantized weights and bf16-rounded activations.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/onednn_gemm.h"
#include "kernels/quant.h"
#include "mxlm/model.h"
#include "model/import.h"
#include "tests/test_util.h"

namespace mxlm {
namespace {

TEST(OneDnn, MatchesReferenceForFloatAndQuantizedWeights) {
  if (!onednn_available()) GTEST_SKIP() << "no oneDNN bf16 on this build/CPU";
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (QType t : {QType::kF32, QType::kBF16, QType::kQ4G32, QType::kQ8G32, QType::kNU4G32}) {
    for (auto [M, N, K] : {std::tuple{16, 40, 64}, std::tuple{33, 17, 172}, std::tuple{128, 96, 512}}) {
      const size_t rb = *qtype_row_bytes(t, uint64_t(K));
      std::vector<uint8_t> w(rb * N);
      std::vector<float> row(K), x(size_t(M) * K);
      for (int n = 0; n < N; ++n) {
        for (auto& v : row) v = 0.05f * nd(rng);
        quantize_row(t, row.data(), K, w.data() + n * rb);
      }
      for (auto& v : x) v = nd(rng);
      const int n0 = 3, ldy = N + 5;
      std::vector<float> y(size_t(M) * ldy, 7.0f);
      onednn_gemm(M, n0, N, K, x.data(), size_t(K), t, w.data(), rb, y.data(), size_t(ldy));
      std::vector<float> wd(K);
      for (int n = 0; n < N; ++n) {
        dequantize_row(t, w.data() + n * rb, K, wd.data());
        for (int m = 0; m < M; ++m) {
          if (n < n0) {
            EXPECT_EQ(y[size_t(m) * ldy + n], 7.0f);  // outside the range: untouched
            continue;
          }
          double ref = 0, mag = 0;
          for (int k = 0; k < K; ++k) {
            const double wb = bf16_to_f32(f32_to_bf16(wd[k])), xb = bf16_to_f32(f32_to_bf16(x[size_t(m) * K + k]));
            ref += wb * xb;
            mag += std::abs(wb * xb);
          }
          ASSERT_NEAR(y[size_t(m) * ldy + n], ref, 1e-5 * mag + 1e-6) << qtype_info(t).name << " M=" << M << " K=" << K;
        }
      }
    }
  }
}

TEST(OneDnn, PrefillBackendsAgreeOnAModel) {
  if (!onednn_available()) GTEST_SKIP() << "no oneDNN bf16 on this build/CPU";
  const std::string out = test::scratch_dir() + "/onednn_tm.mxlm";
  convert_to_mxlm(import_model(test::shared_path("models/tinymix-26m")), out, QType::kBF16);
  auto model = Model::load(out);
  std::vector<int> toks(40);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int(100 + 37 * i);
  ContextParams a, b;
  a.prefill = ContextParams::Prefill::kKernels;
  b.prefill = ContextParams::Prefill::kOneDnn;
  b.n_threads = 2;  // oneDNN matmuls run on the pool's threads concurrently (each with its scratchpad)
  Context ca(model, a), cb(model, b);
  const float* la = ca.eval(toks, true);
  std::vector<float> ka(la, la + toks.size() * 4096);
  const float* lb = cb.eval(toks, true);
  double worst = 0;
  for (size_t i = 0; i < ka.size(); ++i) worst = std::max(worst, double(std::abs(ka[i] - lb[i])));
  EXPECT_LT(worst, 0.25);  // bf16-rounded activations through 8 layers
  EXPECT_GT(worst, 0.0);   // the backends really differ
}

}  // namespace
}  // namespace mxlm
