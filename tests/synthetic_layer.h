// A synthetic layer for the encoder tests (tests/encode_test.cc, tests/outliers_test.cc): weights
// and the second moment of correlated inputs, deterministic for a seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace mxlm::test {

// A synthetic layer: W [n][k] Gaussian with every 8th row Student-t (heavy tails), inputs
// X = Z·A over T tokens (Z Gaussian, A = I + a dense random mixing of scale 1/√k), with a few
// high-variance channels (×8), H = XᵀX / T.
struct Layer {
  int64_t n, k;
  std::vector<float> w;
  std::vector<double> h;
};

inline Layer make_layer(int64_t n, int64_t k, int64_t T, uint32_t seed) {
  Layer L{n, k, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::student_t_distribution<double> st(3.0);
  L.w.resize(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) L.w[r * k + c] = static_cast<float>(r % 8 == 3 ? 0.01 * st(rng) : 0.02 * g(rng));
  }
  std::vector<double> A(static_cast<size_t>(k * k));
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) A[i * k + j] = (i == j ? 1.0 : 0.0) + 1.5 * g(rng) / std::sqrt(double(k));
  }
  std::vector<double> z(static_cast<size_t>(k)), x(static_cast<size_t>(k));
  L.h.assign(static_cast<size_t>(k * k), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (auto& v : z) v = g(rng);
    std::fill(x.begin(), x.end(), 0.0);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) x[j] += z[i] * A[i * k + j];
    }
    for (int64_t c = 0; c < k; c += k / 6) x[c] *= 8.0;  // high-variance channels
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j <= i; ++j) L.h[i * k + j] += x[i] * x[j];
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j <= i; ++j) {
      L.h[i * k + j] /= double(T);
      L.h[j * k + i] = L.h[i * k + j];
    }
  }
  return L;
}

}  // namespace mxlm::test
