// sum_exp_lanes<W>: Σ exp(double(x[i]) − shift) over a row of floats, in W double lanes (GCC
// vector extensions, so one text serves AVX-512 (W = 8), AVX2 (4) and NEON (2)). Included inside
// the target namespace by kernels/simd/f32_kernels.cc and neon_kernels.cc; not a public header.
//
// The sum behind F32Kernels::log_sum_exp (the log-softmax of the KL probes, perplexity and the
// KV profile): libm's scalar exp was ~2 % of a TinyLlama-shape `quantize --bpw 4` (a 32000-word
// row per token per probe). For t = x − shift ≤ 0:
//   n = round(t / ln2)          by the 1.5·2^52 shifter (round to nearest; exact for |t| < 2^50)
//   r = t − n ln2_hi − n ln2_lo (Cody–Waite; ln2_hi has 21 significant bits, so n ln2_hi is
//                                exact for |n| < 2^32), |r| ≤ ln2/2
//   e^r by its degree-13 Taylor polynomial (truncation < 5e-18 relative), times 2^n built in
//   the exponent field (n + 1023 in [1, 1023] for t in [−708, 0]).
// About 2 ulp per term against libm's < 1, summed in 2W lanes instead of in order: the sum
// differs from the reference's by its rounding (tests/f32_kernels_test.cc, LogSumExp). t < −708
// gives 0 (terms under 2^-1021 cannot change a sum that holds the max's own 1), −∞ gives 0,
// NaN propagates.

// The lane types by W (GCC drops a vector_size that depends on a template parameter).
template <int W>
struct ExpLanes;
template <>
struct ExpLanes<2> {
  typedef double D __attribute__((vector_size(16)));
  typedef int64_t I __attribute__((vector_size(16)));
  typedef float F __attribute__((vector_size(8)));
};
template <>
struct ExpLanes<4> {
  typedef double D __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  typedef float F __attribute__((vector_size(16)));
};
template <>
struct ExpLanes<8> {
  typedef double D __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  typedef float F __attribute__((vector_size(32)));
};

template <int W>
inline double sum_exp_lanes(const float* x, int n, float shift) {
  using D = typename ExpLanes<W>::D;
  using I = typename ExpLanes<W>::I;
  using F = typename ExpLanes<W>::F;
  constexpr double kShifter = 0x1.8p52, kLog2e = 1.4426950408889634074;
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  constexpr int64_t kShifterBits = 0x4338000000000000;  // the bits of kShifter
  const double s = shift;
  auto term = [&](const float* p) -> D {
    F f;
    __builtin_memcpy(&f, p, sizeof(f));
    const D t = __builtin_convertvector(f, D) - s;
    const D k = t * kLog2e + kShifter;  // kShifter + n in the low mantissa bits
    const D nd = k - kShifter;
    const D r = (t - nd * kLn2Hi) - nd * kLn2Lo;
    D p13 = r * (1.0 / 6227020800.0) + (1.0 / 479001600.0);
    p13 = p13 * r + (1.0 / 39916800.0);
    p13 = p13 * r + (1.0 / 3628800.0);
    p13 = p13 * r + (1.0 / 362880.0);
    p13 = p13 * r + (1.0 / 40320.0);
    p13 = p13 * r + (1.0 / 5040.0);
    p13 = p13 * r + (1.0 / 720.0);
    p13 = p13 * r + (1.0 / 120.0);
    p13 = p13 * r + (1.0 / 24.0);
    p13 = p13 * r + (1.0 / 6.0);
    p13 = p13 * r + 0.5;
    p13 = p13 * r + 1.0;
    p13 = p13 * r + 1.0;
    const I scale_bits = ((I)k - kShifterBits + 1023) << 52;
    const D e = p13 * (D)scale_bits;
    const I kept = ~(t < -708.0);  // all ones where t >= -708 or NaN
    const I out = (I)e & kept;
    return (D)out;  // same-size vector casts reinterpret the bits
  };
  D acc0 = {}, acc1 = {};
  int i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 += term(x + i);
    acc1 += term(x + i + W);
  }
  for (; i + W <= n; i += W) acc0 += term(x + i);
  if (i < n) {
    float tail[W];
    for (int j = 0; j < W; ++j) tail[j] = i + j < n ? x[i + j] : -__builtin_inff();
    acc1 += term(tail);
  }
  const D a = acc0 + acc1;
  double sum = 0.0;
  for (int j = 0; j < W; ++j) sum += a[j];
  return sum;
}
