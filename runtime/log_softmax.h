// Log-softmax of one row of logits: lp[v] = l[v] - lse, lse = max + log(sum exp(l - max)) summed
// in double by the kernels (F32Kernels::log_sum_exp: a vector exp in lanes on the SIMD copies).
// T: the output's type (double for perplexity's sums, float where rows are stored).
#pragma once

#include "kernels/f32_ops.h"

namespace mxlm {

template <class T>
void log_softmax(const F32Kernels& kr, const float* l, int n, T* lp) {
  const double lse = kr.log_sum_exp(l, n);
  for (int v = 0; v < n; ++v) lp[v] = T(double(l[v]) - lse);
}

}  // namespace mxlm
