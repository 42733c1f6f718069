// The KV cache (runtime/kv_cache.h): format names, the rotation, what a stored row decodes to,
// and its byte accounting.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/quant.h"
#include "mxlm/model.h"
#include "runtime/kv_cache.h"

namespace mxlm {
namespace {

TEST(KvFormats, ParseAndName) {
  for (const char* s : {"f32", "k8v8", "k8v4", "k4v8", "k4v4", "k32v4", "k8v32"}) {
    const auto f = parse_kv_formats(s);
    ASSERT_TRUE(f.has_value()) << s;
    EXPECT_EQ(parse_kv_formats(kv_formats_name(*f))->k, f->k) << s;
    EXPECT_EQ(parse_kv_formats(kv_formats_name(*f))->v, f->v) << s;
  }
  EXPECT_EQ(kv_formats_name(*parse_kv_formats("k32v32")), "f32");
  EXPECT_EQ(parse_kv_formats("k8v4")->k, KvType::kQ8);
  EXPECT_EQ(parse_kv_formats("k8v4")->v, KvType::kQ4);
  for (const char* s : {"", "q8", "k8", "k3v3", "k8v", "kv8", "k8v8x", "K8V8", "k16v16"}) {
    EXPECT_FALSE(parse_kv_formats(s).has_value()) << s;
  }
  // int8 keeps one scale per token and head where the head fits a group.
  EXPECT_EQ(kv_qtype(KvType::kQ8, 64), QType::kQ8G64);
  EXPECT_EQ(kv_qtype(KvType::kQ8, 128), QType::kQ8G128);
  EXPECT_EQ(kv_qtype(KvType::kQ8, 80), QType::kQ8G32);
  EXPECT_EQ(kv_qtype(KvType::kQ4, 64), QType::kQ4AG32);
  EXPECT_EQ(kv_qtype(KvType::kF32, 64), QType::kF32);
}

std::vector<float> random_row(std::mt19937& rng, int n, float outlier = 0.0f) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = g(rng);
  if (outlier != 0.0f) v[3] = outlier;  // one large channel, as keys have
  return v;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += double(f) * f;
  return std::sqrt(s);
}

// The rotation is orthogonal: it keeps norms and inner products, and unrotate undoes it.
TEST(KvCache, RotationIsOrthogonal) {
  const KvCache kv(1, 4, 2, 64, *parse_kv_formats("k4v4"));
  ASSERT_TRUE(kv.rotates_k());
  ASSERT_TRUE(kv.rotates_v());
  std::mt19937 rng(5);
  const std::vector<float> a = random_row(rng, 64, 20.0f), b = random_row(rng, 64);
  std::vector<float> ra = a, rb = b;
  kv.rotate(ra.data());
  kv.rotate(rb.data());
  double dot = 0, rdot = 0;
  for (int i = 0; i < 64; ++i) {
    dot += double(a[i]) * b[i];
    rdot += double(ra[i]) * rb[i];
  }
  EXPECT_NEAR(norm(ra), norm(a), 1e-5 * norm(a));
  EXPECT_NEAR(rdot, dot, 1e-5 * norm(a) * norm(b));
  // The outlier is spread: no rotated channel holds more than a fraction of it.
  double rmax = 0;
  for (float f : ra) rmax = std::max(rmax, double(std::fabs(f)));
  EXPECT_LT(rmax, 0.5 * 20.0);
  kv.unrotate(ra.data());
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(ra[i], a[i], 1e-5 * norm(a)) << i;
  // Not a power of two, or f32: nothing is rotated.
  EXPECT_FALSE(KvCache(1, 4, 2, 80, *parse_kv_formats("k4v4")).rotates_k());
  EXPECT_FALSE(KvCache(1, 4, 2, 64, *parse_kv_formats("k32v4")).rotates_k());
  EXPECT_TRUE(KvCache(1, 4, 2, 64, *parse_kv_formats("k32v4")).rotates_v());
}

// A stored row decodes (format spec, then unrotated) to the row within the format's error:
// int8 ~1/254 of the row's range per channel, int4 groups of 32 ~1/30; and the accounting is
// the formats' row bytes.
TEST(KvCache, StoredRowsDecodeWithinTheFormatsError) {
  const int L = 2, C = 5, H = 2;
  for (int D : {64, 128, 80}) {
    for (const char* spec : {"f32", "k8v8", "k4v4", "k8v4"}) {
      const KvFormats f = *parse_kv_formats(spec);
      KvCache kv(L, C, H, D, f);
      const double want_bytes = double(L) * H * (*qtype_row_bytes(kv_qtype(f.k, D), D) + *qtype_row_bytes(kv_qtype(f.v, D), D));
      EXPECT_EQ(double(kv.bytes_per_token()), want_bytes) << spec;
      EXPECT_EQ(kv.bytes(), kv.bytes_per_token() * C);
      std::mt19937 rng(D);
      for (int l = 0; l < L; ++l) {
        for (int pos = 0; pos < C; ++pos) {
          std::vector<float> k = random_row(rng, H * D, 8.0f), v = random_row(rng, H * D);
          kv.store(l, pos, k.data(), v.data());
          for (int h = 0; h < H; ++h) {
            for (bool is_k : {true, false}) {
              const QType t = is_k ? kv.k_qtype() : kv.v_qtype();
              const uint8_t* row = (is_k ? kv.keys(l, h) + pos * kv.k_row_bytes() : kv.values(l, h) + pos * kv.v_row_bytes());
              std::vector<float> got(static_cast<size_t>(D));
              dequantize_row(t, row, D, got.data());
              if (is_k ? kv.rotates_k() : kv.rotates_v()) kv.unrotate(got.data());
              const std::vector<float>& src = is_k ? k : v;
              std::vector<float> x(src.begin() + h * D, src.begin() + (h + 1) * D), err(static_cast<size_t>(D));
              for (int i = 0; i < D; ++i) err[size_t(i)] = got[size_t(i)] - x[size_t(i)];
              const double rel = norm(err) / norm(x);
              const double bound = t == QType::kF32 ? 0.0 : t == QType::kQ4AG32 ? 0.12 : 0.01;
              EXPECT_LE(rel, bound) << spec << " D=" << D << (is_k ? " K" : " V") << " layer " << l << " pos " << pos;
            }
          }
        }
      }
    }
  }
}

// shift() moves the kept rows down and re-rotates keys by RoPE of -n_discard positions: each
// moved key equals the key RoPE'd directly at its new position (f32: up to rounding; quantized:
// within the format's error), values move unchanged.
TEST(KvCache, ShiftRerotatesKeysToTheirNewPositions) {
  const int L = 2, C = 12, H = 2, D = 64, half = D / 2;
  auto angles = [&](int p, std::vector<float>& cs, std::vector<float>& sn) {
    cs.resize(half);
    sn.resize(half);
    for (int i = 0; i < half; ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / D);
      cs[i] = float(std::cos(a));
      sn[i] = float(std::sin(a));
    }
  };
  auto rope = [&](std::vector<float> v, int p) {
    std::vector<float> cs, sn;
    angles(p, cs, sn);
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cs[i] - b * sn[i];
      v[i + half] = a * sn[i] + b * cs[i];
    }
    return v;
  };
  for (const char* spec : {"f32", "k8v8", "k4v4"}) {
    KvCache kv(L, C, H, D, *parse_kv_formats(spec));
    std::mt19937 rng(9);
    std::vector<std::vector<float>> raw_k(C), raw_v(C);
    for (int p = 0; p < 10; ++p) {
      raw_k[p] = random_row(rng, H * D);
      raw_v[p] = random_row(rng, H * D);
      std::vector<float> k(H * D);
      for (int h = 0; h < H; ++h) {
        const std::vector<float> seg(raw_k[p].begin() + h * D, raw_k[p].begin() + (h + 1) * D);
        const std::vector<float> r = rope(seg, p);
        std::copy(r.begin(), r.end(), k.begin() + h * D);
      }
      for (int l = 0; l < L; ++l) kv.store(l, p, k.data(), raw_v[p].data());
    }
    std::vector<float> cs, sn;
    angles(3, cs, sn);
    kv.shift(2, 3, 10, cs.data(), sn.data());  // keeps 0, 1 and 5..9 -> 0, 1 and 2..6
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < H; ++h) {
        for (int t = 0; t < 7; ++t) {
          const int old = t < 2 ? t : t + 3;
          const std::vector<float> seg(raw_k[old].begin() + h * D, raw_k[old].begin() + (h + 1) * D);
          const std::vector<float> want = rope(seg, t);
          std::vector<float> got(static_cast<size_t>(D));
          dequantize_row(kv.k_qtype(), kv.keys(l, h) + t * kv.k_row_bytes(), D, got.data());
          if (kv.rotates_k()) kv.unrotate(got.data());
          std::vector<float> err(static_cast<size_t>(D));
          for (int i = 0; i < D; ++i) err[i] = got[i] - want[i];
          const double bound = std::string(spec) == "f32" ? 1e-5 : std::string(spec) == "k8v8" ? 0.02 : 0.2;
          EXPECT_LE(norm(err) / norm(want), bound) << spec << " layer " << l << " head " << h << " new pos " << t;
          std::vector<float> vgot(static_cast<size_t>(D));
          dequantize_row(kv.v_qtype(), kv.values(l, h) + t * kv.v_row_bytes(), D, vgot.data());
          if (kv.rotates_v()) kv.unrotate(vgot.data());
          for (int i = 0; i < D; ++i) err[i] = vgot[i] - raw_v[old][h * D + i];
          EXPECT_LE(norm(err), (std::string(spec) == "f32" ? 0.0 : 0.2) * norm(vgot) + 1e-6) << spec << " V, new pos " << t;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mxlm
