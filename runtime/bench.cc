#include "mxlm/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

#include "kernels/common.h"

namespace mxlm {

double measure_read_bandwidth(int threads, size_t bytes) {
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = i;  // first touch on the threads that read it
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < 4; ++pass) {
    auto t0 = std::chrono::steady_clock::now();
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (size_t i = 0; i < n; i += 8) {
      total += (buf[i] + buf[i + 1]) ^ (buf[i + 2] + buf[i + 3]) ^ (buf[i + 4] + buf[i + 5]) ^ (buf[i + 6] + buf[i + 7]);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink += total;
    if (pass > 0) best = std::max(best, double(n * sizeof(uint64_t)) / s);
  }
  if (sink == 42) std::fputc(' ', stderr);  // keep the sum alive
  return best;
}

uint64_t bytes_per_token(const Model& model) {
  uint64_t total = 0;
  for (const auto& t : model.file().tensors()) {
    if (t.name == tensor_names::kTokEmbd && !model.config().tied_embeddings) {
      total += t.bytes / static_cast<uint64_t>(t.rows());
    } else {
      total += t.bytes;
    }
  }
  return total;
}

namespace {

void mean_sd(const std::vector<double>& v, double* mean, double* sd) {
  double s = 0;
  for (double x : v) s += x;
  *mean = s / v.size();
  double q = 0;
  for (double x : v) q += (x - *mean) * (x - *mean);
  *sd = v.size() > 1 ? std::sqrt(q / (v.size() - 1)) : 0.0;
}

}  // namespace

std::vector<BenchResult> run_bench(const std::shared_ptr<const Model>& model, const BenchParams& p) {
  using clock = std::chrono::steady_clock;
  std::vector<BenchResult> out;
  const int n_vocab = model->config().n_vocab;
  const uint64_t bpt = bytes_per_token(*model);
  for (int threads : p.threads) {
    const double bw = measure_read_bandwidth(threads);
    ContextParams cp;
    cp.n_threads = threads;
    cp.n_ctx = std::min(model->config().n_ctx, std::max(p.n_prompt, p.n_gen) + 1);
    cp.n_batch = std::max(1, p.n_prompt);
    cp.act_per_token = p.act_per_token;
    cp.prefill = p.prefill;
    Context ctx(model, cp);
    // Deterministic pseudo-random tokens (the content does not change the work).
    std::vector<int> tokens(static_cast<size_t>(std::max(p.n_prompt, 1)));
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7919 + 13) % static_cast<size_t>(n_vocab));
    if (p.n_prompt > 0) {
      ctx.reset();
      ctx.eval(tokens);  // warm-up
      std::vector<double> rates;
      for (int r = 0; r < p.reps; ++r) {
        ctx.reset();
        auto t0 = clock::now();
        ctx.eval(tokens);
        rates.push_back(p.n_prompt / std::chrono::duration<double>(clock::now() - t0).count());
      }
      BenchResult b;
      b.threads = threads;
      b.test = "pp" + std::to_string(p.n_prompt);
      mean_sd(rates, &b.tok_s_mean, &b.tok_s_sd);
      b.bandwidth_gb_s = bw / 1e9;
      out.push_back(b);
    }
    if (p.n_gen > 0) {
      std::vector<double> rates;
      for (int r = 0; r <= p.reps; ++r) {  // the first run warms up
        ctx.reset();
        auto t0 = clock::now();
        for (int i = 0; i < p.n_gen; ++i) {
          const int tok[1] = {tokens[static_cast<size_t>(i) % tokens.size()]};
          ctx.eval(tok);
        }
        const double s = std::chrono::duration<double>(clock::now() - t0).count();
        if (r > 0) rates.push_back(p.n_gen / s);
      }
      BenchResult b;
      b.threads = threads;
      b.test = "tg" + std::to_string(p.n_gen);
      mean_sd(rates, &b.tok_s_mean, &b.tok_s_sd);
      b.weight_gb_s = b.tok_s_mean * double(bpt) / 1e9;
      // The bandwidth of a shared machine drifts: take the larger of the readings before the
      // prompt test and right after the generation runs, so the percentage errs low.
      b.bandwidth_gb_s = std::max(bw, measure_read_bandwidth(threads)) / 1e9;
      b.bandwidth_pct = 100.0 * b.weight_gb_s / b.bandwidth_gb_s;
      out.push_back(b);
    }
  }
  return out;
}

}  // namespace mxlm
