// The fit of the KV cache's affine groups (q4a_g32 and q2a_g32: w = d * q + m, q in [0, top],
// d and m as f16) and the rounding the KV encoder uses. runtime/kv_cache.cc encodes with them;
// they are a header of their own so the suite can hold the four-lane fit to the scalar one.
#pragma once

#include <cmath>
#include <cstdint>

namespace mxlm {

// std::nearbyint in the default rounding mode (to nearest, ties to even), inline: |v| < 2^23 plus
// 2^23 lands in [2^23, 2^24), where the floats are the integers, so the sum rounds |v| as
// nearbyint does and the subtraction is exact; the sign goes back on (-0 included), and larger
// |v| are integers already (or NaN). Equal to std::nearbyint on all 2^32 floats (checked
// exhaustively). std::nearbyint is a libm call here (the runtime is built for the baseline ISA,
// without SSE4.1's roundss), once per element and least-squares round: about a sixth of a
// Llama-7B layer's k4v4 store (`kv_store/` in mxlm_bench_kernels), which a decode token pays for
// every layer.
inline float round_even(float v) {
  const float a = std::fabs(v);
  if (!(a < 0x1p23f)) return v;
  return std::copysign((a + 0x1p23f) - 0x1p23f, v);
}

constexpr int kAffineGroup = 32;

// The (d, m) of one group of ne <= kAffineGroup elements (kv_fit.cc states the method): the spec.
void fit_affine(const float* x, int ne, float top, uint16_t* d_out, uint16_t* m_out);

// fit_affine of `lanes` (1 to 4) whole groups at x, x + kAffineGroup, ...: d_out[l], m_out[l]
// are group l's, the same bytes as fit_affine's. Four groups at once in SSE2 lanes where the
// target has SSE2, else fit_affine per group.
void fit_affine4(const float* x, int lanes, float top, uint16_t* d_out, uint16_t* m_out);

// The levels of one affine group under its (d, m) (f16 values as floats), packed (qtype.h's
// 4- and 2-bit planes: byte j holds elements j, j + 16 at 4 bits; j, j + 8, j + 16, j + 24 at 2):
// q_i = clamp(round_even((x_i - m) / d), 0, 2^bits - 1) for i < ne, 0 past ne and everywhere
// when d <= 0. Writes bits * 4 bytes. A whole group (ne == kAffineGroup) runs in SSE2 lanes
// where the target has SSE2, the same operations per element (the same bytes).
void quantize_affine_group(const float* x, int ne, float d, float m, int bits, uint8_t* dst);

}  // namespace mxlm
