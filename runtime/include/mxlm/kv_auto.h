// Mixed-precision KV cache (`--kv auto --kv-bits B`): each layer's keys and values get their
// own format, chosen by measured sensitivity under a byte budget, the way weights get theirs.
//
// Measurement (measure_kv_profile): the model evaluates windows of calibration text once with
// an f32 cache (the reference next-token distributions), then once per layer, tensor (K or V)
// and candidate format with only that tensor quantized; a candidate's loss is the mean KL
// divergence of its next-token distributions from the reference, in nats per prediction. That
// is 2 x n_layers x 3 evaluations of the windows (tinymix-26m, 2 windows of 512: ~20 s on two
// cores).
//
// Allocation (plan_kv): a multiple-choice knapsack (model/allocate.h) over the 2 x n_layers
// tensors, each taking one of f32 / q8 / q4 / q2 with its bytes and measured loss, minimizing
// the summed loss (KL adds up over small independent perturbations, to first order) under the
// budget of B bits per cached element, scales and offsets included (k4v4 = 5.0, k8v8 = 8.25 at
// head_dim 64), as --bpw counts weights. The bytes are those a token reads at the full context
// n: a 2-bit tensor's window of f32 rows counts (k2v2 with a window of 64: 6.6 bits at n = 512,
// 3.9 at 2048, 3.0 without the window), so a plan's bits are what decode streams there.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

struct KvProfileParams {
  int ctx = 512;      // tokens per window
  int windows = 2;    // windows of calibration text
  int threads = 0;    // 0: all cores
  int kv_window = 64;  // the 2-bit formats' f16 window, as the plan will run
};

struct KvProfile {
  std::vector<KvType> types;  // the candidates: kF32 (loss 0), kQ8, kQ4, kQ2
  // Per layer, [0] keys and [1] values: per candidate, the mean KL (nats per prediction) with
  // only that tensor in that format.
  std::vector<std::array<std::vector<double>, 2>> loss;
  int n_kv_heads = 0, head_dim = 0, kv_window = 0;
  int64_t predictions = 0;          // per candidate
  double seconds = 0;
};

// Throws Error (kInvalidArgument) when the stream holds fewer than `windows` windows of ctx + 1
// tokens or ctx exceeds the model's context.
KvProfile measure_kv_profile(const std::shared_ptr<const Model>& model, const std::vector<int>& stream,
                             const KvProfileParams& params,
                             const std::function<void(int done, int total)>& progress = {});

struct KvPlan {
  std::vector<KvFormats> layers;
  double bits = 0;          // bits per cached element a token reads at the context planned for
  double predicted_kl = 0;  // Σ of its tensors' measured losses
};

// The plan of least predicted loss within `bits` per cached element read at a context of n_ctx
// tokens. Throws Error (kInvalidArgument) when bits is below the smallest plan there, naming
// that limit.
KvPlan plan_kv(const KvProfile& profile, double bits, int n_ctx);

}  // namespace mxlm
