// measure_kv_profile and plan_kv: see runtime/include/mxlm/kv_auto.h.

#include "mxlm/kv_auto.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "model/allocate.h"
#include "runtime/kv_cache.h"
#include "runtime/log_softmax.h"

namespace mxlm {

KvProfile measure_kv_profile(const std::shared_ptr<const Model>& model, const std::vector<int>& stream,
                             const KvProfileParams& params, const std::function<void(int, int)>& progress) {
  const ModelConfig& c = model->config();
  const F32Kernels& kr = f32_kernels(model->isa());
  if (params.ctx < 1 || params.ctx > c.n_ctx) {
    throw Error(ErrorCode::kInvalidArgument, "KV calibration windows of " + std::to_string(params.ctx) +
                                                 " tokens: the model's context is " + std::to_string(c.n_ctx));
  }
  const int64_t need = int64_t(params.windows) * params.ctx + 1;
  if (params.windows < 1 || int64_t(stream.size()) < need) {
    throw Error(ErrorCode::kInvalidArgument, "the KV calibration text has " + std::to_string(stream.size()) + " tokens, fewer than " +
                                                 std::to_string(params.windows) + " windows of " + std::to_string(params.ctx) +
                                                 " need (" + std::to_string(need) + ")");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int L = c.n_layers, V = c.n_vocab, W = params.windows, N = params.ctx;
  KvProfile p;
  p.types = {KvType::kF32, KvType::kQ8, KvType::kQ4, KvType::kQ2};
  p.loss.resize(size_t(L));
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.kv_window = params.kv_window;
  for (int l = 0; l < L; ++l) {
    for (int t = 0; t < 2; ++t) p.loss[size_t(l)][size_t(t)].assign(p.types.size(), 0.0);
  }
  ContextParams cp;
  cp.n_ctx = N;
  cp.n_batch = N;
  cp.n_threads = params.threads;
  cp.kv_window = params.kv_window;
  // The reference: every window's next-token log-probabilities with the f32 cache.
  std::vector<float> ref(size_t(W) * N * V);
  {
    Context ctx(model, cp);
    for (int w = 0; w < W; ++w) {
      ctx.reset();
      const float* lg = ctx.eval(std::span<const int>(&stream[size_t(w) * N], size_t(N)), true);
      for (int i = 0; i < N; ++i) log_softmax(kr, lg + size_t(i) * V, V, &ref[(size_t(w) * N + i) * V]);
    }
  }
  const int total = L * 2 * int(p.types.size() - 1);
  int done = 0;
  std::vector<float> lq(static_cast<size_t>(V));
  for (int l = 0; l < L; ++l) {
    for (int t = 0; t < 2; ++t) {
      for (size_t j = 1; j < p.types.size(); ++j) {
        cp.kv_layers.assign(size_t(L), KvFormats{});
        (t == 0 ? cp.kv_layers[size_t(l)].k : cp.kv_layers[size_t(l)].v) = p.types[j];
        Context ctx(model, cp);
        double kl = 0;
        for (int w = 0; w < W; ++w) {
          ctx.reset();
          const float* lg = ctx.eval(std::span<const int>(&stream[size_t(w) * N], size_t(N)), true);
          for (int i = 0; i < N; ++i) {
            log_softmax(kr, lg + size_t(i) * V, V, lq.data());
            const float* lp = &ref[(size_t(w) * N + i) * V];
            double d = 0;
            for (int v = 0; v < V; ++v) d += std::exp(double(lp[v])) * (double(lp[v]) - lq[size_t(v)]);
            kl += std::max(d, 0.0);
          }
        }
        p.loss[size_t(l)][size_t(t)][j] = kl / (double(W) * N);
        if (progress) progress(++done, total);
      }
    }
  }
  p.predictions = int64_t(W) * N;
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

KvPlan plan_kv(const KvProfile& profile, double bits, int n_ctx) {
  const size_t L = profile.loss.size();
  MXLM_ASSERT(L > 0 && n_ctx > 0);
  // Bytes in units of 1/64 byte per token (the window's share is fractional), read at n_ctx.
  auto units = [&](KvType t, bool is_k) {
    return uint64_t(std::llround(64.0 * kv_read_bytes(t, is_k, profile.n_kv_heads, profile.head_dim, n_ctx, profile.kv_window) /
                                 n_ctx));
  };
  std::vector<AllocItem> items(2 * L);
  uint64_t min_units = 0;
  for (size_t l = 0; l < L; ++l) {
    for (size_t t = 0; t < 2; ++t) {
      AllocItem& it = items[2 * l + t];
      it.name = "layer " + std::to_string(l) + (t == 0 ? " keys" : " values");
      uint64_t smallest = UINT64_MAX;
      for (size_t j = 0; j < profile.types.size(); ++j) {
        it.choices.push_back({units(profile.types[j], t == 0), profile.loss[l][t][j]});
        smallest = std::min(smallest, it.choices.back().bytes);
      }
      min_units += smallest;
    }
  }
  const double elements = 2.0 * double(L) * profile.n_kv_heads * profile.head_dim;
  const double per_bit = 64.0 * elements / 8.0;  // units per token of one bit per element
  const double min_bits = double(min_units) / per_bit;
  if (!(bits >= min_bits - 1e-9)) {
    char buf[200];
    std::snprintf(buf, sizeof(buf), "--kv-bits %.3g is below the smallest KV plan at a context of %d tokens: %.2f bits per cached element",
                  bits, n_ctx, min_bits);
    throw Error(ErrorCode::kInvalidArgument, buf);
  }
  const uint64_t budget = std::max(min_units, uint64_t(std::floor(bits * per_bit + 1e-9)));
  const Allocation a = allocate(items, budget);
  KvPlan plan;
  plan.layers.resize(L);
  for (size_t l = 0; l < L; ++l) {
    plan.layers[l].k = profile.types[size_t(a.choice[2 * l])];
    plan.layers[l].v = profile.types[size_t(a.choice[2 * l + 1])];
  }
  plan.bits = double(a.bytes) / per_bit;
  plan.predicted_kl = a.loss;
  return plan;
}

}  // namespace mxlm
