// Log-softmax of one row of logits, summed in double: lp[v] = l[v] - max - log(sum exp(l - max)).
// T: the output's type (double for perplexity's sums, float where rows are stored).
#pragma once

#include <algorithm>
#include <cmath>

namespace mxlm {

template <class T>
void log_softmax(const float* l, int n, T* lp) {
  float mx = l[0];
  for (int v = 1; v < n; ++v) mx = std::max(mx, l[v]);
  double sum = 0;
  for (int v = 0; v < n; ++v) sum += std::exp(double(l[v]) - mx);
  const double lse = std::log(sum) + mx;
  for (int v = 0; v < n; ++v) lp[v] = T(double(l[v]) - lse);
}

}  // namespace mxlm
