// A llama-bench-like harness: prompt processing (pp) and token generation (tg) measured
// separately, with repetitions (mean ± sd), tokenization and sampling excluded, decode compared
// with this machine's read bandwidth and prefill with its int8 peak, both measured in the same
// run (the machine is shared: its bandwidth swings by 2x from hour to hour).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mxlm/model.h"

namespace mxlm {

// Read bandwidth (bytes/s): `threads` threads each sum their contiguous slice of a `bytes`
// buffer (anonymous memory on transparent huge pages, kept for the next call of the same size)
// with the SIMD sum kernel of the selected ISA; the best of a few passes. The physical limit of
// decoding: the best a reader of this machine's memory gets.
double measure_read_bandwidth(int threads, size_t bytes = size_t{1} << 30);

// int8 operations per second (2 per multiply-add) of `threads` cores running `isa`'s dot
// instruction at once (kernels/quant.h find_int8_peak); the best of a few ~10-20 ms runs. 0 when
// the ISA has none (ref).
double measure_int8_peak(int threads, Isa isa);

// Multiply-adds of one token's matmuls (every weight but an untied embedding table): a prefill's
// int8 operations are 2 × this per token.
uint64_t macs_per_token(const Model& model);

struct BenchParams {
  int n_prompt = 128;  // 0: skip pp
  int n_gen = 64;      // 0: skip tg
  int reps = 3;
  std::vector<int> threads = {1, 2};
  // Tokens already in the context when pp and tg start (llama-bench's -d): filled once per
  // depth, untimed, and kept across repetitions.
  std::vector<int> depths = {0};
  bool act_per_token = false;
  // KV cache formats: each model runs with each (as separate results, repetitions alternating).
  std::vector<std::vector<KvFormats>> kvs = {{KvFormats{}}};  // KV plans (parse_kv_plan), each measured
  int kv_window = ContextParams{}.kv_window;
  ContextParams::Prefill prefill = ContextParams::Prefill::kAuto;
  bool phases = false;  // pp and tg: where the tokens' time goes (BenchResult::phases)
};

// One model under test: `label` names it in the results (e.g. its weight memory).
struct BenchModel {
  std::string label;
  std::shared_ptr<const Model> model;
};

// One phase of a test's tokens (Context's EvalProfile over the timed repetitions): its time, the
// bytes it reads at that time's rate against the run's bandwidth (decode's limit), the
// projections' int8 operations against the run's int8 peak (prefill's), and how busy the threads
// were inside it. The phase "other" is the rest of the tokens' time (no bytes, no parallel tasks).
struct BenchPhase {
  std::string name;
  double ms_per_token = 0;
  double share_pct = 0;      // of the token's time
  double gb_s = 0;           // bytes read / time in the phase
  double bandwidth_pct = 0;  // gb_s / the run's read bandwidth
  double gop_s = 0;          // projections and head: 2 x tokens x rows x K / time in the phase
  double peak_pct = 0;       // gop_s / the run's int8 peak
  double busy_pct = 0;       // time in parallel tasks / (time in the phase x threads)
  double calls_per_token = 0;
};

struct BenchResult {
  int threads = 0;
  std::string label;               // BenchModel::label
  std::string kv;                  // KV cache formats, "f32", "k4v4", ...
  std::string test;                // "pp128", "tg64", "tg64@d2048"
  int depth = 0;                   // tokens in the context before the test
  double tok_s_mean = 0, tok_s_sd = 0;
  double weight_gb_s = 0;          // tg: bytes_per_token × tok/s
  double kv_bytes_per_token = 0;   // tg: KV cache bytes a generated token reads (mean over the run)
  double kv_bytes = 0;             // the whole cache at the bench's context
  double kv_gb_s = 0;              // tg: kv_bytes_per_token × tok/s
  double bandwidth_gb_s = 0;       // measured read bandwidth at this thread count
  double bandwidth_pct = 0;        // tg: (weight_gb_s + kv_gb_s) / bandwidth_gb_s × 100
  double roofline_tok_s = 0;       // tg: bandwidth / (weight + KV bytes per token), the speed it allows
  double gop_s = 0;                // pp: 2 × macs_per_token × tok/s / 1e9
  double peak_gop_s = 0;           // measured int8 peak of `threads` cores
  double peak_pct = 0;             // pp: gop_s / peak_gop_s × 100
  std::vector<BenchPhase> phases;  // with BenchParams::phases
};

// Every model with every KV format at every thread count; the repetitions of these alternate
// (rep 1 of each, then rep 2 of each, ...), so that what is compared in one run sees the same
// machine.
std::vector<BenchResult> run_bench(const std::vector<BenchModel>& models, const BenchParams& params);

}  // namespace mxlm
