// Quantized GEMM kernels (kernels/quant.h, kernels/simd/qgemm_x86.cc) against the reference
// qgemm_ref, and the SIMD activation quantizers against quantize_act_row_ref.
//
// Every kernel must compute each 32-element block's integer dot product exactly; only the float
// combination of the blocks (scales, offsets) may differ from the reference in rounding and
// summation order. The bound used here follows from that. Write, for output (m, n) and
// activation block b in weight group g,
//   T_b = |dw_g| * |da_b| * sum_{i in b} |u_i| * |a_i|  +  |c_g| * |ds_b|
// where u_i is the weight as an unsigned integer (q, or cb[q] + 128 for codebooks: the largest
// integer form any implementation multiplies with) and c_g the offset coefficient (z * dw_g for
// symmetric formats, z = 2^(bits-1), 128 for codebooks; m_g for asymmetric ones). Both the
// reference and a kernel form each block term with a few roundings of relative size eps and add
// at most n_blocks block terms, n_groups offset terms and a 16-lane reduction, each addition
// adding at most eps times the magnitude of the partial sum, itself at most sum_b T_b. So
//   |y - y_ref| <= (2 * n_blocks + 32) * FLT_EPSILON * sum_b T_b
// (the first-order worst case for both, rounded up). A wrong weight/activation pairing or a lost
// block shows up as an error of the order of a single T_b, far above this.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/isa.h"
#include "kernels/quant.h"
#include "kernels/qtype.h"
#include "kernels/simd/blocking.h"

namespace mxlm {
namespace {

constexpr float kSentinel = -12345.25f;

std::vector<QType> quant_types() {
  std::vector<QType> v;
  for (const QTypeInfo& info : kQTypes) {
    if (info.kind != QKind::kFloat) v.push_back(info.type);
  }
  return v;
}

std::string isa_label(Isa isa) { return std::string(isa_name(isa)); }

// ---- weights --------------------------------------------------------------------------------

// Quantized rows [rows][row_bytes], cached per (type, K, rows): quantization dominates the cost.
struct QuantRows {
  size_t row_bytes = 0;
  std::vector<uint8_t> data;
};

const QuantRows& quantized_rows(QType t, int64_t K, int rows) {
  static std::map<std::tuple<int, int64_t, int>, QuantRows> cache;
  auto key = std::make_tuple(static_cast<int>(t), K, rows);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  QuantRows q;
  q.row_bytes = static_cast<size_t>(*qtype_row_bytes(t, static_cast<uint64_t>(K)));
  q.data.resize(q.row_bytes * rows);
  std::mt19937 rng(static_cast<uint32_t>(K * 131 + rows * 7 + static_cast<int>(t)));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(K));
  for (int r = 0; r < rows; ++r) {
    // Vary the row scale and add a few outliers; every third row has a mean shift (asymmetric).
    const float scale = 0.01f * (1 + r % 5), shift = r % 3 == 0 ? 0.5f * scale : 0.0f;
    for (int64_t i = 0; i < K; ++i) x[i] = shift + scale * nd(rng) * (i % 97 == 0 ? 6.0f : 1.0f);
    quantize_row(t, x.data(), K, q.data.data() + q.row_bytes * r);
  }
  return cache.emplace(key, std::move(q)).first->second;
}

// The parts of one quantized row (kernels/qtype.h): per group its scale and offset as the
// reference computes them (f16, or two-level codes under the row's f32 D and M).
struct RowParts {
  const int8_t* cb = nullptr;
  const uint8_t* row = nullptr;
  const uint8_t* d = nullptr;
  const uint8_t* m = nullptr;
  const uint8_t* quants = nullptr;
  int64_t nb = 0;
  const QTypeInfo* info = nullptr;
};

RowParts row_parts(QType t, int64_t K, const uint8_t* row) {
  const QTypeInfo& info = qtype_info(t);
  const QRowLayout L = qrow_layout(t, K);
  RowParts p;
  p.info = &info;
  p.row = row;
  p.nb = L.nb;
  if (info.kind == QKind::kCodebook) p.cb = reinterpret_cast<const int8_t*>(row);
  p.d = row + L.d_off;
  p.m = info.kind == QKind::kAsymmetric ? row + L.m_off : nullptr;
  p.quants = row + L.q_off;
  return p;
}

float f16_at(const uint8_t* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return f16_to_f32(h);
}

float f32_at(const uint8_t* p, int64_t i) {
  float f;
  std::memcpy(&f, p + 4 * i, 4);
  return f;
}

double group_scale(const RowParts& p, int64_t g) {
  if (!p.info->two_level) return f16_at(p.d, g);
  const int s = p.m ? int(p.d[g]) : int(static_cast<int8_t>(p.d[g]));
  return f32_at(p.row, 0) * static_cast<float>(s);
}

double group_offset(const RowParts& p, int64_t g) {
  if (!p.m) return 0;
  if (!p.info->two_level) return f16_at(p.m, g);
  return f32_at(p.row, 1) * static_cast<float>(static_cast<int8_t>(p.m[g]));
}

// ---- the error bound ------------------------------------------------------------------------

double error_bound(QType t, int64_t K, const uint8_t* row, const ActQ8& a, int m) {
  const QTypeInfo& info = qtype_info(t);
  const RowParts rp = row_parts(t, K, row);
  const int G = info.block_elems, sub = G / kActBlock, qbytes = G * info.bits / 8;
  const int64_t nbs = a.kp / kActBlock;
  const double z = info.kind == QKind::kCodebook ? 128.0 : std::ldexp(1.0, info.bits - 1);
  std::vector<uint8_t> q(static_cast<size_t>(G));
  double sum = 0;
  for (int64_t g = 0; g < rp.nb; ++g) {
    unpack_group(info.bits, G, rp.quants + g * qbytes, q.data());
    const double dw = std::fabs(group_scale(rp, g));
    const double c = info.kind == QKind::kAsymmetric ? std::fabs(group_offset(rp, g)) : z * dw;
    for (int s = 0; s < sub; ++s) {
      const int64_t b = g * sub + s;
      double dot = 0;
      for (int i = 0; i < kActBlock; ++i) {
        const int e = s * kActBlock + i;
        const double u = rp.cb ? rp.cb[q[e]] + 128.0 : q[e];
        dot += u * std::fabs(static_cast<double>(a.q[static_cast<int64_t>(m) * a.kp + b * kActBlock + i]));
      }
      sum += dw * std::fabs(a.d[m * nbs + b]) * dot + c * std::fabs(a.ds[m * nbs + b]);
    }
  }
  return (2.0 * rp.nb * sub + 32.0) * FLT_EPSILON * sum;
}

// ---- the GEMM test --------------------------------------------------------------------------

struct Shape {
  int m, n, k, n0;
};

// M in {1,2,3,4,5,8,17}, N tails {1,3,7,16,33}, K in {32,96,128,172,256,1000,4096} with n0 > 0
// sub-ranges; plus shapes that cut N into L2 blocks (M > 4, many rows) and K into activation
// slabs (K beyond one slab for 4 rows and for 1 row; for 2 rows over a group of 16 interleaved
// rows, qgemm_x86_ri_inl.h, taken in part).
constexpr Shape kShapes[] = {
    {1, 1, 32, 0},     {1, 3, 96, 2},    {1, 7, 128, 0},   {1, 16, 172, 5},  {1, 33, 256, 1},
    {1, 33, 1000, 0},  {1, 16, 4096, 3}, {2, 7, 172, 1},   {2, 16, 1000, 0}, {3, 33, 128, 4},
    {3, 3, 32, 1},     {4, 16, 256, 0},  {4, 33, 4096, 0}, {5, 33, 1000, 2}, {8, 7, 4096, 1},
    {8, 1, 256, 7},    {17, 33, 172, 3}, {17, 16, 96, 0},  {5, 200, 4096, 0}, {5, 7, 10000, 1},
    {1, 9, 20000, 0},  {2, 20, 17000, 1},
    // M >= 32 on AVX-512 (M >= 16 on AVX2): int8 panels of 64 (16) weight rows x K blocks of 256,
    // 3-row microtiles, 128-row (64-row) chunks: row, column (16- and 8-row vectors) and K-block
    // tails; K slabs of 2048 (K = 2100: a slab of one K block after a whole one), also under
    // several panels (N = 70); on AVX2 also a last panel of two vectors, the second partial
    // (N = 28).
    {32, 16, 1024, 0}, {40, 37, 2100, 5}, {33, 18, 96, 1}, {130, 17, 1100, 0}, {35, 70, 300, 2},
    {20, 28, 520, 1},  {40, 70, 2100, 3},
};

using Param = std::tuple<QType, Isa, int, bool>;

class QGemmTest : public ::testing::TestWithParam<Param> {};

// kern.gemm on rows [n0, n0 + n) of M activation rows against qgemm_ref within error_bound,
// nothing written outside them, and bitwise the same when the rows are split in two calls. The
// weights lie one byte past an aligned address, rows `pad` bytes apart beyond their size.
void check_gemm(QType t, Isa isa, int M, int n0, int n, int64_t K, size_t pad, bool per_token, uint32_t seed) {
  ASSERT_TRUE(has_own_qkernel(t, isa)) << "no " << isa_name(isa) << " kernel for " << qtype_info(t).name;
  const QKernel kern = find_qkernel(t, isa);
  ASSERT_EQ(kern.isa, isa);

  const int n1 = n0 + n, rows = n1 + 2;
  const int64_t kp = act_padded_k(K), nbs = kp / kActBlock;
  const QuantRows& qr = quantized_rows(t, K, rows);

  const size_t stride = qr.row_bytes + pad;
  std::vector<uint8_t> wbuf(stride * rows + 64);
  uint8_t* w = wbuf.data() + (64 - reinterpret_cast<uintptr_t>(wbuf.data()) % 64) % 64 + 1;
  for (int r = 0; r < rows; ++r) std::memcpy(w + stride * r, qr.data.data() + qr.row_bytes * r, qr.row_bytes);
  // A kernel with a load-time layout gets the rows packed (same misalignment); the reference
  // reads the file's rows.
  std::vector<uint8_t> pbuf;
  const uint8_t* wk = w;
  if (kern.pack) {
    pbuf.assign(wbuf.size(), 0);
    uint8_t* pw = pbuf.data() + (64 - reinterpret_cast<uintptr_t>(pbuf.data()) % 64) % 64 + 1;
    for (int r = 0; r < rows; r += kern.pack_rows) {
      kern.pack(w + stride * r, pw + stride * r, K, std::min(kern.pack_rows, rows - r), stride);
    }
    wk = pw;
  }

  // Activations, quantized by the reference; unaligned q, d, ds.
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<int8_t> qbuf(static_cast<size_t>(M * kp) + 1);
  std::vector<float> dbuf(static_cast<size_t>(M * nbs) + 1), dsbuf(static_cast<size_t>(M * nbs) + 1);
  std::vector<float> x(static_cast<size_t>(K));
  for (int m = 0; m < M; ++m) {
    for (int64_t i = 0; i < K; ++i) x[i] = nd(rng) * (i % 61 == 0 ? 8.0f : 1.0f) + (m % 2 ? 0.3f : 0.0f);
    quantize_act_row_ref(x.data(), K, kp, qbuf.data() + 1 + m * kp, dbuf.data() + 1 + m * nbs,
                         dsbuf.data() + 1 + m * nbs, per_token);
  }
  ActQ8 a;
  a.q = qbuf.data() + 1;
  a.d = dbuf.data() + 1;
  a.ds = dsbuf.data() + 1;
  a.kp = kp;

  const size_t ldy = static_cast<size_t>(n1 + 5);
  std::vector<float> yref(static_cast<size_t>(M) * ldy, kSentinel);
  std::vector<float> ybuf(static_cast<size_t>(M + 1) * ldy + 1, kSentinel);
  float* y = ybuf.data() + 1;
  qgemm_ref(t, M, n0, n1, K, a, w, stride, yref.data(), ldy);
  kern.gemm(M, n0, n1, rows, K, a, wk, stride, y, ldy);

  int bad = 0;
  for (int m = 0; m < M + 1; ++m) {
    for (size_t n = 0; n < ldy; ++n) {
      const float got = y[m * ldy + n];
      if (m < M && static_cast<int>(n) >= n0 && static_cast<int>(n) < n1) {
        const float want = yref[m * ldy + n];
        const double bound = error_bound(t, K, w + stride * n, a, m);
        if (!(std::fabs(static_cast<double>(got) - want) <= bound) && ++bad <= 5) {
          ADD_FAILURE() << "y[" << m << "][" << n << "] = " << got << ", reference " << want << ", |diff| "
                        << std::fabs(static_cast<double>(got) - want) << " > bound " << bound;
        }
      } else if (got != kSentinel && ++bad <= 5) {
        ADD_FAILURE() << "wrote outside the output: y[" << m << "][" << n << "] = " << got;
      }
    }
  }
  EXPECT_EQ(bad, 0);

  // Splitting [n0, n1) (as threads do) gives bitwise the same outputs.
  if (n1 - n0 >= 2) {
    const int mid = n0 + (n1 - n0) / 3 + 1;
    std::vector<float> ysplit(static_cast<size_t>(M) * ldy, kSentinel);
    kern.gemm(M, n0, mid, rows, K, a, wk, stride, ysplit.data(), ldy);
    kern.gemm(M, mid, n1, rows, K, a, wk, stride, ysplit.data(), ldy);
    for (int m = 0; m < M; ++m) {
      for (int n = n0; n < n1; ++n) {
        ASSERT_EQ(ysplit[m * ldy + n], y[m * ldy + n]) << "split at " << mid << ": m=" << m << " n=" << n;
      }
    }
  }
}

TEST_P(QGemmTest, MatchesReference) {
  const auto [t, isa, shape_index, per_token] = GetParam();
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU";
  const Shape s = kShapes[shape_index];
  check_gemm(t, isa, s.m, s.n0, s.n, s.k, 3, per_token,
             static_cast<uint32_t>(shape_index * 1009 + static_cast<int>(t) * 17 + per_token));
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto [t, isa, si, per_token] = info.param;
  const Shape& s = kShapes[si];
  return std::string(qtype_info(t).name) + "_" + isa_label(isa) + "_M" + std::to_string(s.m) + "_N" +
         std::to_string(s.n) + "_K" + std::to_string(s.k) + "_n0_" + std::to_string(s.n0) +
         (per_token ? "_tok" : "_blk");
}

INSTANTIATE_TEST_SUITE_P(All, QGemmTest,
                         ::testing::Combine(::testing::ValuesIn(quant_types()),
                                            ::testing::Values(Isa::kAvx2, Isa::kAvx512),
                                            ::testing::Range(0, static_cast<int>(std::size(kShapes))),
                                            ::testing::Bool()),
                         param_name);

// The GEMV tile's strands (kernels/simd/blocking.h strand_rows): lengths past ceil(rows / nr)
// only for a power of two, by at most len / 128, never emptying the last strand, the distance
// then within 256 B of 1 or 3 KiB modulo 4 KiB; the cases it was measured on.
TEST(StrandRows, StaggersOnlyAliasedPowerOfTwoLengths) {
  EXPECT_EQ(strand_rows(2048, 4, 3168), 513);   // q4_g32 2048 x 5632: 512 rows were 396 x 4 KiB
  EXPECT_EQ(strand_rows(4096, 4, 2304), 1028);  // q4_g32 4096 x 4096: 4 x 2304 = 9 KiB, 1024 B off
  EXPECT_EQ(strand_rows(11008, 4, 2304), 2752);  // not a power of two: as measured, left alone
  EXPECT_EQ(strand_rows(256, 4, 1152), 64);      // a 64-row strand may not grow (64 / 128 = 0)
  int staggered = 0;
  const size_t row_bytes[] = {18, 144, 1152, 1760, 2304, 3168, 3331};
  for (int nr = 1; nr <= 4; ++nr) {
    for (int rows = 1; rows <= 5000; rows += rows < 64 ? 1 : 7) {
      for (size_t rb : row_bytes) {
        const int plain = (rows + nr - 1) / nr, len = strand_rows(rows, nr, rb);
        ASSERT_GE(len, plain) << rows << " " << nr << " " << rb;
        if (len == plain) continue;
        ++staggered;
        ASSERT_EQ(plain & (plain - 1), 0) << rows << " " << nr << " " << rb;
        ASSERT_LE(len - plain, plain / 128) << rows << " " << nr << " " << rb;
        ASSERT_LT((nr - 1) * len, rows) << "the last strand is empty: " << rows << " " << nr << " " << rb;
        const size_t r = static_cast<size_t>(len) * rb % 2048;
        ASSERT_LE(r > 1024 ? r - 1024 : 1024 - r, 256u) << rows << " " << nr << " " << rb;
      }
    }
  }
  EXPECT_GT(staggered, 0);
}

// Staggered strands against the reference, every format and ISA: M = 1 and M = 2 over 1024 rows
// (four strands of 256 rows), M = 2 over 768 (AVX2's three strands at M = 2) and M = 3, 4 over
// 1024 (AVX2's two strands of 512), with a row stride chosen so that strand_rows grows the
// length for that strand count; n0 > 0 and the split check cover a chunk that does not start
// at row 0.
using StrandParam = std::tuple<QType, Isa>;
class QGemmStrandTest : public ::testing::TestWithParam<StrandParam> {};

TEST_P(QGemmStrandTest, StaggeredStrandsMatchReference) {
  const auto [t, isa] = GetParam();
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU";
  constexpr int64_t K = 256;
  const size_t row_bytes = static_cast<size_t>(*qtype_row_bytes(t, K));
  struct Case {
    int m, n, nr;
  };
  for (const Case c : {Case{1, 1024, 4}, Case{2, 1024, 4}, Case{2, 768, 3}, Case{3, 1024, 2}, Case{4, 1024, 2}}) {
    size_t pad = 0;
    while (pad < 512 && strand_rows(c.n, c.nr, row_bytes + pad) == (c.n + c.nr - 1) / c.nr) ++pad;
    ASSERT_LT(pad, 512u) << "no stride staggers " << c.n << " rows in " << c.nr << " strands";
    SCOPED_TRACE("M " + std::to_string(c.m) + ", N " + std::to_string(c.n) + ", pad " + std::to_string(pad));
    check_gemm(t, isa, c.m, 5, c.n, K, pad, false, static_cast<uint32_t>(c.n + static_cast<int>(t)));
  }
}

INSTANTIATE_TEST_SUITE_P(All, QGemmStrandTest,
                         ::testing::Combine(::testing::ValuesIn(quant_types()),
                                            ::testing::Values(Isa::kAvx2, Isa::kAvx512)),
                         [](const ::testing::TestParamInfo<StrandParam>& info) {
                           return std::string(qtype_info(std::get<0>(info.param)).name) + "_" +
                                  isa_label(std::get<1>(info.param));
                         });

// Every quantized format has its own kernel on every SIMD ISA this build and CPU run.
TEST(QGemmRegistry, EveryFormatOnEverySimdIsa) {
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    for (QType t : quant_types()) {
      EXPECT_TRUE(has_own_qkernel(t, isa)) << qtype_info(t).name << " on " << isa_name(isa);
    }
  }
}

// Kernels that interleave rows at load (QKernel::pack_rows > 1: AVX-512's formats but the
// codebooks, kernels/simd/qgemm_x86_ri_inl.h) give a row the same bits at every M: the GEMV (M = 1,
// and 2-4 rows per tile), the panel GEMM (M >= 32) and the whole-group scratch path of a call
// that covers a group in part. 51 rows: three interleaved groups and a last group of 3 rows in
// the file's layout; K = 1000: a partial last block.
TEST(QGemmInterleaved, SameBitsAtEveryM) {
  if (!isa_available(Isa::kAvx512)) GTEST_SKIP() << "AVX-512 is not available on this CPU";
  int checked = 0;
  for (QType t : quant_types()) {
    const QKernel kern = find_qkernel(t, Isa::kAvx512);
    if (kern.pack_rows == 1) continue;
    SCOPED_TRACE(qtype_info(t).name);
    ASSERT_EQ(kern.pack_rows, 16);
    ++checked;
    constexpr int64_t K = 1000;
    constexpr int N = 51, M = 40;
    const QuantRows& qr = quantized_rows(t, K, N);
    std::vector<uint8_t> w(qr.data.size());
    for (int r = 0; r < N; r += kern.pack_rows) {
      kern.pack(qr.data.data() + qr.row_bytes * r, w.data() + qr.row_bytes * r, K, std::min(kern.pack_rows, N - r),
                qr.row_bytes);
    }
    const int64_t kp = act_padded_k(K), nbs = kp / kActBlock;
    std::vector<int8_t> q(static_cast<size_t>(M * kp));
    std::vector<float> d(static_cast<size_t>(M * nbs)), ds(d.size()), x(static_cast<size_t>(K));
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int m = 0; m < M; ++m) {
      for (float& v : x) v = nd(rng);
      quantize_act_row_ref(x.data(), K, kp, q.data() + m * kp, d.data() + m * nbs, ds.data() + m * nbs, false);
    }
    auto rows_of = [&](int m0) { return ActQ8{q.data() + m0 * kp, d.data() + m0 * nbs, ds.data() + m0 * nbs, kp}; };
    std::vector<float> all(static_cast<size_t>(M) * N);
    kern.gemm(M, 0, N, N, K, rows_of(0), w.data(), qr.row_bytes, all.data(), N);
    for (int m0 : {0, 17, 36}) {
      for (int mr : {1, 4}) {
        std::vector<float> part(static_cast<size_t>(mr) * N);
        kern.gemm(mr, 0, 20, N, K, rows_of(m0), w.data(), qr.row_bytes, part.data(), N);  // a group in part
        kern.gemm(mr, 20, N, N, K, rows_of(m0), w.data(), qr.row_bytes, part.data(), N);
        for (int m = 0; m < mr; ++m) {
          for (int n = 0; n < 48; ++n) {  // the interleaved rows (the last 3 take the row kernels)
            ASSERT_EQ(part[m * N + n], all[(m0 + m) * N + n]) << "M " << mr << ", row " << m0 + m << ", n " << n;
          }
        }
      }
    }
  }
  EXPECT_GE(checked, 23);  // every quantized format but nu4_g32 and nu3_g32
}

// The int8 peak loop (kernels/quant.h) of every SIMD ISA: its operation count is a whole number
// of vector instructions per round (at least 4 chains), linear in the rounds, and it computes
// the same thing each time. ref has none.
TEST(Int8Peak, CountsWhatItRuns) {
  EXPECT_EQ(find_int8_peak(Isa::kRef), nullptr);
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    const Int8PeakFn fn = find_int8_peak(isa);
    ASSERT_NE(fn, nullptr) << isa_name(isa);
    const uint64_t ops_per_instr = isa == Isa::kAvx512 ? 128 : 64;  // 2 per multiply-add
    int32_t s1 = 0, s2 = 0, s3 = 0;
    const uint64_t a = fn(1000, &s1), b = fn(2000, &s2);
    fn(1000, &s3);
    EXPECT_EQ(b, 2 * a) << isa_name(isa);
    EXPECT_EQ(a % (1000 * ops_per_instr), 0u) << isa_name(isa);
    EXPECT_GE(a / (1000 * ops_per_instr), 4u) << isa_name(isa);
    EXPECT_EQ(s1, s3) << isa_name(isa);
  }
}

// ---- activation quantization ----------------------------------------------------------------

class QGemmQuantizeActTest : public ::testing::TestWithParam<Isa> {};

TEST_P(QGemmQuantizeActTest, BitIdenticalToReference) {
  const Isa isa = GetParam();
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU";
  const QuantizeActFn fn = find_quantize_act(isa);
  ASSERT_NE(fn, &quantize_act_row_ref) << "no " << isa_name(isa) << " activation quantizer";
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> half(-254, 254);
  for (int64_t k : {1, 5, 16, 31, 32, 33, 100, 127, 128, 172, 1000, 4096, 4097}) {
    const int64_t kp = act_padded_k(k), nb = kp / kActBlock;
    for (int kind = 0; kind < 4; ++kind) {
      for (bool per_token : {false, true}) {
        // One byte past the row end and unaligned starts.
        std::vector<float> xbuf(static_cast<size_t>(k) + 1);
        float* x = xbuf.data() + 1;
        for (int64_t i = 0; i < k; ++i) {
          switch (kind) {
            case 0: x[i] = nd(rng) * (i % 37 == 0 ? 20.0f : 1.0f); break;
            case 1: x[i] = 0.0f; break;
            // Halves with |x| <= 127 and a 127 in every block: 127/amax = 1, so x*id lands on
            // .5 ties that must round to even.
            case 2: x[i] = i % 32 == 0 ? (i % 64 ? -127.0f : 127.0f) : 0.5f * static_cast<float>(half(rng)); break;
            default: x[i] = 1e-30f * nd(rng); break;  // tiny values
          }
        }
        std::vector<int8_t> q0(static_cast<size_t>(kp) + 1, 99), q1(static_cast<size_t>(kp) + 1, 99);
        std::vector<float> d0(static_cast<size_t>(nb) + 1, -1), d1(static_cast<size_t>(nb) + 1, -1);
        std::vector<float> s0(static_cast<size_t>(nb) + 1, -1), s1(static_cast<size_t>(nb) + 1, -1);
        quantize_act_row_ref(x, k, kp, q0.data() + 1, d0.data() + 1, s0.data() + 1, per_token);
        fn(x, k, kp, q1.data() + 1, d1.data() + 1, s1.data() + 1, per_token);
        SCOPED_TRACE("k=" + std::to_string(k) + " kind=" + std::to_string(kind) + " per_token=" +
                     std::to_string(per_token));
        EXPECT_EQ(0, std::memcmp(q0.data(), q1.data(), q0.size()));
        EXPECT_EQ(0, std::memcmp(d0.data(), d1.data(), d0.size() * sizeof(float)));
        EXPECT_EQ(0, std::memcmp(s0.data(), s1.data(), s0.size() * sizeof(float)));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, QGemmQuantizeActTest, ::testing::Values(Isa::kAvx2, Isa::kAvx512),
                         [](const ::testing::TestParamInfo<Isa>& info) { return isa_label(info.param); });

}  // namespace
}  // namespace mxlm
