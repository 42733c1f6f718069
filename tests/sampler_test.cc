// The sampler's distributions against the analytic ones: temperature (T != 1), top-k, top-p,
// min-p and the repetition penalty on crafted logits, each in a case that does not reduce to
// greedy. Each check draws N samples with a fixed seed and compares the histogram with the
// expected probabilities by Pearson's chi-square; the support must be exactly the expected set.
//
// Numbers: N = 20000 draws per case; the limit is the chi-square quantile at p = 1e-4 for the
// case's degrees of freedom (df 1..5: 16.2..26.3). The seed is fixed, so every run draws the
// same samples: the correct sampler gives statistics of 0.03..9.4 (printed by each case).
// Mutated samplers (each checked once by building it) score far above the limits: dividing
// the logits by 1/T instead of multiplying gives 108886 at T = 0.5 and 12356 at T = 1.7 (limit
// 26.3); the penalty dividing negative logits 1027 (26.3); top-p dropping the token that
// crosses p 4617 (19.3); min-p as an absolute floor 7693 (21.8). The cases also check their
// own construction: the correct histogram against the mutated distribution scores 19633 and
// 37385 (temperature) and 581 (penalty sign).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "mxlm/sampler.h"

namespace mxlm {
namespace {

constexpr int kDraws = 20000;

// Upper quantile of the chi-square distribution with `df` degrees of freedom at the standard
// normal deviate z (z = 3.719: p = 1e-4), by the Wilson-Hilferty cube approximation: a few
// percent above the exact quantile at this tail (df 1: 16.2 vs 15.1, df 2: 19.3 vs 18.4,
// df 5: 26.3 vs 25.7).
double chi2_limit(int df, double z = 3.719) {
  const double a = 2.0 / (9.0 * df);
  const double c = 1.0 - a + z * std::sqrt(a);
  return df * c * c * c;
}

// softmax(logits / T) in double.
std::vector<double> softmax(const std::vector<double>& logits, double t) {
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double s = 0;
  for (size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp((logits[i] - mx) / t);
  for (auto& v : p) v /= s;
  return p;
}

// Keeps only `support` of p and renormalizes.
std::vector<double> restrict_to(const std::vector<double>& p, const std::vector<int>& support) {
  std::vector<double> q(p.size(), 0.0);
  double s = 0;
  for (int i : support) s += p[i];
  for (int i : support) q[i] = p[i] / s;
  return q;
}

struct Histogram {
  std::vector<int> counts;
  int n = 0;
};

Histogram draw(const SamplerParams& params, const std::vector<float>& logits, const std::vector<int>& history = {}) {
  Sampler s(params);
  Histogram h;
  h.counts.assign(logits.size(), 0);
  for (int i = 0; i < kDraws; ++i) {
    const int t = s.sample(logits.data(), static_cast<int>(logits.size()), history);
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int>(logits.size()));
    if (t < 0 || t >= static_cast<int>(logits.size())) continue;
    ++h.counts[t];
    ++h.n;
  }
  return h;
}

// Pearson's statistic over the tokens with expected probability > 0; tokens with expected
// probability 0 must never be drawn (the exact support), and each token of the support must be.
double chi_square(const Histogram& h, const std::vector<double>& expected, int* df) {
  double x2 = 0;
  int cells = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(h.counts[i], 0) << "token " << i << " is outside the expected support";
      continue;
    }
    EXPECT_GT(h.counts[i], 0) << "token " << i << " of the support was never drawn";
    const double e = expected[i] * h.n;
    EXPECT_GE(e, 20.0) << "the case is badly built: expected count of token " << i << " is " << e;
    x2 += (h.counts[i] - e) * (h.counts[i] - e) / e;
    ++cells;
  }
  *df = cells - 1;
  return x2;
}

void expect_distribution(const char* what, const Histogram& h, const std::vector<double>& expected) {
  int df = 0;
  const double x2 = chi_square(h, expected, &df);
  ASSERT_GE(df, 1) << what << ": a one-token support is greedy, not a distribution test";
  const double limit = chi2_limit(df);
  std::printf("%-34s chi2 %8.2f  df %d  limit %.2f\n", what, x2, df, limit);
  EXPECT_LT(x2, limit) << what;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

SamplerParams plain(float temperature, uint64_t seed) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = seed;
  return p;
}

// Six tokens spanning 3 units of logit, in no particular order: at T = 0.5 the least likely
// keeps p = 0.0033 (66 expected draws), at T = 1.7 the distribution is flatter than at T = 1.
const std::vector<float> kLogits = {0.5f, 2.0f, -0.5f, 1.2f, -1.0f, 0.0f};

TEST(SamplerDistribution, TemperatureScalesLogits) {
  for (float t : {0.5f, 1.7f}) {
    const Histogram h = draw(plain(t, 1234), kLogits);
    const std::string name = "temperature " + std::to_string(t).substr(0, 3);
    expect_distribution(name.c_str(), h, softmax(to_double(kLogits), t));
    // The wrong direction (logits * T instead of / T) must be far outside: the same histogram
    // against softmax(l * T) gives a statistic in the thousands.
    int df;
    const double wrong = chi_square(h, softmax(to_double(kLogits), 1.0 / t), &df);
    std::printf("%-34s chi2 %8.2f  (the mutation's distribution)\n", (name + " vs l*T").c_str(), wrong);
    EXPECT_GT(wrong, 50 * chi2_limit(df));
  }
}

TEST(SamplerDistribution, TopKKeepsExactlyKAndRenormalizes) {
  SamplerParams p = plain(1.3f, 99);
  p.top_k = 3;
  // The three best are tokens 1, 3, 0; renormalized softmax(l / 1.3) over them.
  expect_distribution("top-k 3, T 1.3", draw(p, kLogits), restrict_to(softmax(to_double(kLogits), 1.3), {1, 3, 0}));
}

// Probabilities at T = 1 of 0.40, 0.25, 0.15, 0.10, 0.06, 0.04 (as logits, shuffled).
const std::vector<float> kProbLogits = {std::log(0.10f), std::log(0.40f), std::log(0.06f),
                                        std::log(0.25f), std::log(0.04f), std::log(0.15f)};

TEST(SamplerDistribution, TopPKeepsTheSmallestPrefixReachingP) {
  SamplerParams p = plain(1.0f, 7);
  p.top_p = 0.75f;  // cumulative 0.40, 0.65, 0.80 >= 0.75: tokens 1, 3, 5
  expect_distribution("top-p 0.75", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 1.0), {1, 3, 5}));
  p.top_p = 0.85f;  // 0.80 < 0.85 <= 0.90: tokens 1, 3, 5, 0
  expect_distribution("top-p 0.85", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 1.0), {1, 3, 5, 0}));
  // top-p acts on the tempered distribution (as in HF transformers: temperature first). At
  // T = 0.5 the probabilities are 0.40^2 : 0.25^2 : ... = 0.6299, 0.2461, 0.0886, 0.0394, ...;
  // cumulative 0.63, 0.88 >= 0.8: tokens 1, 3 (at T = 1 it would be three tokens).
  p.temperature = 0.5f;
  p.top_p = 0.8f;
  expect_distribution("top-p 0.8, T 0.5", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 0.5), {1, 3}));
}

TEST(SamplerDistribution, MinPDropsTokensBelowAFractionOfTheBest) {
  SamplerParams p = plain(1.0f, 11);
  p.min_p = 0.2f;  // floor 0.08: keeps 0.40, 0.25, 0.15, 0.10
  expect_distribution("min-p 0.2", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 1.0), {1, 3, 5, 0}));
  p.min_p = 0.3f;  // floor 0.12: keeps 0.40, 0.25, 0.15
  expect_distribution("min-p 0.3", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 1.0), {1, 3, 5}));
  // With top-p too: the intersection of both prefixes (top-p 0.6 keeps 1, 3; min-p 0.2 four).
  p.min_p = 0.2f;
  p.top_p = 0.6f;
  expect_distribution("min-p 0.2 + top-p 0.6", draw(p, kProbLogits), restrict_to(softmax(to_double(kProbLogits), 1.0), {1, 3}));
  // And top-k 5, T 1.7: top-k first, min-p on the tempered probabilities over those five.
  SamplerParams q = plain(1.7f, 12);
  q.top_k = 5;
  q.min_p = 0.45f;
  const std::vector<double> t = restrict_to(softmax(to_double(kProbLogits), 1.7), {1, 3, 5, 0, 2});
  std::vector<int> keep;
  for (int i = 0; i < 6; ++i) {
    if (t[i] >= 0.45 * t[1]) keep.push_back(i);
  }
  ASSERT_EQ(keep.size(), 3u) << "case construction: 0.45 × p(best) at T 1.7 keeps three tokens";
  expect_distribution("top-k 5, min-p 0.45, T 1.7", draw(q, kProbLogits), restrict_to(t, keep));
}

TEST(SamplerDistribution, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  // Token 0 (positive logit) and token 2 (negative) were seen; token 4 was seen too, but before
  // the last-n window; token 0 appears twice and is penalized once.
  const std::vector<float> logits = {1.0f, 0.6f, -0.5f, 0.2f, 0.4f, -0.2f};
  const std::vector<int> history = {4, 3, 3, 0, 2, 0};  // last 5: 3, 3, 0, 2, 0
  SamplerParams p = plain(1.0f, 5);
  p.repeat_penalty = 2.0f;
  p.repeat_last_n = 5;
  std::vector<double> penalized = to_double(logits);
  penalized[0] = 1.0 / 2.0;   // positive: divided
  penalized[2] = -0.5 * 2.0;  // negative: multiplied (more negative: less likely)
  penalized[3] = 0.2 / 2.0;
  const Histogram h = draw(p, logits, history);
  expect_distribution("repeat-penalty 2, last 5", h, softmax(penalized, 1.0));
  // The opposite sign convention for negative logits (dividing them too: -0.25, more likely)
  // is far outside.
  std::vector<double> wrong = penalized;
  wrong[2] = -0.5 / 2.0;
  int df;
  const double x2 = chi_square(h, softmax(wrong, 1.0), &df);
  std::printf("%-34s chi2 %8.2f  (negative logits divided)\n", "repeat-penalty, wrong sign", x2);
  EXPECT_GT(x2, 5 * chi2_limit(df));
  // With top-k 3 after the penalty: the best three of the penalized logits (1, 0, 4).
  p.top_k = 3;
  expect_distribution("repeat-penalty 2 + top-k 3", draw(p, logits, history), restrict_to(softmax(penalized, 1.0), {1, 0, 4}));
}

TEST(SamplerDistribution, SameSeedSameSequenceOtherSeedOther) {
  SamplerParams p = plain(1.0f, 42);
  Sampler a(p), b(p);
  p.seed = 43;
  Sampler c(p);
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int x = a.sample(kLogits.data(), 6, {});
    EXPECT_EQ(x, b.sample(kLogits.data(), 6, {}));
    differ += x != c.sample(kLogits.data(), 6, {});
  }
  EXPECT_GT(differ, 50);
}

}  // namespace
}  // namespace mxlm
