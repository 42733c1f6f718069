#include "mxlm/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/splitmix.h"

namespace mxlm {

namespace {
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(const SamplerParams& params) : params_(params) {
  uint64_t x = params.seed;
  for (auto& s : s_) s = splitmix64_next(x);
}

float Sampler::next_uniform() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return static_cast<float>(result >> 40) * (1.0f / 16777216.0f);
}

int Sampler::sample(const float* logits, int n_vocab, std::span<const int> history) {
  work_.assign(logits, logits + n_vocab);
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t from = history.size() > size_t(params_.repeat_last_n) ? history.size() - params_.repeat_last_n : 0;
    std::vector<bool> seen(n_vocab, false);
    for (size_t i = from; i < history.size(); ++i) {
      const int t = history[i];
      if (t < 0 || t >= n_vocab || seen[t]) continue;
      seen[t] = true;
      work_[t] = work_[t] > 0 ? work_[t] / params_.repeat_penalty : work_[t] * params_.repeat_penalty;
    }
  }
  if (params_.temperature <= 0.0f) {
    return static_cast<int>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }
  // Candidates sorted by logit (stable: ties keep the lower id first).
  idx_.resize(n_vocab);
  std::iota(idx_.begin(), idx_.end(), 0);
  const int k = params_.top_k > 0 ? std::min(params_.top_k, n_vocab) : n_vocab;
  auto by_logit = [&](int a, int b) { return work_[a] > work_[b] || (work_[a] == work_[b] && a < b); };
  std::partial_sort(idx_.begin(), idx_.begin() + k, idx_.end(), by_logit);
  idx_.resize(k);
  // Softmax at the temperature over the candidates.
  const float inv_t = 1.0f / params_.temperature;
  const float max_l = work_[idx_[0]];
  std::vector<double> p(k);
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += p[i] = std::exp(double(work_[idx_[i]] - max_l) * inv_t);
  for (auto& v : p) v /= sum;
  int keep = k;
  if (params_.min_p > 0.0f) {
    const double floor = params_.min_p * p[0];
    while (keep > 1 && p[keep - 1] < floor) --keep;
  }
  if (params_.top_p < 1.0f) {
    double cum = 0;
    for (int i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (int i = 0; i < keep; ++i) total += p[i];
  const double r = next_uniform() * total;
  double cum = 0;
  for (int i = 0; i < keep; ++i) {
    cum += p[i];
    if (r < cum) return idx_[i];
  }
  return idx_[keep - 1];
}

}  // namespace mxlm
