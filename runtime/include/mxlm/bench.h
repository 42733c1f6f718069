// A llama-bench-like harness: prompt processing (pp) and token generation (tg) measured
// separately, with repetitions (mean ± sd), tokenization and sampling excluded, and decode
// compared with this machine's measured memory read bandwidth.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

// Read bandwidth (bytes/s) of a sum over a `bytes`-sized buffer on `threads` threads (best of
// a few passes): the physical limit of decoding.
double measure_read_bandwidth(int threads, size_t bytes = size_t{1} << 30);

// Weight bytes one decoded token reads: every tensor except the embedding table (one row).
uint64_t bytes_per_token(const Model& model);

struct BenchParams {
  int n_prompt = 128;  // 0: skip pp
  int n_gen = 64;      // 0: skip tg
  int reps = 3;
  std::vector<int> threads = {1, 2};
  bool act_per_token = false;
  ContextParams::Prefill prefill = ContextParams::Prefill::kAuto;
};

struct BenchResult {
  int threads = 0;
  std::string test;                // "pp128", "tg64"
  double tok_s_mean = 0, tok_s_sd = 0;
  double weight_gb_s = 0;          // tg: bytes_per_token × tok/s
  double bandwidth_gb_s = 0;       // measured read bandwidth at this thread count
  double bandwidth_pct = 0;        // weight_gb_s / bandwidth_gb_s × 100
};

std::vector<BenchResult> run_bench(const std::shared_ptr<const Model>& model, const BenchParams& params);

}  // namespace mxlm
