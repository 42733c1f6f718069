// The KV cache (runtime/kv_cache.h): format names, the rotation, what a stored row decodes to,
// and its byte accounting.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/quant.h"
#include "mxlm/model.h"
#include "runtime/attention.h"
#include "runtime/kv_cache.h"
#include "runtime/kv_fit.h"
#include "runtime/thread_pool.h"

namespace mxlm {
namespace {

TEST(KvFormats, ParseAndName) {
  for (const char* s : {"f32", "f16", "bf16", "k8v8", "k8v4", "k4v8", "k4v4", "k32v4", "k8v32", "k2v2", "k16v4",
                        "kbf16v2", "k4v16"}) {
    const auto f = parse_kv_formats(s);
    ASSERT_TRUE(f.has_value()) << s;
    EXPECT_EQ(parse_kv_formats(kv_formats_name(*f))->k, f->k) << s;
    EXPECT_EQ(parse_kv_formats(kv_formats_name(*f))->v, f->v) << s;
  }
  EXPECT_EQ(kv_formats_name(*parse_kv_formats("k32v32")), "f32");
  EXPECT_EQ(kv_formats_name(*parse_kv_formats("k16v16")), "f16");
  EXPECT_EQ(kv_formats_name(*parse_kv_formats("kbf16vbf16")), "bf16");
  EXPECT_EQ(parse_kv_formats("k8v4")->k, KvType::kQ8);
  EXPECT_EQ(parse_kv_formats("k8v4")->v, KvType::kQ4);
  EXPECT_EQ(parse_kv_formats("k2v16")->k, KvType::kQ2);
  EXPECT_EQ(parse_kv_formats("k2v16")->v, KvType::kF16);
  for (const char* s : {"", "q8", "k8", "k3v3", "k8v", "kv8", "k8v8x", "K8V8", "k1v1", "f8", "k8v8/"}) {
    EXPECT_FALSE(parse_kv_formats(s).has_value()) << s;
  }
  // Plans: one spec for every layer, or one per layer.
  const auto plan = parse_kv_plan("k8v8/k4v2/f32");
  ASSERT_TRUE(plan.has_value());
  ASSERT_EQ(plan->size(), 3u);
  EXPECT_EQ((*plan)[1].v, KvType::kQ2);
  EXPECT_EQ(kv_plan_name(*plan), "k8v8/k4v2/f32");
  EXPECT_EQ(kv_plan_name(*parse_kv_plan("k4v4/k4v4")), "k4v4");
  EXPECT_EQ(parse_kv_plan("k4v4")->size(), 1u);
  for (const char* s : {"", "/", "k4v4/", "k4v4//k8v8", "k4v4/x"}) EXPECT_FALSE(parse_kv_plan(s).has_value()) << s;
  // int8 keeps one scale per token and head where the head fits a group.
  EXPECT_EQ(kv_qtype(KvType::kQ8, 64), QType::kQ8G64);
  EXPECT_EQ(kv_qtype(KvType::kQ8, 128), QType::kQ8G128);
  EXPECT_EQ(kv_qtype(KvType::kQ8, 80), QType::kQ8G32);
  EXPECT_EQ(kv_qtype(KvType::kQ4, 64), QType::kQ4AG32);
  EXPECT_EQ(kv_qtype(KvType::kQ2, 64), QType::kQ2AG32);
  EXPECT_EQ(kv_qtype(KvType::kF16, 64), QType::kF16);
  EXPECT_EQ(kv_qtype(KvType::kF32, 64), QType::kF32);
}

std::vector<KvFormats> uniform(int n_layers, const char* spec) {
  return std::vector<KvFormats>(size_t(n_layers), *parse_kv_formats(spec));
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
  const KvCache kv(1, 4, 2, 64, uniform(1, "k4v4"), 0);
  ASSERT_TRUE(kv.keys(0).rotated);
  ASSERT_TRUE(kv.values(0).rotated);
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
  // Not a power of two, floats, or per-channel keys: not rotated.
  EXPECT_FALSE(KvCache(1, 4, 2, 80, uniform(1, "k4v4"), 0).keys(0).rotated);
  EXPECT_FALSE(KvCache(1, 4, 2, 64, uniform(1, "k32v4"), 0).keys(0).rotated);
  EXPECT_FALSE(KvCache(1, 4, 2, 64, uniform(1, "k16v16"), 0).values(0).rotated);
  EXPECT_TRUE(KvCache(1, 4, 2, 64, uniform(1, "k32v4"), 0).values(0).rotated);
  EXPECT_FALSE(KvCache(1, 4, 2, 64, uniform(1, "k2v2"), 0).keys(0).rotated);
  EXPECT_TRUE(KvCache(1, 4, 2, 64, uniform(1, "k2v2"), 0).values(0).rotated);
}

// A stored row decodes (format spec, then unrotated) to the row within the format's error:
// int8 ~1/254 of the row's range per channel, int4 groups of 32 ~1/30, 2-bit ~1/6 of a group's
// range (keys: a channel's range over 32 tokens), floats their rounding; rows in a 2-bit
// format's window are the f16 rows; and the accounting is the formats' bytes. Tokens are stored
// in batches of 1 to 7 (a key block completed inside a batch or across two).
TEST(KvCache, StoredRowsDecodeWithinTheFormatsError) {
  const int L = 2, C = 100, H = 2, W = 8;
  for (int D : {64, 128, 80}) {
    for (const char* spec : {"f32", "f16", "bf16", "k8v8", "k4v4", "k8v4", "k2v2", "k4v2"}) {
      const KvFormats f = *parse_kv_formats(spec);
      KvCache kv(L, C, H, D, uniform(L, spec), W);
      auto per_token = [&](KvType t, bool is_k) {
        return t == KvType::kQ2 && is_k ? double(D) * *qtype_row_bytes(QType::kQ2AG32, 32) / 32
                                        : double(*qtype_row_bytes(kv_qtype(t, D), D));
      };
      EXPECT_EQ(double(kv.bytes_per_token()), L * H * (per_token(f.k, true) + per_token(f.v, false))) << spec;
      const int n_win = (f.k == KvType::kQ2) + (f.v == KvType::kQ2);
      EXPECT_EQ(kv.window_bytes(), size_t(L) * n_win * H * (W + KvCache::kBlock) * D * 2) << spec;  // f16 rows
      EXPECT_EQ(kv.bytes(), kv.bytes_per_token() * C + kv.window_bytes());
      ModelConfig cfg;
      cfg.n_layers = L;
      cfg.n_kv_heads = H;
      cfg.head_dim = D;
      const KvCacheSize size = kv_cache_size(cfg, {f}, C, W);  // what inspect states
      EXPECT_EQ(size.per_token, kv.bytes_per_token()) << spec;
      if (f.k != KvType::kQ2) {
        EXPECT_EQ(size.total, kv.bytes()) << spec;  // per-channel keys: whole blocks
      }
      std::mt19937 rng(D);
      std::vector<std::vector<float>> ks(C), vs(C);
      for (int p = 0; p < C; ++p) {
        ks[p] = random_row(rng, H * D, 8.0f);
        vs[p] = random_row(rng, H * D);
      }
      for (int p0 = 0; p0 < C;) {
        const int n = std::min(C - p0, 1 + p0 % 7);
        std::vector<float> k, v;
        for (int b = 0; b < n; ++b) {
          k.insert(k.end(), ks[p0 + b].begin(), ks[p0 + b].end());
          v.insert(v.end(), vs[p0 + b].begin(), vs[p0 + b].end());
        }
        for (int l = 0; l < L; ++l) {
          kv.store(l, p0, n, k.data(), v.data(), size_t(H * D));
          kv.settle(l, p0, n, k.data(), v.data(), size_t(H * D));
        }
        p0 += n;
      }
      for (int l = 0; l < L; ++l) {
        for (bool is_k : {true, false}) {
          const KvCache::Tensor& t = is_k ? kv.keys(l) : kv.values(l);
          const int qe = kv.quant_end(t, C - 1);
          EXPECT_EQ(qe, t.windowed ? (C - W) / 32 * 32 : C) << spec;
          EXPECT_EQ(t.win1, t.windowed ? C : 0);
          for (int pos = 0; pos < C; ++pos) {
            for (int h = 0; h < H; ++h) {
              std::vector<float> got(static_cast<size_t>(D)), err(static_cast<size_t>(D));
              kv.row(t, h, pos, got.data());
              const std::vector<float>& src = is_k ? ks[pos] : vs[pos];
              std::vector<float> x(src.begin() + h * D, src.begin() + (h + 1) * D);
              for (int i = 0; i < D; ++i) err[size_t(i)] = got[size_t(i)] - x[size_t(i)];
              const double rel = norm(err) / norm(x);
              double bound = t.windowed ? 1e-3 : 0.0;  // the window's rows are f16
              if (pos < qe) {
                switch (t.type) {
                  case KvType::kF32: bound = 0.0; break;
                  case KvType::kF16: bound = 1e-3; break;
                  case KvType::kBF16: bound = 8e-3; break;
                  case KvType::kQ8: bound = 0.02; break;
                  case KvType::kQ4: bound = 0.12; break;
                  case KvType::kQ2: bound = 0.5; break;
                }
              }
              ASSERT_LE(rel, bound) << spec << " D=" << D << (is_k ? " K" : " V") << " layer " << l << " pos " << pos;
            }
          }
        }
      }
      // What a token at each depth reads: quantized rows before quant_end, f32 rows after.
      double want = 0;
      for (int l = 0; l < L; ++l) {
        for (const KvCache::Tensor* t : {&kv.keys(l), &kv.values(l)}) {
          const int qe = kv.quant_end(*t, C - 1);
          want += H * ((t->per_channel ? double(qe / 32) * t->seg : double(qe) * t->seg) + double(C - qe) * D * (t->windowed ? 2.0 : 0.0));
        }
      }
      EXPECT_DOUBLE_EQ(kv.read_bytes(C), want) << spec;
    }
  }
}

// The window (f16 rows): quant_end steps by whole blocks, `window` to `window + 31` positions behind; a
// truncate inside the window keeps its rows, one before it decodes them from the quantized
// blocks, and storing goes on from there.
TEST(KvCache, WindowAndTruncate) {
  const int C = 200, H = 1, D = 64, W = 40;
  KvCache kv(1, C, H, D, uniform(1, "k2v2"), W);
  const KvCache::Tensor& K = kv.keys(0);
  for (int p = 0; p < C; ++p) {
    const int qe = kv.quant_end(K, p);
    ASSERT_EQ(qe % 32, 0);
    ASSERT_LE(p + 1 - qe, W + 31) << p;
    ASSERT_GE(p + 1 - qe, std::min(p + 1, W)) << p;
  }
  std::mt19937 rng(3);
  std::vector<float> k(size_t(C) * D), v(size_t(C) * D);
  for (float& x : k) x = std::normal_distribution<float>(0.0f, 1.0f)(rng);
  for (float& x : v) x = std::normal_distribution<float>(0.0f, 1.0f)(rng);
  kv.store(0, 0, 150, k.data(), v.data(), D);
  kv.settle(0, 0, 150, k.data(), v.data(), D);
  EXPECT_EQ(K.win0, 96);  // (150 - 40) / 32 * 32
  std::vector<float> got(static_cast<size_t>(D)), before(static_cast<size_t>(D));
  const float k100 = f16_to_f32(f32_to_f16(k[100 * D + 5]));
  kv.row(K, 0, 100, got.data());
  EXPECT_EQ(got[5], k100);  // in the window: the f16 row
  kv.truncate(140);         // quant_end(139) = 96: still the window's rows
  EXPECT_EQ(K.win0, 96);
  EXPECT_EQ(K.win1, 140);
  kv.row(K, 0, 100, got.data());
  EXPECT_EQ(got[5], k100);
  kv.row(K, 0, 70, before.data());  // quantized
  kv.truncate(100);                 // quant_end(99) = 32: rows 32 .. 95 decoded into the window
  EXPECT_EQ(K.win0, 32);
  kv.row(K, 0, 70, got.data());
  for (int i = 0; i < D; ++i) EXPECT_EQ(got[i], f16_to_f32(f32_to_f16(before[i]))) << i;  // decoded into f16 rows
  // Storing goes on at 100, re-forming the key block of 96 .. 127 from the window and the batch.
  kv.store(0, 100, 100, &k[100 * D], &v[100 * D], D);
  kv.settle(0, 100, 100, &k[100 * D], &v[100 * D], D);
  EXPECT_EQ(K.win0, 160);
  kv.row(K, 0, 110, got.data());
  double err = 0, ref = 0;
  for (int i = 0; i < D; ++i) {
    err += std::pow(got[i] - k[110 * D + i], 2);
    ref += std::pow(k[110 * D + i], 2);
  }
  EXPECT_LT(std::sqrt(err / ref), 0.5);
  EXPECT_GT(std::sqrt(err / ref), 0.0);
}

// store() with a thread pool (a task per head and tensor) writes the bytes the serial store
// writes: per-token rows, per-channel key blocks completed from the window and the batch, and the
// windows, over a prompt batch and then single tokens, with 3 threads for 4 heads x 2 tensors.
TEST(KvCache, PooledStoreWritesTheSerialBytes) {
  const int C = 160, H = 4, D = 64, W = 40, L = 3;
  const std::vector<KvFormats> plan = {*parse_kv_formats("k4v4"), *parse_kv_formats("k2v2"), *parse_kv_formats("k8v4")};
  KvCache serial(L, C, H, D, plan, W), pooled(L, C, H, D, plan, W);
  ThreadPool pool(3);
  std::mt19937 rng(17);
  std::vector<float> k(size_t(C) * H * D), v(size_t(C) * H * D);
  for (float& x : k) x = std::normal_distribution<float>(0.0f, 1.0f)(rng);
  for (float& x : v) x = std::normal_distribution<float>(0.0f, 1.0f)(rng);
  const size_t ld = size_t(H) * D;
  auto step = [&](int p0, int n) {
    for (int l = 0; l < L; ++l) {
      float* kb = &k[size_t(p0) * ld];
      float* vb = &v[size_t(p0) * ld];
      serial.round_window(l, n, kb, vb, ld);
      serial.store(l, p0, n, kb, vb, ld);
      serial.settle(l, p0, n, kb, vb, ld);
      pooled.store(l, p0, n, kb, vb, ld, &pool);
      pooled.settle(l, p0, n, kb, vb, ld);
    }
  };
  step(0, 70);
  for (int p = 70; p < C; ++p) step(p, 1);
  for (int l = 0; l < L; ++l) {
    EXPECT_EQ(serial.keys(l).q, pooled.keys(l).q) << l;
    EXPECT_EQ(serial.values(l).q, pooled.values(l).q) << l;
    EXPECT_EQ(serial.keys(l).win, pooled.keys(l).win) << l;
    EXPECT_EQ(serial.values(l).win, pooled.values(l).win) << l;
  }
}

// round_even is std::nearbyint (ties to even): at and around the ties, signed zeros, the
// integers' edge 2^23 and beyond, and random floats of every magnitude.
TEST(KvFit, RoundEvenIsNearbyint) {
  std::vector<float> xs = {0.0f, -0.0f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 0.49999997f, 0.50000006f,
                           0x1p23f - 0.5f, 0x1p23f, 0x1p23f + 1.0f, -0x1p23f + 0.5f, 0x1p24f + 2.0f, 1e30f, -1e30f,
                           std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::min()};
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    if (!std::isnan(f)) xs.push_back(f);
    xs.push_back(float(int(rng() % 2001) - 1000) * 0.5f);  // ties and integers
  }
  for (float x : xs) {
    const float a = round_even(x), b = std::nearbyint(x);
    uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    ASSERT_EQ(ua, ub) << x;
  }
  EXPECT_TRUE(std::isnan(round_even(std::numeric_limits<float>::quiet_NaN())));
}

// fit_affine4 (four groups in SSE2 lanes where there is SSE2) returns fit_affine's (d, m) bytes
// for every lane count and both widths (4-bit: top 15, 2-bit: 3), over groups that stress the
// rounding: Gaussian and uniform at scales 1e-6 to 1e4, grids whose levels fall on ties, zeros
// (-0 too), constant groups, one outlier among small values, and lanes that end their rounds at
// different times.
TEST(KvFit, FourLanesEqualTheScalarFit) {
  std::mt19937 rng(23);
  const int N = kAffineGroup;
  std::vector<float> x(4 * N);
  auto fill = [&](float* g, int kind) {
    const float scale = std::pow(10.0f, float(int(rng() % 11)) - 6.0f);  // 1e-6 .. 1e4
    for (int i = 0; i < N; ++i) {
      switch (kind) {
        case 0: g[i] = std::normal_distribution<float>(0.0f, scale)(rng); break;
        case 1: g[i] = std::uniform_real_distribution<float>(-scale, 3.0f * scale)(rng); break;
        case 2: g[i] = float(int(rng() % 31)) * 0.5f * scale; break;  // halves: ties at many (d, m)
        case 3: g[i] = rng() % 3 == 0 ? 0.0f : rng() % 2 ? -0.0f : std::normal_distribution<float>(0.0f, scale)(rng); break;
        case 4: g[i] = scale; break;
        default: g[i] = i == int(rng() % N) ? 1e4f * scale : std::normal_distribution<float>(0.0f, scale)(rng); break;
      }
    }
  };
  int mismatches = 0, groups = 0;
  for (int it = 0; it < 6000; ++it) {
    for (int l = 0; l < 4; ++l) fill(&x[size_t(l) * N], int(rng() % 6));
    const int lanes = 1 + int(rng() % 4);
    for (float top : {15.0f, 3.0f}) {
      uint16_t d4[4], m4[4];
      fit_affine4(x.data(), lanes, top, d4, m4);
      for (int l = 0; l < lanes; ++l) {
        uint16_t d1, m1;
        fit_affine(&x[size_t(l) * N], N, top, &d1, &m1);
        ++groups;
        if (d1 != d4[l] || m1 != m4[l]) {
          if (++mismatches <= 5) {
            ADD_FAILURE() << "top " << top << " lane " << l << " of " << lanes << ": scalar (" << d1 << ", " << m1
                          << "), four-lane (" << d4[l] << ", " << m4[l] << ")";
          }
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << groups << " groups";
}

// quantize_affine_group (SSE2 lanes for whole groups where there is SSE2) writes the bytes of
// its stated rule, computed here element by element and packed by pack_group: both widths, whole
// and partial groups, levels on ties, -0 and values far outside [m, m + top d], d of 0, tiny and
// huge.
TEST(KvFit, GroupQuantizerIsTheStatedRule) {
  std::mt19937 rng(29);
  const int N = kAffineGroup;
  std::vector<float> x(N);
  int bad = 0, cases = 0;
  for (int it = 0; it < 20000; ++it) {
    const int bits = it % 2 ? 4 : 2, top = (1 << bits) - 1;
    const int ne = it % 7 == 0 ? 1 + int(rng() % N) : N;
    const float scale = std::pow(10.0f, float(int(rng() % 9)) - 4.0f);
    const float d = it % 50 == 0 ? 0.0f : f16_to_f32(f32_to_f16(scale * (0.05f + float(rng() % 100) / 100.0f)));
    const float m = f16_to_f32(f32_to_f16(-scale * float(rng() % 8) / 2.0f));
    for (int i = 0; i < N; ++i) {
      switch (rng() % 4) {
        case 0: x[i] = m + d * (float(int(rng() % (2 * top + 1))) * 0.5f); break;  // ties
        case 1: x[i] = std::normal_distribution<float>(m + d * top / 2.0f, 2.0f * d * top)(rng); break;
        case 2: x[i] = rng() % 2 ? -0.0f : 0.0f; break;
        default: x[i] = std::uniform_real_distribution<float>(m, m + d * top)(rng); break;
      }
    }
    uint8_t q[N], want[16], got[16];
    for (int i = 0; i < N; ++i) {
      const float r = i < ne && d > 0 ? std::nearbyint((x[i] - m) / d) : 0.0f;
      q[i] = uint8_t(std::clamp(r, 0.0f, float(top)));
    }
    std::memset(want, 0xAB, sizeof(want));
    std::memset(got, 0xAB, sizeof(got));
    pack_group(bits, N, q, want);
    quantize_affine_group(x.data(), ne, d, m, bits, got);
    ++cases;
    if (std::memcmp(want, got, sizeof(got)) != 0 && ++bad <= 5) {
      ADD_FAILURE() << "bits " << bits << ", ne " << ne << ", d " << d << ", m " << m;
    }
  }
  EXPECT_EQ(bad, 0) << "of " << cases;
}

// shift() moves the kept rows down and re-rotates keys by RoPE of -n_discard positions: each
// moved key equals the key RoPE'd directly at its new position (f32: up to rounding; quantized:
// within the format's error), values move unchanged.
TEST(KvCache, ShiftRerotatesKeysToTheirNewPositions) {
  const int L = 2, C = 120, H = 2, D = 64, half = D / 2, N = 110, KEEP = 2, DROP = 37;
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
  for (const char* spec : {"f32", "k8v8", "k4v4", "bf16", "k2v2", "k2v4"}) {
    KvCache kv(L, C, H, D, uniform(L, spec), 16);
    std::mt19937 rng(9);
    std::vector<std::vector<float>> raw_k(C), raw_v(C);
    for (int p = 0; p < N; ++p) {
      raw_k[p] = random_row(rng, H * D);
      raw_v[p] = random_row(rng, H * D);
      std::vector<float> k(H * D);
      for (int h = 0; h < H; ++h) {
        const std::vector<float> seg(raw_k[p].begin() + h * D, raw_k[p].begin() + (h + 1) * D);
        const std::vector<float> r = rope(seg, p);
        std::copy(r.begin(), r.end(), k.begin() + h * D);
      }
      for (int l = 0; l < L; ++l) {
        kv.store(l, p, 1, k.data(), raw_v[p].data(), size_t(H * D));
        kv.settle(l, p, 1, k.data(), raw_v[p].data(), size_t(H * D));
      }
    }
    std::vector<float> cs, sn;
    angles(DROP, cs, sn);
    kv.shift(KEEP, DROP, N, cs.data(), sn.data());  // keeps 0, 1 and 39..109 -> 0, 1 and 2..72
    const std::string sp = spec;
    const double kbound = sp == "f32" ? 1e-5 : sp == "k8v8" ? 0.02 : sp == "bf16" ? 0.01 : sp == "k4v4" ? 0.2 : 0.6;
    const double vbound = sp == "f32" ? 1e-6 : sp == "k8v8" ? 0.02 : sp == "bf16" ? 0.01 : sp == "k2v2" ? 0.5 : 0.2;
    for (int l = 0; l < L; ++l) {
      const KvCache::Tensor& K = kv.keys(l);
      EXPECT_EQ(K.windowed ? K.win1 : N - DROP, N - DROP);
      for (int h = 0; h < H; ++h) {
        for (int t = 0; t < N - DROP; ++t) {
          const int old = t < KEEP ? t : t + DROP;
          const std::vector<float> seg(raw_k[old].begin() + h * D, raw_k[old].begin() + (h + 1) * D);
          const std::vector<float> want = rope(seg, t);
          std::vector<float> got(static_cast<size_t>(D)), err(static_cast<size_t>(D));
          kv.row(K, h, t, got.data());
          for (int i = 0; i < D; ++i) err[i] = got[i] - want[i];
          EXPECT_LE(norm(err) / norm(want), kbound) << spec << " layer " << l << " head " << h << " new pos " << t;
          kv.row(kv.values(l), h, t, got.data());
          for (int i = 0; i < D; ++i) err[i] = got[i] - raw_v[old][h * D + i];
          EXPECT_LE(norm(err), vbound * norm(got) + 1e-6) << spec << " V, new pos " << t;
        }
      }
    }
  }
}

// attend() on every ISA against attention computed in double from the decoded cache: a query at
// p reads the quantized rows (decoded) of positions before quant_end(p) and the f32 rows after,
// softmax, then P·V alike. Batches of 1 to 13 tokens, chunks of 1 to 5 tokens with 2 query heads
// per KV head (rows not a multiple of the tiles), contexts crossing key blocks and the window's
// steps (window 8: quant_end moves every 32 tokens), head_dim 64 and 80 (not rotated).
TEST(Attention, EveryIsaAgainstTheDecodedCache) {
  const int C = 150, H = 2, group = 2;
  for (Isa isa : available_isas()) {
    const F32Kernels& kr = f32_kernels(isa);
    for (int D : {64, 80}) {
      for (const char* spec : {"f32", "k8v4", "bf16", "k2v2", "k4v2", "k2v16"}) {
        KvCache kv(1, C, H, D, uniform(1, spec), 8);
        const KvCache::Tensor& K = kv.keys(0);
        const KvCache::Tensor& V = kv.values(0);
        std::mt19937 rng(uint32_t(D) + 7);
        std::vector<float> ks(size_t(C) * H * D), vs(size_t(C) * H * D), qs(size_t(C) * H * group * D);
        std::normal_distribution<float> g(0.0f, 1.0f);
        for (float& x : ks) x = g(rng);
        for (int p = 0; p < C; ++p) ks[size_t(p) * H * D + 3] *= 6.0f;  // an outlier channel
        for (float& x : vs) x = g(rng);
        for (float& x : qs) x = 0.3f * g(rng);
        // Slices of 32 and 64 positions (combined by their log-sum-exp) and one slice of all.
        for (const int slice : {32, 64, 160}) {
          const int R5 = 5 * group, ns = attention_slices(C - 1, slice);
          std::vector<float> sc(size_t(R5) * C), ws(attention_window_scratch(kv, R5, 5)), out(size_t(R5) * D),
              q(size_t(R5) * D), lse(size_t(ns) * R5), parts(2 * size_t(ns) * R5 * D);
          const AttentionScratch scratch{sc.data(), ws.data(), lse.data(), parts.data()};
          double worst = 0;
          for (int p0 = 0; p0 < C;) {
            const int n = std::min(C - p0, 1 + (p0 * 7) % 13);
            float* kb = &ks[size_t(p0) * H * D];
            float* vb = &vs[size_t(p0) * H * D];
            kv.round_window(0, n, kb, vb, size_t(H * D));  // what the window keeps, and the reference reads
            kv.store(0, p0, n, kb, vb, size_t(H * D));
            const AttentionBatch batch{p0, kb, vb, size_t(H * D)};
            for (int b0 = 0; b0 < n;) {
              const int nb = std::min(n - b0, 1 + (b0 + p0) % 5);
              for (int h = 0; h < H; ++h) {
                for (int r = 0; r < nb * group; ++r) {
                  const float* src = &qs[(size_t(p0 + b0 + r / group) * H * group + size_t(h * group + r % group)) * D];
                  std::copy(src, src + D, &q[size_t(r) * D]);
                  if (K.rotated) kv.rotate(&q[size_t(r) * D]);
                }
                attend(kr, kv, 0, h, batch, p0 + b0, nb, group, q.data(), slice, scratch, out.data());
                for (int r = 0; r < nb * group; ++r) {
                  const int p = p0 + b0 + r / group;
                  const float* qr = &qs[(size_t(p) * H * group + size_t(h * group + r % group)) * D];
                  std::vector<float> qeff(qr, qr + D);
                  // q4 keys: their offsets multiply the float query's group sums X_g, not d_g * S_g
                  // (kernels/simd/kv_kernels.cc): key t's score gains sum_g m_g (X_g - d_g S_g).
                  std::vector<double> xs_err;
                  const int ng = (D + 31) / 32;
                  if (gemm_i8_reads(K.qtype) && !K.per_channel) {
                    // The keys read by gemm_i8: the query it multiplies is the (rotated) query
                    // quantized to int8 in groups of 32.
                    const int64_t kp = (D + 31) / 32 * 32;
                    std::vector<int8_t> qa(static_cast<size_t>(kp));
                    std::vector<float> qd(size_t(kp / 32)), qds(size_t(kp / 32));
                    quantize_act_row_ref(&q[size_t(r) * D], D, kp, qa.data(), qd.data(), qds.data(), false);
                    for (int i = 0; i < D; ++i) qeff[size_t(i)] = qd[size_t(i / 32)] * qa[size_t(i)];
                    if (K.qtype == QType::kQ4AG32) {
                      xs_err.assign(size_t(ng), 0.0);
                      for (int i = 0; i < D; ++i) xs_err[size_t(i / 32)] += double(q[size_t(r) * D + i]) - qeff[size_t(i)];
                    }
                    if (K.rotated) kv.unrotate(qeff.data());
                  }
                  std::vector<double> s(size_t(p) + 1);
                  std::vector<float> row(static_cast<size_t>(D));
                  double mx = -1e300;
                  for (int t = 0; t <= p; ++t) {
                    if (t < kv.quant_end(K, p)) {
                      kv.quantized_row(K, h, t, row.data());
                    } else {
                      std::copy_n(&ks[(size_t(t) * H + h) * D], D, row.data());
                    }
                    double d = 0;
                    for (int i = 0; i < D; ++i) d += double(qeff[size_t(i)]) * row[size_t(i)];
                    if (!xs_err.empty() && t < kv.quant_end(K, p)) {
                      const uint8_t* kr = kv.rows(K, h) + size_t(t) * K.seg;
                      for (int g = 0; g < ng; ++g) {
                        uint16_t m;
                        std::memcpy(&m, kr + 2 * ng + 2 * g, 2);
                        d += double(f16_to_f32(m)) * xs_err[size_t(g)];
                      }
                    }
                    s[size_t(t)] = d;
                    mx = std::max(mx, d);
                  }
                  double z = 0;
                  for (double& x : s) z += x = std::exp(x - mx);
                  std::vector<double> want(static_cast<size_t>(D), 0.0);
                  double vmax = 0;
                  for (int t = 0; t <= p; ++t) {
                    if (t < kv.quant_end(V, p)) {
                      kv.quantized_row(V, h, t, row.data());
                    } else {
                      std::copy_n(&vs[(size_t(t) * H + h) * D], D, row.data());
                    }
                    for (int i = 0; i < D; ++i) {
                      want[size_t(i)] += s[size_t(t)] / z * row[size_t(i)];
                      vmax = std::max(vmax, double(std::fabs(row[size_t(i)])));
                    }
                  }
                  // Rounding only: scores ~ D products (|q| * |k| <= 6 * 3 * 0.3 * 4), a softmax and
                  // a convex sum of rows of at most vmax.
                  for (int i = 0; i < D; ++i) {
                    const double e = std::fabs(out[size_t(r) * D + i] - want[size_t(i)]);
                    worst = std::max(worst, e / vmax);
                    ASSERT_LE(e, 2e-4 * vmax) << isa_name(isa) << " " << spec << " D=" << D << " slice " << slice << " pos " << p
                                              << " row " << r << " i " << i << " batch at " << p0 << " chunk at " << p0 + b0;
                  }
                }
              }
              b0 += nb;
            }
            kv.settle(0, p0, n, kb, vb, size_t(H * D));
            p0 += n;
          }
          std::printf("attend %s %s D=%d slice %d: worst error %.2g of max|v|\n", std::string(isa_name(isa)).c_str(), spec, D,
                      slice, worst);
        }
      }
    }
  }
}

}  // namespace
}  // namespace mxlm
