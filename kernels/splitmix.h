// splitmix64 (Steele, Lea and Flood 2014, "Fast splittable pseudorandom number generators"):
// one fixed, portable 64-bit mixer for every seeded stream of the project, so a seed gives the
// same weights (synth), samples (the sampler's seeding) and rotations (model/rotate) on every
// platform and library. Not for the kernels/simd translation units (an inline function emitted
// there could be compiled for the wrong ISA; they draw nothing at random).
#pragma once

#include <cstdint>

namespace mxlm {

inline constexpr uint64_t kSplitmixGamma = 0x9e3779b97f4a7c15ull;

// The output function of z (the generator's state after its step).
inline uint64_t splitmix64_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The stateful generator: steps x by the golden gamma and returns the mixed state.
inline uint64_t splitmix64_next(uint64_t& x) { return splitmix64_finalize(x += kSplitmixGamma); }

// Counter-based use: the value the generator at state x would return next (x unchanged).
inline uint64_t splitmix64_at(uint64_t x) { return splitmix64_finalize(x + kSplitmixGamma); }

}  // namespace mxlm
