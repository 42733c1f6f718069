// NEON quantized kernels (kernels/simd/neon_kernels.cc) against the reference (kernels/quant.h):
//  - the activation quantizer must be bit-identical to quantize_act_row_ref;
//  - every quantized format's QGemmFn must match qgemm_ref and an exact (double) evaluation of the
//    same quantized operands within a bound derived from the summation depth (integer block dots
//    are exact, only the float combination of blocks differs), for K/N tails, M > 1, sub-ranges
//    of N, unaligned pointers and padded strides, with weights from the reference quantizer, from
//    random bytes (every bit pattern of the planes and codebooks) and flat rows.
// The NEON float kernels are tested with every other ISA's in tests/f32_kernels_test.cc.
//
// Runs where the NEON ISA is available: the AArch64 cross build under qemu (scripts/test_neon.sh,
// once on a CPU with the dot-product instructions and once without). Elsewhere it skips.
// MXLM_EXPECT_DOTPROD=0|1 (set by the script) checks which of the two kernel paths was registered.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/isa.h"
#include "kernels/quant.h"
#include "kernels/qtype.h"

namespace mxlm {
namespace detail {
bool cpu_has_neon_dotprod();  // kernels/cpu_features.cc
}  // namespace detail

namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();
constexpr float kSentinel = 12345.5f;

std::vector<QType> quantized_types() {
  std::vector<QType> out;
  for (const QTypeInfo& info : kQTypes) {
    if (info.kind != QKind::kFloat) out.push_back(info.type);
  }
  return out;
}

bool neon_available() { return isa_available(Isa::kNeon); }

// ---- registry ---------------------------------------------------------------------------------

TEST(NeonRegistry, EveryQuantizedFormatHasItsOwnKernel) {
  if (!neon_available()) GTEST_SKIP() << "NEON not available on this host";
  const bool dotprod = detail::cpu_has_neon_dotprod();
  RecordProperty("dotprod", dotprod ? "yes" : "no");
  std::printf("[   INFO   ] NEON kernels: %s\n", dotprod ? "SDOT (dotprod)" : "SMULL/SADALP (no dotprod)");
  if (const char* want = std::getenv("MXLM_EXPECT_DOTPROD"); want && *want) {
    EXPECT_EQ(dotprod, std::string(want) == "1") << "MXLM_EXPECT_DOTPROD=" << want;
  }
  for (QType t : quantized_types()) {
    EXPECT_TRUE(has_own_qkernel(t, Isa::kNeon)) << qtype_info(t).name;
    const QKernel k = find_qkernel(t, Isa::kNeon);
    EXPECT_EQ(k.isa, Isa::kNeon) << qtype_info(t).name;
    EXPECT_NE(k.gemm, nullptr) << qtype_info(t).name;
  }
  EXPECT_NE(find_quantize_act(Isa::kNeon), &quantize_act_row_ref);
}

// The int8 peak loop (kernels/quant.h): whole dot instructions (16 multiply-adds each) per
// round, at least 4 chains, linear in the rounds, the same result each time.
TEST(NeonInt8Peak, CountsWhatItRuns) {
  if (!neon_available()) GTEST_SKIP() << "NEON not available on this host";
  const Int8PeakFn fn = find_int8_peak(Isa::kNeon);
  ASSERT_NE(fn, nullptr);
  int32_t s1 = 0, s2 = 0, s3 = 0;
  const uint64_t a = fn(1000, &s1), b = fn(2000, &s2);
  fn(1000, &s3);
  EXPECT_EQ(b, 2 * a);
  EXPECT_EQ(a % (1000 * 32), 0u);
  EXPECT_GE(a / (1000 * 32), 4u);
  EXPECT_EQ(s1, s3);
}

// ---- activation quantization ------------------------------------------------------------------

// Runs `fn` and the reference on x[0..k) (x misaligned by one float) with kp = padded k + extra,
// and requires identical bits in q, d, ds, and untouched sentinels past them.
void check_act(QuantizeActFn fn, const std::vector<float>& x, int64_t extra, bool per_token, const std::string& what) {
  const int64_t k = static_cast<int64_t>(x.size());
  const int64_t kp = act_padded_k(k) + extra;
  const int64_t nb = kp / kActBlock;
  std::vector<float> xbuf(static_cast<size_t>(k) + 1);
  std::memcpy(xbuf.data() + 1, x.data(), sizeof(float) * static_cast<size_t>(k));
  std::vector<int8_t> q0(kp + 17, 0x55), q1(kp + 17, 0x55);
  std::vector<float> d0(nb + 2, kSentinel), d1(nb + 2, kSentinel), s0(nb + 2, kSentinel), s1(nb + 2, kSentinel);
  quantize_act_row_ref(xbuf.data() + 1, k, kp, q0.data() + 1, d0.data() + 1, s0.data() + 1, per_token);
  fn(xbuf.data() + 1, k, kp, q1.data() + 1, d1.data() + 1, s1.data() + 1, per_token);
  SCOPED_TRACE(what + " k=" + std::to_string(k) + " kp=" + std::to_string(kp) + (per_token ? " per_token" : " per_block"));
  ASSERT_EQ(std::memcmp(q0.data(), q1.data(), q0.size()), 0) << "q differs";
  ASSERT_EQ(std::memcmp(d0.data(), d1.data(), sizeof(float) * d0.size()), 0) << "d differs";
  ASSERT_EQ(std::memcmp(s0.data(), s1.data(), sizeof(float) * s0.size()), 0) << "ds differs";
}

TEST(NeonQuantizeAct, BitIdenticalToReference) {
  if (!neon_available()) GTEST_SKIP() << "NEON not available on this host";
  const QuantizeActFn fn = find_quantize_act(Isa::kNeon);
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t k : {1, 2, 5, 31, 32, 33, 100, 127, 128, 129, 255, 1000, 4097}) {
    for (bool per_token : {false, true}) {
      for (float scale : {1.0f, 3e-5f, 7e4f, 1e-38f, 1e30f}) {
        std::vector<float> x(static_cast<size_t>(k));
        for (float& v : x) v = normal(rng) * scale;
        if (k > 10) {
          x[3] = 0.0f;
          x[4] = -0.0f;
          x[k / 2] *= 40.0f;  // an outlier
        }
        check_act(fn, x, 0, per_token, "normal*" + std::to_string(scale));
        check_act(fn, x, 128, per_token, "padded normal*" + std::to_string(scale));
      }
      check_act(fn, std::vector<float>(static_cast<size_t>(k), 0.0f), 0, per_token, "zeros");
      check_act(fn, std::vector<float>(static_cast<size_t>(k), -0.7f), 0, per_token, "constant");
      // Ties: with amax = 127 the scale is 1, so x.5 values round half to even.
      std::vector<float> ties(static_cast<size_t>(k));
      for (int64_t i = 0; i < k; ++i) ties[i] = static_cast<float>(i % 9) - 4.5f;
      ties[0] = 127.0f;
      check_act(fn, ties, 0, per_token, "ties");
    }
  }
}

// ---- quantized GEMM ---------------------------------------------------------------------------

enum class Source { kQuantized, kRandomBytes, kFlat };
const char* source_name(Source s) {
  switch (s) {
    case Source::kQuantized: return "quantized";
    case Source::kRandomBytes: return "random-bytes";
    case Source::kFlat: return "flat";
  }
  return "?";
}

// Where the parts of a quantized row are (qtype.h).
struct RowLayout {
  int64_t nb;
  size_t d, m, quants;  // byte offsets
  size_t bytes;
};
RowLayout row_layout(const QTypeInfo& info, int64_t k) {
  const QRowLayout q = qrow_layout(info.type, k);
  RowLayout l;
  l.nb = q.nb;
  l.d = q.d_off;
  l.m = q.m_off;
  l.quants = q.q_off;
  l.bytes = l.quants + static_cast<size_t>(l.nb) * static_cast<size_t>(q.qbytes);
  return l;
}
float f32_at(const uint8_t* p, int64_t i) {
  float f;
  std::memcpy(&f, p + 4 * i, 4);
  return f;
}

float f16_at(const uint8_t* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return f16_to_f32(h);
}

// N weight rows of K elements, `row_bytes` apart (3 bytes of padding), starting one byte past an
// aligned address.
struct QWeights {
  std::vector<uint8_t> storage;
  uint8_t* data = nullptr;
  size_t row_bytes = 0;
};

QWeights make_weights(QType t, int N, int64_t K, Source src, std::mt19937& rng) {
  const QTypeInfo& info = qtype_info(t);
  const RowLayout l = row_layout(info, K);
  EXPECT_EQ(l.bytes, *qtype_row_bytes(t, static_cast<uint64_t>(K)));
  QWeights w;
  w.row_bytes = l.bytes + 3;
  w.storage.assign(w.row_bytes * static_cast<size_t>(N) + 1, 0xee);
  w.data = w.storage.data() + 1;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-1.0f / 64, 1.0f / 64);
  std::vector<float> x(static_cast<size_t>(K));
  for (int n = 0; n < N; ++n) {
    uint8_t* row = w.data + static_cast<size_t>(n) * w.row_bytes;
    switch (src) {
      case Source::kQuantized: {
        const float s = 0.02f * (1 + n % 3);
        for (float& v : x) v = normal(rng) * s;
        if (K > 4) x[static_cast<size_t>(K / 3)] = 0.5f;  // an outlier
        quantize_row(t, x.data(), K, row);
        break;
      }
      case Source::kRandomBytes: {
        for (size_t i = 0; i < l.bytes; ++i) row[i] = static_cast<uint8_t>(byte(rng));
        if (info.two_level) {
          const float D = std::fabs(scale(rng)) / 64, M = std::fabs(scale(rng)) / 8;
          std::memcpy(row, &D, 4);
          if (info.kind == QKind::kAsymmetric) std::memcpy(row + 4, &M, 4);
          break;
        }
        for (int64_t g = 0; g < l.nb; ++g) {
          const uint16_t d = f32_to_f16(scale(rng));
          std::memcpy(row + l.d + 2 * g, &d, 2);
          if (info.kind == QKind::kAsymmetric) {
            const uint16_t m = f32_to_f16(scale(rng) * 8);
            std::memcpy(row + l.m + 2 * g, &m, 2);
          }
        }
        break;
      }
      case Source::kFlat: {
        const float v = n % 2 == 0 ? 0.0f : 0.03f * static_cast<float>(n);
        for (float& e : x) e = v;
        quantize_row(t, x.data(), K, row);
        break;
      }
    }
  }
  return w;
}

// M rows of quantized activations, each of the three arrays one element past an aligned address.
struct QActs {
  std::vector<int8_t> q;
  std::vector<float> d, ds;
  ActQ8 a;
};

QActs make_acts(int M, int64_t K, bool per_token, std::mt19937& rng) {
  const int64_t kp = act_padded_k(K), nb = kp / kActBlock;
  QActs r;
  r.q.assign(static_cast<size_t>(M * kp + 1), 0);
  r.d.assign(static_cast<size_t>(M * nb + 1), 0.0f);
  r.ds.assign(static_cast<size_t>(M * nb + 1), 0.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(K));
  for (int m = 0; m < M; ++m) {
    for (float& v : x) v = normal(rng) * (1.0f + static_cast<float>(m));
    quantize_act_row_ref(x.data(), K, kp, r.q.data() + 1 + m * kp, r.d.data() + 1 + m * nb, r.ds.data() + 1 + m * nb,
                         per_token);
  }
  r.a.q = r.q.data() + 1;
  r.a.d = r.d.data() + 1;
  r.a.ds = r.ds.data() + 1;
  r.a.kp = kp;
  return r;
}

// The exact value of weight row `row` . activation row m (double arithmetic on the quantized
// operands, no cancellation), and the magnitude that bounds the float error of any summation
// order, including the reference's d_a * dot - z * ds_a form.
void exact_dot(QType t, const uint8_t* row, int64_t K, const ActQ8& a, int m, double* value, double* mag) {
  const QTypeInfo& info = qtype_info(t);
  const RowLayout l = row_layout(info, K);
  const int G = info.block_elems, sub = G / kActBlock, z = 1 << (info.bits - 1);
  const int64_t nbs = a.kp / kActBlock;
  const int8_t* aq = a.q + m * a.kp;
  uint8_t q[128];
  double v = 0, s = 0;
  for (int64_t g = 0; g < l.nb; ++g) {
    unpack_group(info.bits, G, row + l.quants + g * (G * info.bits / 8), q);
    double dw, mw;
    if (info.two_level) {
      const bool asym = info.kind == QKind::kAsymmetric;
      const int s = asym ? int(row[l.d + g]) : int(int8_t(row[l.d + g]));
      dw = f32_at(row, 0) * float(s);
      mw = asym ? f32_at(row, 1) * float(int8_t(row[l.m + g])) : 0.0;
    } else {
      dw = f16_at(row + l.d, g);
      mw = info.kind == QKind::kAsymmetric ? f16_at(row + l.m, g) : 0.0;
    }
    for (int sb = 0; sb < sub; ++sb) {
      const int64_t b = g * sub + sb;
      const double ad = a.d[m * nbs + b], ads = a.ds[m * nbs + b];
      int64_t dot = 0, sum = 0, absdot = 0, abssum = 0;
      for (int i = 0; i < kActBlock; ++i) {
        const int lv = info.kind == QKind::kCodebook ? static_cast<int8_t>(row[q[sb * kActBlock + i]])
                                                      : q[sb * kActBlock + i];
        const int av = aq[b * kActBlock + i];
        dot += lv * av;
        sum += av;
        absdot += std::abs(lv * av);
        abssum += std::abs(av);
      }
      switch (info.kind) {
        case QKind::kSymmetric:
          v += dw * ad * static_cast<double>(dot - z * sum);
          s += std::fabs(dw) * ad * static_cast<double>(absdot + z * abssum);
          break;
        case QKind::kAsymmetric:
          v += dw * ad * static_cast<double>(dot) + mw * ads;
          s += std::fabs(dw) * ad * static_cast<double>(absdot) + std::fabs(mw * ads);
          break;
        default:
          v += dw * ad * static_cast<double>(dot);
          s += std::fabs(dw) * ad * static_cast<double>(absdot);
          break;
      }
    }
  }
  *value = v;
  *mag = s;
}

// Runs fn into y [M][ldy = N + 3] pre-filled with a sentinel, checks the sentinel outside
// [n0, n1) and returns y as [M][N].
std::vector<float> run_qgemm(QGemmFn fn, int M, int N, int n0, int n1, int64_t K, const ActQ8& a, const QWeights& w) {
  const size_t ldy = static_cast<size_t>(N) + 3;
  std::vector<float> ybuf(ldy * M + 1, kSentinel);
  fn(M, n0, n1, N, K, a, w.data, w.row_bytes, ybuf.data() + 1, ldy);
  std::vector<float> y(static_cast<size_t>(M) * N, 0.0f);
  EXPECT_EQ(ybuf[0], kSentinel) << "wrote before y";
  for (int m = 0; m < M; ++m) {
    for (size_t n = 0; n < ldy; ++n) {
      const float v = ybuf[1 + m * ldy + n];
      if (n >= static_cast<size_t>(n0) && n < static_cast<size_t>(n1)) {
        y[static_cast<size_t>(m) * N + n] = v;
      } else if (v != kSentinel) {
        ADD_FAILURE() << "wrote y[" << m << "][" << n << "] outside [" << n0 << ", " << n1 << ")";
        return y;
      }
    }
  }
  return y;
}

struct Shape {
  int M, N;
  int64_t K;
};
// K tails against every group size (1..127 past a multiple of 128, and 32/64/96 exactly), M over
// the 4/2/1-row tiles, N odd.
constexpr Shape kShapes[] = {{1, 1, 1},    {1, 5, 31},   {1, 3, 32},   {2, 4, 33},    {3, 5, 64},
                             {4, 2, 96},   {5, 7, 100},  {1, 9, 128},  {7, 3, 129},   {9, 2, 200},
                             {4, 4, 256},  {2, 3, 300},  {6, 5, 1000}, {1, 3, 4160}, {8, 2, 4160}};

class NeonQGemmTest : public ::testing::TestWithParam<QType> {
 protected:
  void SetUp() override {
    if (!neon_available()) GTEST_SKIP() << "NEON not available on this host";
  }
};

TEST_P(NeonQGemmTest, MatchesReference) {
  const QType t = GetParam();
  const QKernel kern = find_qkernel(t, Isa::kNeon);
  ASSERT_EQ(kern.isa, Isa::kNeon);
  std::mt19937 rng(1000 + static_cast<int>(t));
  int case_no = 0;
  for (const Shape& s : kShapes) {
    for (Source src : {Source::kQuantized, Source::kRandomBytes, Source::kFlat}) {
      const bool per_token = (case_no++ % 3) == 1;
      const QWeights w = make_weights(t, s.N, s.K, src, rng);
      const QActs acts = make_acts(s.M, s.K, per_token, rng);
      const int sub0 = s.N / 3, sub1 = s.N - s.N / 4;
      for (auto [n0, n1] : {std::pair{0, s.N}, std::pair{sub0, sub1}}) {
        if (n1 <= n0) continue;
        SCOPED_TRACE(std::string(qtype_info(t).name) + " " + source_name(src) + " M=" + std::to_string(s.M) +
                     " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " n=[" + std::to_string(n0) + "," +
                     std::to_string(n1) + ")" + (per_token ? " per_token" : ""));
        const std::vector<float> got = run_qgemm(kern.gemm, s.M, s.N, n0, n1, s.K, acts.a, w);
        std::vector<float> ref(static_cast<size_t>(s.M) * s.N, 0.0f);
        qgemm_ref(t, s.M, n0, n1, s.K, acts.a, w.data, w.row_bytes, ref.data(), static_cast<size_t>(s.N));
        const double blocks = static_cast<double>(act_padded_k(s.K) / kActBlock);
        int bad = 0;
        std::string worst;
        double worst_ratio = 0;
        for (int m = 0; m < s.M; ++m) {
          for (int n = n0; n < n1; ++n) {
            double exact, mag;
            exact_dot(t, w.data + static_cast<size_t>(n) * w.row_bytes, s.K, acts.a, m, &exact, &mag);
            const double bound = (blocks + 16.0) * 2.0 * kEps * mag + 1e-30;
            const double g = got[static_cast<size_t>(m) * s.N + n], r = ref[static_cast<size_t>(m) * s.N + n];
            const double e = std::fmax(std::fabs(g - exact), std::fabs(g - r));
            if (!(std::fabs(g - exact) <= bound && std::fabs(g - r) <= 2 * bound)) {
              ++bad;
              if (!(e / bound <= worst_ratio)) {
                worst_ratio = e / bound;
                worst = "y[" + std::to_string(m) + "][" + std::to_string(n) + "] = " + std::to_string(g) + ", ref " +
                        std::to_string(r) + ", exact " + std::to_string(exact) + " (bound " + std::to_string(bound) + ")";
              }
            }
            ASSERT_LE(std::fabs(r - exact), bound) << "the reference itself is out of bound at y[" << m << "][" << n << "]";
          }
        }
        ASSERT_EQ(bad, 0) << bad << " outputs out of bound; worst " << worst;
      }
    }
  }
}

// y[m][n] depends only on activation row m and weight row n: the same bits whether a row is
// computed in a batch (any M tile) or alone, and for any split of [n0, n1) (threads split N).
TEST_P(NeonQGemmTest, DeterministicAcrossTilesAndSplits) {
  const QType t = GetParam();
  const QGemmFn fn = find_qkernel(t, Isa::kNeon).gemm;
  std::mt19937 rng(77 + static_cast<int>(t));
  const int M = 7, N = 11;
  const int64_t K = 1000;
  const QWeights w = make_weights(t, N, K, Source::kQuantized, rng);
  const QActs acts = make_acts(M, K, false, rng);
  const std::vector<float> full = run_qgemm(fn, M, N, 0, N, K, acts.a, w);
  const int64_t nbs = acts.a.kp / kActBlock;
  for (int m = 0; m < M; ++m) {
    ActQ8 one = acts.a;
    one.q += m * acts.a.kp;
    one.d += m * nbs;
    one.ds += m * nbs;
    for (int split : {1, 4, 10}) {
      const std::vector<float> lo = run_qgemm(fn, 1, N, 0, split, K, one, w);
      const std::vector<float> hi = run_qgemm(fn, 1, N, split, N, K, one, w);
      for (int n = 0; n < N; ++n) {
        ASSERT_EQ(n < split ? lo[n] : hi[n], full[static_cast<size_t>(m) * N + n]) << "m=" << m << " n=" << n << " split=" << split;
      }
    }
  }
}

TEST_P(NeonQGemmTest, EmptyRangesWriteNothing) {
  const QType t = GetParam();
  const QGemmFn fn = find_qkernel(t, Isa::kNeon).gemm;
  std::mt19937 rng(5);
  const QWeights w = make_weights(t, 6, 70, Source::kQuantized, rng);
  const QActs acts = make_acts(3, 70, false, rng);
  run_qgemm(fn, 3, 6, 4, 4, 70, acts.a, w);  // the sentinel checks are the test
  run_qgemm(fn, 0, 6, 0, 6, 70, acts.a, w);
}

INSTANTIATE_TEST_SUITE_P(AllQTypes, NeonQGemmTest, ::testing::ValuesIn(quantized_types()),
                         [](const ::testing::TestParamInfo<QType>& info) {
                           return std::string(qtype_info(info.param).name);
                         });

}  // namespace
}  // namespace mxlm
