// --kv auto's allocation (mxlm/kv_auto.h); its measurement runs in tests/eval_test.cc
// (Eval.TinymixQuantizedKvPerplexity).

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "base/error.h"
#include "mxlm/kv_auto.h"
#include "runtime/kv_cache.h"

namespace mxlm {
namespace {

// plan_kv on a made-up profile: within the budget (the 2-bit windows counted at the context
// planned for), the sensitive tensor keeps more bits, more bits never predict more loss, and a
// budget below the smallest plan names that limit.
TEST(KvAuto, PlanWithinTheBudget) {
  KvProfile p;
  p.types = {KvType::kF32, KvType::kQ8, KvType::kQ4, KvType::kQ2};
  p.n_kv_heads = 4;
  p.head_dim = 64;
  p.kv_window = 64;
  const int L = 6;
  p.loss.resize(L);
  for (int l = 0; l < L; ++l) {
    for (int t = 0; t < 2; ++t) p.loss[size_t(l)][size_t(t)] = {0.0, 1e-5, 1e-3, 4e-3};
  }
  p.loss[2][0] = {0.0, 2e-4, 0.05, 0.3};  // layer 2's keys: sensitive
  const int n = 2048;
  double last = 1e300;
  for (double bits : {4.0, 5.0, 6.0, 9.0, 40.0}) {
    const KvPlan plan = plan_kv(p, bits, n);
    ASSERT_EQ(plan.layers.size(), size_t(L));
    EXPECT_LE(plan.bits, bits + 1e-9) << bits;
    EXPECT_LE(plan.predicted_kl, last) << bits;
    last = plan.predicted_kl;
    // Recount the bits from the formats.
    double bytes = 0;
    for (const KvFormats& f : plan.layers) {
      bytes += kv_read_bytes(f.k, true, 4, 64, n, 64) + kv_read_bytes(f.v, false, 4, 64, n, 64);
    }
    EXPECT_NEAR(plan.bits, bytes / n * 8 / (2.0 * L * 4 * 64), 0.01) << bits;
    if (bits >= 5.0) {
      EXPECT_EQ(plan.layers[2].k, bits >= 40 ? KvType::kF32 : KvType::kQ8) << bits;
    }
  }
  EXPECT_EQ(plan_kv(p, 40.0, n).predicted_kl, 0.0);
  // The smallest plan, every tensor 2-bit: 3 bits per element plus the f16 window's share.
  const double min_bits = (kv_read_bytes(KvType::kQ2, true, 4, 64, n, 64) + kv_read_bytes(KvType::kQ2, false, 4, 64, n, 64)) /
                          n * 8 / (2.0 * 4 * 64);
  EXPECT_NO_THROW(plan_kv(p, min_bits + 1e-6, n));
  try {
    plan_kv(p, 3.0, n);
    ADD_FAILURE() << "a budget below every plan";
  } catch (const Error& e) {
    char want[64];
    std::snprintf(want, sizeof(want), "%.2f bits per cached element", min_bits);  // 3.41
    EXPECT_NE(std::string(e.what()).find("--kv-bits 3 is below the smallest KV plan at a context of 2048 tokens: " +
                                         std::string(want)),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace mxlm
