// Reference quantizers (the spec of every format): packing, error ceilings on Gaussian and
// heavy-tailed data, activation quantization and the reference GEMM.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/quant.h"

namespace mxlm {
namespace {

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Student-t with 3 degrees of freedom: heavy tails like real weight rows with outliers.
std::vector<float> heavy_tailed(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(3.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = 0.01f * d(rng);
  return v;
}

double nmse(QType t, const std::vector<float>& x, int64_t k) {
  const int64_t rows = static_cast<int64_t>(x.size()) / k;
  const size_t rb = *qtype_row_bytes(t, static_cast<uint64_t>(k));
  std::vector<uint8_t> q(rb);
  std::vector<float> y(static_cast<size_t>(k));
  double err = 0, ref = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * k;
    quantize_row(t, xr, k, q.data());
    dequantize_row(t, q.data(), k, y.data());
    for (int64_t i = 0; i < k; ++i) {
      err += double(xr[i] - y[i]) * (xr[i] - y[i]);
      ref += double(xr[i]) * xr[i];
    }
  }
  return err / ref;
}

TEST(QuantPack, RoundTripsEveryWidth) {
  std::mt19937 rng(1);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int group : {32, 64, 128}) {
      std::vector<uint8_t> q(group), back(group), packed(group);
      for (auto& v : q) v = static_cast<uint8_t>(rng() % (1u << bits));
      pack_group(bits, group, q.data(), packed.data());
      unpack_group(bits, group, packed.data(), back.data());
      EXPECT_EQ(q, back) << bits << " bits, group " << group;
    }
  }
  // The documented layout: 4 bits, byte j = q[j] | q[j + G/2] << 4.
  uint8_t q[32], p[16];
  for (int i = 0; i < 32; ++i) q[i] = static_cast<uint8_t>(i % 16);
  pack_group(4, 32, q, p);
  EXPECT_EQ(p[3], 3 | (3 << 4));
  // 1-bit plane of 3 bits in natural order: q[e] bit 2 at bit e.
  uint8_t q3[32] = {}, p3[12];
  q3[9] = 4;
  pack_group(3, 32, q3, p3);
  EXPECT_EQ(p3[8 + 1], 1 << 1);
}

TEST(QuantTable, RowBytesMatchBitsPerWeight) {
  for (const auto& info : kQTypes) {
    const auto rb = qtype_row_bytes(info.type, 4096);
    ASSERT_TRUE(rb.has_value());
    EXPECT_NEAR(8.0 * double(*rb) / 4096, info.bits_per_weight, 0.01) << info.name;
    EXPECT_EQ(qtype_from_name(info.name), info.type);
  }
  EXPECT_EQ(*qtype_row_bytes(QType::kQ4G32, 172), 6u * 18u);  // a partial last group
  EXPECT_FALSE(qtype_from_name("q7_g32").has_value());
}

// ---- independent optima ---------------------------------------------------------------------
//
// The ceilings below do not come from the quantizer's own output: a brute-force search, written
// here from the documented dequantization formulas only (kernels/qtype.h), finds a near-optimal
// encoding of every group, and the quantizer must come within a few per cent of it. Each search
// scans a dense grid of candidate parameters; for each it assigns every value its nearest level,
// refits the parameters by least squares, rounds them to f16 as the format stores them, assigns
// again and measures. A quantizer without its scale search (d = absmax / 2^(b-1) only) lands
// 2-7 % above the optimum; the reference lands within 0.5-1 % of it.

float f16r(float f) { return f16_to_f32(f32_to_f16(f)); }

// Squared error of x under w = d (q - z), q the nearest level in [0, 2^b).
double sym_error(const float* x, int n, int bits, float d) {
  const int z = 1 << (bits - 1);
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const double q = d == 0 ? 0 : std::clamp(std::nearbyint(double(x[i]) / d), double(-z), double(z - 1));
    e += (x[i] - d * q) * (x[i] - d * q);
  }
  return e;
}

// Brute-force symmetric optimum: 4000 scales between amax / (4 z) and 2 amax / (z - 1/2), both
// signs (the level range is asymmetric: -z .. z-1), each refit once.
double sym_optimum(const float* x, int n, int bits) {
  const int z = 1 << (bits - 1);
  double amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, double(std::abs(x[i])));
  if (amax == 0) return 0;
  double best = INFINITY;
  const double lo = amax / (4.0 * z), hi = 2.0 * amax / (z - 0.5);
  for (int s = 0; s < 4000; ++s) {
    for (double sign : {1.0, -1.0}) {
      const double d0 = sign * (lo + (hi - lo) * s / 3999.0);
      double sxq = 0, sqq = 0;
      for (int i = 0; i < n; ++i) {
        const double q = std::clamp(std::nearbyint(x[i] / d0), double(-z), double(z - 1));
        sxq += x[i] * q;
        sqq += q * q;
      }
      best = std::min(best, sym_error(x, n, bits, f16r(static_cast<float>(d0))));
      if (sqq > 0) best = std::min(best, sym_error(x, n, bits, f16r(static_cast<float>(sxq / sqq))));
    }
  }
  return best;
}

// Squared error of x under w = d q + m, q the nearest level in [0, 2^b).
double asym_error(const float* x, int n, int bits, float d, float m) {
  const int qmax = (1 << bits) - 1;
  double e = 0;
  for (int i = 0; i < n; ++i) {
    const double q = d <= 0 ? 0 : std::clamp(std::nearbyint((double(x[i]) - m) / d), 0.0, double(qmax));
    const double r = x[i] - (double(d) * q + m);
    e += r * r;
  }
  return e;
}

// Brute-force asymmetric optimum: the range [lo + a, hi - b] for a, b on a 60 x 60 grid over
// [0, 45 %] of the span, each assignment refit by least squares for (d, m).
double asym_optimum(const float* x, int n, int bits) {
  const int qmax = (1 << bits) - 1;
  const double lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n), span = hi - lo;
  if (span == 0) return asym_error(x, n, bits, 0, f16r(static_cast<float>(lo)));
  double best = INFINITY;
  for (int ia = 0; ia < 60; ++ia) {
    for (int ib = 0; ib < 60; ++ib) {
      const double a = lo + 0.45 * span * ia / 59.0, b = hi - 0.45 * span * ib / 59.0;
      if (b <= a) continue;
      const double d0 = (b - a) / qmax;
      double sw = 0, sq = 0, sqq = 0, sx = 0, sxq = 0;
      for (int i = 0; i < n; ++i) {
        const double q = std::clamp(std::nearbyint((x[i] - a) / d0), 0.0, double(qmax));
        sw += 1;
        sq += q;
        sqq += q * q;
        sx += x[i];
        sxq += x[i] * q;
      }
      best = std::min(best, asym_error(x, n, bits, f16r(static_cast<float>(d0)), f16r(static_cast<float>(a))));
      const double det = sw * sqq - sq * sq;
      if (det > 0) {
        const double d = (sw * sxq - sq * sx) / det, m = (sqq * sx - sq * sxq) / det;
        if (d > 0) best = std::min(best, asym_error(x, n, bits, f16r(static_cast<float>(d)), f16r(static_cast<float>(m))));
      }
    }
  }
  return best;
}

// Squared error of x under w = d * cb[q], q the nearest entry.
double codebook_error(const float* x, int n, const int8_t* cb, int levels, float d) {
  double e = 0;
  for (int i = 0; i < n; ++i) {
    double best = INFINITY;
    for (int l = 0; l < levels; ++l) best = std::min(best, std::abs(double(x[i]) - double(d) * cb[l]));
    e += best * best;
  }
  return e;
}

// Per group, given the row's stored codebook: the best f16 scale among 4000 candidates between
// amax / 512 and amax / 32 (the codebook's largest entry is 64..127).
double codebook_optimum(const float* x, int n, const int8_t* cb, int levels) {
  double amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, double(std::abs(x[i])));
  if (amax == 0) return 0;
  double best = INFINITY;
  for (int s = 0; s < 4000; ++s) {
    const double d = amax / 512.0 + (amax / 32.0 - amax / 512.0) * s / 3999.0;
    best = std::min(best, codebook_error(x, n, cb, levels, f16r(static_cast<float>(d))));
  }
  return best;
}

// Two-level formats: the best codes of one group under the row's stored D (and M), by brute
// force over every code (round-to-nearest levels are optimal for a fixed d, m).
double two_level_optimum(const float* x, int n, const QTypeInfo& info, float D, float M) {
  double best = INFINITY;
  if (info.kind == QKind::kSymmetric) {
    for (int s = -127; s <= 127; ++s) best = std::min(best, sym_error(x, n, info.bits, D * static_cast<float>(s)));
  } else {
    for (int s = 0; s <= 255; ++s) {
      for (int o = -127; o <= 127; ++o) {
        best = std::min(best, asym_error(x, n, info.bits, D * static_cast<float>(s), M * static_cast<float>(o)));
      }
    }
  }
  return best;
}

struct Reach {
  double quantizer, optimum;
};

// Sums the quantizer's and the brute-force optimum's squared errors over `rows` rows of k.
Reach reach(QType t, const std::vector<float>& x, int64_t k) {
  const QTypeInfo& info = qtype_info(t);
  const int G = info.block_elems, L = 1 << info.bits;
  const int64_t rows = static_cast<int64_t>(x.size()) / k;
  std::vector<uint8_t> q(*qtype_row_bytes(t, static_cast<uint64_t>(k)));
  std::vector<float> y(static_cast<size_t>(k));
  Reach r{0, 0};
  for (int64_t row = 0; row < rows; ++row) {
    const float* xr = x.data() + row * k;
    quantize_row(t, xr, k, q.data());
    dequantize_row(t, q.data(), k, y.data());
    for (int64_t i = 0; i < k; ++i) r.quantizer += double(xr[i] - y[i]) * (xr[i] - y[i]);
    float D = 0, M = 0;
    if (info.two_level) {
      std::memcpy(&D, q.data(), 4);
      if (info.kind == QKind::kAsymmetric) std::memcpy(&M, q.data() + 4, 4);
    }
    for (int64_t g = 0; g < k / G; ++g) {
      const float* xg = xr + g * G;
      if (info.two_level) {
        r.optimum += two_level_optimum(xg, G, info, D, M);
        continue;
      }
      switch (info.kind) {
        case QKind::kSymmetric: r.optimum += sym_optimum(xg, G, info.bits); break;
        case QKind::kAsymmetric: r.optimum += asym_optimum(xg, G, info.bits); break;
        default: r.optimum += codebook_optimum(xg, G, reinterpret_cast<const int8_t*>(q.data()), L); break;
      }
    }
  }
  return r;
}

// Every quantized format within a stated factor of the brute-force optimum of its own
// parameterization, on Gaussian and Student-t(3) rows (4 x 512 each). `gaussian` and `heavy`
// are the reference quantizer's measured quantizer / optimum ratios; the ceiling adds a quarter
// of the distance to 1 (at least 0.002). Without the scale searches (symmetric: one target
// instead of 34, asymmetric: the full range only, codebook: no scale refit) every format lands
// above its ceiling on at least one of the two: q4_g32 1.061 / 1.028, q5_g32 1.040 / 1.013,
// q8_g128 1.055 / 1.064, q4a_g32 1.185 / 1.180, nu4_g32 1.068 / 1.041, nu3_g32 1.092 / 1.105.
// The 8-bit ratios are large because 17 of the brute force's ~200 useful f16 scales per group
// are tried: the gap is the luck of rounding, worth ~1e-5 NMSE.
struct Reached {
  QType t;
  double gaussian, heavy;
};

TEST(QuantError, NearBruteForceOptimum) {
#if defined(__aarch64__)
  // The reference quantizer is ISA-independent scalar code, checked natively; under qemu the
  // brute force would take minutes of the NEON suite.
  GTEST_SKIP() << "checked on the native build";
#endif
  const int64_t k = 512;
  const auto g = gaussian(4 * k, 21), h = heavy_tailed(4 * k, 22);
  const Reached measured[] = {
      {QType::kQ8G32, 1.1130, 1.0988},  {QType::kQ8G64, 1.0707, 1.0447},  {QType::kQ8G128, 1.0429, 1.0249},
      {QType::kQ6G32, 1.0219, 1.0141},  {QType::kQ5G32, 1.0083, 1.0009},  {QType::kQ4G32, 1.0079, 1.0019},
      {QType::kQ4G64, 1.0142, 1.0116},  {QType::kQ4G128, 1.0403, 1.0434}, {QType::kQ3G32, 1.0086, 1.0072},
      {QType::kQ2G32, 1.0185, 1.0146},  {QType::kQ4AG32, 1.0067, 1.0037}, {QType::kQ3AG32, 1.0046, 1.0010},
      {QType::kQ2AG32, 1.0215, 1.0062}, {QType::kQ4AG64, 1.0101, 1.0069}, {QType::kQ2AG64, 1.0826, 1.0261},
      {QType::kNU4G32, 1.0228, 1.0085}, {QType::kNU3G32, 1.0316, 1.0219},
      // Two-level: the optimum over every code under the row's stored D (and M).
      {QType::kQ2KG32, 1.0171, 1.0077}, {QType::kQ3KG32, 1.0034, 1.0028}, {QType::kQ4KG32, 1.0011, 1.0000},
      {QType::kQ5KG32, 1.0075, 1.0001}, {QType::kQ6KG32, 1.0053, 1.0103}, {QType::kQ2AKG32, 1.0166, 1.0039},
      {QType::kQ3AKG32, 1.0048, 1.0011}, {QType::kQ4AKG32, 1.0143, 1.0188},
  };
  auto ceiling = [](double m) { return m + std::max(0.25 * (m - 1), 0.002); };
  int checked = 0;
  for (const auto& c : measured) {
    const std::string name(qtype_info(c.t).name);
    const Reach rg = reach(c.t, g, k), rh = reach(c.t, h, k);
    // The brute force is a lower bound only up to its grid: the quantizer may not beat it by
    // more than float rounding.
    EXPECT_GE(rg.quantizer, rg.optimum * 0.9999) << name;
    EXPECT_GE(rh.quantizer, rh.optimum * 0.9999) << name;
    EXPECT_LT(rg.quantizer / rg.optimum, ceiling(c.gaussian)) << name << " gaussian";
    EXPECT_LT(rh.quantizer / rh.optimum, ceiling(c.heavy)) << name << " heavy-tailed";
    std::printf("%-8s quantizer / optimum: gaussian %.4f (ceiling %.4f), heavy %.4f (ceiling %.4f)\n", name.c_str(),
                rg.quantizer / rg.optimum, ceiling(c.gaussian), rh.quantizer / rh.optimum, ceiling(c.heavy));
    ++checked;
  }
  int quantized = 0;
  for (const auto& info : kQTypes) quantized += info.kind != QKind::kFloat;
  EXPECT_EQ(checked, quantized) << "every quantized format has a row";
}

TEST(QuantError, CodebookBeatsUniformOnHeavyTails) {
  const int64_t k = 4096;
  const auto h = heavy_tailed(16 * k, 11);
  EXPECT_LT(nmse(QType::kNU4G32, h, k), nmse(QType::kQ4G32, h, k));
  EXPECT_LT(nmse(QType::kNU3G32, h, k), nmse(QType::kQ3G32, h, k));
}

TEST(QuantError, TailsConstantsAndZeros) {
  for (const auto& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    for (int64_t k : {1, 17, 172, 200}) {
      std::vector<float> x = gaussian(static_cast<size_t>(k), static_cast<uint32_t>(k));
      std::vector<uint8_t> q(*qtype_row_bytes(info.type, static_cast<uint64_t>(k)));
      std::vector<float> y(static_cast<size_t>(k));
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      double err = 0, ref = 0;
      for (int64_t i = 0; i < k; ++i) {
        err += double(x[i] - y[i]) * (x[i] - y[i]);
        ref += double(x[i]) * x[i];
      }
      EXPECT_LT(err / ref, info.bits >= 4 ? 0.05 : 0.3) << info.name << " k=" << k;
      // All zeros stay zero; a constant row is close.
      std::fill(x.begin(), x.end(), 0.0f);
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      for (float v : y) EXPECT_EQ(v, 0.0f) << info.name;
      std::fill(x.begin(), x.end(), 0.25f);
      quantize_row(info.type, x.data(), k, q.data());
      dequantize_row(info.type, q.data(), k, y.data());
      for (float v : y) EXPECT_NEAR(v, 0.25f, 0.25f * 0.02f) << info.name;
    }
  }
}

// quantize_row_params (the group fit without the quant indices: the GPTQ encoder's static
// groups) returns exactly the parameters quantize_row writes, for every quantized format, with
// and without importance, tail groups and zero groups included.
TEST(QuantParams, MatchQuantizeRow) {
  std::mt19937 rng(17);
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::student_t_distribution<float> st(2.0f);
  std::uniform_real_distribution<float> u(0.0f, 4.0f);
  int checked = 0;
  for (const QTypeInfo& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    const QType t = info.type;
    for (int64_t k : {32, 172, 512, 1280}) {
      for (int rep = 0; rep < 6; ++rep) {
        std::vector<float> x(static_cast<size_t>(k)), imp(static_cast<size_t>(k));
        for (int64_t i = 0; i < k; ++i) {
          x[i] = rep % 3 == 1 ? 0.01f * st(rng) : g(rng);
          imp[i] = i % 11 == 4 ? 0.0f : u(rng);
        }
        if (rep == 2) std::fill(x.begin(), x.begin() + std::min<int64_t>(k, 40), 0.0f);  // zero groups
        if (rep == 5) {
          for (auto& v : x) v *= 1e-4f;  // scales in f16's subnormal range
        }
        const bool use_imp = rep % 2 == 0;
        const size_t rb = *qtype_row_bytes(t, static_cast<uint64_t>(k));
        std::vector<uint8_t> row(rb);
        quantize_row(t, x.data(), k, row.data(), use_imp ? imp.data() : nullptr);
        const int64_t nb = (k + info.block_elems - 1) / info.block_elems;
        std::vector<float> d(static_cast<size_t>(nb)), m(static_cast<size_t>(nb));
        int8_t cb[16] = {};
        float rs[2] = {-1, -1};
        quantize_row_params(t, x.data(), k, use_imp ? imp.data() : nullptr, d.data(), m.data(), cb, rs);
        const int L = info.kind == QKind::kCodebook ? 1 << info.bits : 0;
        for (int l = 0; l < L; ++l) ASSERT_EQ(cb[l], static_cast<int8_t>(row[l])) << info.name << " k " << k << " rep " << rep;
        // The parameter bytes (codebook, row scales, group scales and offsets) written from the
        // returned parameters equal quantize_row's.
        const QRowLayout lay = qrow_layout(t, k);
        std::vector<uint8_t> params(rb, 0);
        store_row_params(t, k, d.data(), m.data(), cb, rs, params.data());
        for (size_t i = 0; i < lay.q_off; ++i) {
          ASSERT_EQ(params[i], row[i]) << info.name << " k " << k << " rep " << rep << " byte " << i;
        }
        // d and m are what dequantization computes: a row with every quant at level 1 (or, for
        // symmetric formats, at z + 1) dequantizes to d + m (d) in every group.
        if (info.kind != QKind::kCodebook) {
          for (int64_t b = 0; b < nb; ++b) {
            std::vector<uint8_t> qs(static_cast<size_t>(info.block_elems), static_cast<uint8_t>(info.kind == QKind::kSymmetric ? (1 << (info.bits - 1)) + 1 : 1));
            pack_group(info.bits, info.block_elems, qs.data(), params.data() + lay.q_off + static_cast<size_t>(b) * lay.qbytes);
          }
          std::vector<float> y(static_cast<size_t>(k));
          dequantize_row(t, params.data(), k, y.data());
          for (int64_t b = 0; b < nb; ++b) {
            const float want = info.kind == QKind::kSymmetric ? d[b] : d[b] + m[b];
            ASSERT_EQ(y[b * info.block_elems], want) << info.name << " k " << k << " rep " << rep << " group " << b;
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 23 * 4 * 6 + 2 * 4 * 6);  // 23 scalar formats (8 two-level) + 2 codebook formats
}

// The row fit is compiled once per ISA (kernels/quant_fit.cc: the baseline and AVX2 copies hold a
// candidate's 8 partial sums in one vector, the AVX-512 copy 16 candidates in one vector) and
// quantize_row runs the selected ISA's: every copy must write the same bytes, for every format,
// with and without importance, on the groups that take the searches' special paths (zero
// groups, constant groups, ties of magnitude, signed zeros at a range's end, f16-subnormal
// scales, tails).
TEST(QuantCopies, SameBytesOnEveryIsa) {
  std::vector<Isa> copies;
  for (Isa isa : {Isa::kRef, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    std::vector<uint8_t> probe(*qtype_row_bytes(QType::kQ4G32, 32));
    const std::vector<float> x = gaussian(32, 1);
    if (quantize_row_with(isa, QType::kQ4G32, x.data(), 32, probe.data())) copies.push_back(isa);
  }
  ASSERT_FALSE(copies.empty());
  ASSERT_EQ(copies.front(), Isa::kRef);
  if (copies.size() == 1) GTEST_SKIP() << "one copy of the row fit on this build and CPU";
  std::mt19937 rng(29);
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::student_t_distribution<float> st(3.0f);
  std::uniform_real_distribution<float> u(0.0f, 4.0f);
  int compared = 0;
  for (const QTypeInfo& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    const QType t = info.type;
    for (int64_t k : {32, 172, 512, 1280}) {
      for (int rep = 0; rep < 8; ++rep) {
        std::vector<float> x(static_cast<size_t>(k)), imp(static_cast<size_t>(k));
        for (int64_t i = 0; i < k; ++i) {
          x[i] = rep % 4 == 1 ? 0.01f * st(rng) : g(rng);
          imp[i] = i % 13 == 5 ? 0.0f : u(rng);
        }
        if (rep == 2) std::fill(x.begin(), x.begin() + std::min<int64_t>(k, 40), 0.0f);  // zero groups
        if (rep == 3) {
          for (int64_t i = 0; i < k; ++i) {
            if (i % 64 < 32) x[i] = 0.25f;  // constant groups
            if (i % 9 == 0) x[i] = -x[i > 0 ? i - 1 : 0];  // ties of |x|
          }
        }
        if (rep == 4 || rep == 6) {
          // The range ends at 0, the first zero -0 (+0 for rep 6) and a later one +0 (-0), in
          // lanes of 16 where the later zero sits in the lower lane.
          const float s = rep == 4 ? 1.0f : -1.0f;
          for (int64_t i = 0; i < k; ++i) {
            x[i] = s * (std::abs(x[i]) + 1e-3f);
            if (i % 32 == 7) x[i] = -s * 0.0f;
            if (i % 32 == 17) x[i] = s * 0.0f;
          }
        }
        if (rep == 5) {
          for (auto& v : x) v *= 1e-4f;  // scales in f16's subnormal range
        }
        const float* im = rep % 2 == 0 ? imp.data() : nullptr;
        const size_t rb = *qtype_row_bytes(t, static_cast<uint64_t>(k));
        std::vector<uint8_t> want(rb), got(rb);
        ASSERT_TRUE(quantize_row_with(Isa::kRef, t, x.data(), k, want.data(), im));
        for (size_t c = 1; c < copies.size(); ++c) {
          std::fill(got.begin(), got.end(), uint8_t{0xA5});
          ASSERT_TRUE(quantize_row_with(copies[c], t, x.data(), k, got.data(), im));
          for (size_t i = 0; i < rb; ++i) {
            ASSERT_EQ(got[i], want[i]) << info.name << " on " << isa_name(copies[c]) << ", k " << k << " rep " << rep
                                       << " byte " << i;
          }
          ++compared;
        }
      }
    }
  }
  EXPECT_EQ(compared, 25 * 4 * 8 * static_cast<int>(copies.size() - 1));
}

TEST(ActQuant, ScalesSumsAndPadding) {
  const int64_t k = 100, kp = act_padded_k(k);
  EXPECT_EQ(kp, 128);
  std::vector<float> x = gaussian(static_cast<size_t>(k), 3);
  x[5] = 1.0f;  // an outlier in block 0
  for (bool per_token : {false, true}) {
    std::vector<int8_t> q(static_cast<size_t>(kp));
    std::vector<float> d(kp / 32), ds(kp / 32);
    quantize_act_row_ref(x.data(), k, kp, q.data(), d.data(), ds.data(), per_token);
    for (int64_t i = k; i < kp; ++i) EXPECT_EQ(q[i], 0);
    EXPECT_EQ(q[5], 127);
    for (int64_t b = 0; b < kp / 32; ++b) {
      int sum = 0;
      for (int i = 0; i < 32; ++i) sum += q[b * 32 + i];
      EXPECT_FLOAT_EQ(ds[b], d[b] * static_cast<float>(sum));
      for (int i = 0; i < 32 && b * 32 + i < k; ++i) EXPECT_NEAR(q[b * 32 + i] * d[b], x[b * 32 + i], 0.5001f * d[b]);
    }
    if (per_token) EXPECT_EQ(d[1], d[0]);
    else EXPECT_LT(d[1], d[0]);
  }
}

// The reference GEMM equals the float product of dequantized weights and dequantized
// activations up to float rounding (the integer dot is exact).
TEST(QGemmRef, MatchesDequantizedProduct) {
  const int M = 3, N = 5;
  for (const auto& info : kQTypes) {
    if (info.kind == QKind::kFloat) continue;
    for (int64_t K : {64, 172, 256}) {
      const int64_t kp = act_padded_k(K);
      const size_t rb = *qtype_row_bytes(info.type, static_cast<uint64_t>(K));
      std::vector<uint8_t> w(rb * N);
      auto wf = gaussian(static_cast<size_t>(N * K), 5);
      for (int n = 0; n < N; ++n) quantize_row(info.type, wf.data() + n * K, K, w.data() + n * rb);
      auto x = gaussian(static_cast<size_t>(M * K), 6);
      std::vector<int8_t> q(M * kp);
      std::vector<float> d(M * kp / 32), ds(M * kp / 32);
      for (int m = 0; m < M; ++m) {
        quantize_act_row_ref(x.data() + m * K, K, kp, q.data() + m * kp, d.data() + m * kp / 32, ds.data() + m * kp / 32, false);
      }
      std::vector<float> y(M * N, -1.0f);
      qgemm_ref(info.type, M, 0, N, K, ActQ8{q.data(), d.data(), ds.data(), kp}, w.data(), rb, y.data(), N);
      std::vector<float> wd(static_cast<size_t>(K));
      for (int n = 0; n < N; ++n) {
        dequantize_row(info.type, w.data() + n * rb, K, wd.data());
        for (int m = 0; m < M; ++m) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < K; ++i) {
            const double a = q[m * kp + i] * double(d[m * kp / 32 + i / 32]);
            ref += a * wd[i];
            mag += std::abs(a * wd[i]);
          }
          EXPECT_NEAR(y[m * N + n], ref, 1e-5 * mag + 1e-9) << info.name << " K=" << K;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mxlm
