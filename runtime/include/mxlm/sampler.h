// Token sampling: greedy, temperature, top-k, top-p, min-p and a repetition penalty, with a
// seeded generator whose sequence is the same on every platform.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mxlm {

struct SamplerParams {
  float temperature = 0.8f;    // <= 0: greedy (argmax)
  int top_k = 40;              // <= 0: off
  float top_p = 0.95f;         // >= 1: off
  float min_p = 0.05f;         // <= 0: off; drops tokens below min_p × p(best)
  float repeat_penalty = 1.0f; // 1: off; > 1 divides positive logits (multiplies negative) of recent tokens
  int repeat_last_n = 64;      // how many recent tokens the penalty looks at
  uint64_t seed = 0x5eed;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  // Picks the next token from logits[n_vocab]; `history` is the sequence so far (for the
  // repetition penalty). The logits are not modified.
  int sample(const float* logits, int n_vocab, std::span<const int> history);
  // A uniform float in [0, 1) from the seeded generator (xoshiro256**).
  float next_uniform();

 private:
  SamplerParams params_;
  uint64_t s_[4];
  std::vector<float> work_;
  std::vector<int> idx_;
};

}  // namespace mxlm
