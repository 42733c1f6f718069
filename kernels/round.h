// Rounding of the quantizers (kernels/quant.cc's scale searches, model/encode.cc's GPTQ and
// refinement): one definition, so that every encoder rounds a value to the same level.
#pragma once

namespace mxlm {

// round(clamp(t, lo, hi)) for small integer lo, hi under the default rounding mode (ties to
// even, like std::nearbyint), NaN stays NaN; branch-free, so loops over it vectorize. Without
// SSE4.1 x86-64 compiles std::nearbyint to a libm call, and the scale searches round ~60 times
// per weight. t + 1.5·2^23 rounds t to an integer (|t| < 2^22).
inline __attribute__((always_inline)) float round_clampf(float t, float lo, float hi) {
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (t + kMagic) - kMagic;
}

// The same as an int; NaN -> lo.
inline __attribute__((always_inline)) int round_clamp(float v, int lo, int hi) {
  return v == v ? static_cast<int>(round_clampf(v, static_cast<float>(lo), static_cast<float>(hi))) : lo;
}

}  // namespace mxlm
