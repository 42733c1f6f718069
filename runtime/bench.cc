#include "mxlm/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>

#include "base/error.h"
#include "kernels/f32_ops.h"
#include "kernels/quant.h"
#include "model/file_util.h"

namespace mxlm {

double measure_read_bandwidth(int threads, size_t bytes) {
  threads = std::max(1, threads);
  // One buffer, kept: faulting in 1 GiB costs more than the measurement (benchmarks measure
  // around every run).
  static std::mutex mu;
  static std::shared_ptr<uint8_t> mem;
  static size_t mem_bytes = 0;
  const std::lock_guard<std::mutex> lock(mu);
  const size_t n = bytes / sizeof(float) / size_t(threads) * size_t(threads), per = n / size_t(threads);
  if (!mem || mem_bytes < n * sizeof(float)) {
    mem.reset();
    mem = alloc_anonymous(n * sizeof(float), true, "the bandwidth probe");
    mem_bytes = n * sizeof(float);
    float* f = reinterpret_cast<float*>(mem.get());
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; ++i) f[i] = 1.0f;
  }
  const float* buf = reinterpret_cast<const float*>(mem.get());
  const F32Kernels& kr = f32_kernels(selected_isa());
  double best = 0;
  float sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
    // Slice by slice, so that every byte counted is read even if OpenMP gives fewer threads.
#pragma omp parallel num_threads(threads) reduction(+ : total)
    for (int sl = omp_get_thread_num(); sl < threads; sl += omp_get_num_threads()) total += kr.sum(buf + size_t(sl) * per, per);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink += total;
    if (pass > 0) best = std::max(best, double(n * sizeof(float)) / s);  // the first pass warms the TLB
  }
  if (sink == 42) std::fputc(' ', stderr);  // keep the sums alive
  return best;
}

double measure_int8_peak(int threads, Isa isa) {
  const Int8PeakFn fn = find_int8_peak(isa);
  if (!fn) return 0;
  threads = std::max(1, threads);
  constexpr int64_t kIters = 1 << 22;  // 1.6-2.1 G operations: ~10 ms of one core at ~200 GOP/s
  double best = 0;
  for (int pass = 0; pass < 4; ++pass) {
    std::vector<uint64_t> ops(size_t(threads), 0);
    std::vector<int32_t> sink(size_t(threads), 0);
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const size_t t = size_t(omp_get_thread_num());
      ops[t] = fn(kIters, &sink[t]);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    uint64_t total = 0;
    for (uint64_t o : ops) total += o;
    if (pass > 0) best = std::max(best, double(total) / s);  // the first pass wakes the cores
  }
  return best;
}

uint64_t macs_per_token(const Model& model) {
  uint64_t total = 0;
  model.for_each_matmul_weight([&](const Weight& w) { total += uint64_t(w.n) * uint64_t(w.k); });
  return total;
}

namespace {

void mean_sd(const std::vector<double>& v, double* mean, double* sd) {
  double s = 0;
  for (double x : v) s += x;
  *mean = s / double(v.size());
  double q = 0;
  for (double x : v) q += (x - *mean) * (x - *mean);
  *sd = v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0;
}

std::vector<BenchPhase> bench_phases(const EvalProfile& prof, int threads, double bandwidth, double peak) {
  std::vector<BenchPhase> out;
  if (prof.tokens == 0 || prof.eval_s <= 0) return out;
  const double per_tok = 1e3 / double(prof.tokens);
  double in_phases = 0;
  for (int i = 0; i < kPhases; ++i) {
    const PhaseStats& st = prof.phase[size_t(i)];
    if (st.calls == 0) continue;
    BenchPhase ph;
    ph.name = phase_name(Phase(i));
    ph.ms_per_token = st.wall_s * per_tok;
    ph.share_pct = 100.0 * st.wall_s / prof.eval_s;
    ph.gb_s = st.wall_s > 0 ? st.bytes / st.wall_s / 1e9 : 0.0;
    ph.bandwidth_pct = bandwidth > 0 ? 100.0 * ph.gb_s * 1e9 / bandwidth : 0.0;
    ph.gop_s = st.wall_s > 0 ? st.ops / st.wall_s / 1e9 : 0.0;
    ph.peak_pct = peak > 0 ? 100.0 * ph.gop_s * 1e9 / peak : 0.0;
    ph.busy_pct = st.wall_s > 0 ? 100.0 * st.busy_s / (st.wall_s * threads) : 0.0;
    ph.calls_per_token = double(st.calls) / double(prof.tokens);
    in_phases += st.wall_s;
    out.push_back(ph);
  }
  const double rest_s = std::max(0.0, prof.eval_s - in_phases);
  BenchPhase other;
  other.name = "other";
  other.ms_per_token = rest_s * per_tok;
  other.share_pct = 100.0 * rest_s / prof.eval_s;
  out.push_back(other);
  return out;
}

}  // namespace

std::vector<BenchResult> run_bench(const std::vector<BenchModel>& models, const BenchParams& p) {
  using clock = std::chrono::steady_clock;
  if (models.empty()) throw Error(ErrorCode::kInvalidArgument, "bench: no model");
  std::vector<BenchResult> out;
  const int n_vocab = models[0].model->config().n_vocab;
  std::vector<int> depths = p.depths.empty() ? std::vector<int>{0} : p.depths;
  for (int d : depths) {
    if (d < 0) throw Error(ErrorCode::kInvalidArgument, "bench: negative depth " + std::to_string(d));
  }
  const int max_depth = *std::max_element(depths.begin(), depths.end());
  const int n_test = std::max(p.n_prompt, p.n_gen);
  for (const BenchModel& bm : models) {
    const int trained = bm.model->config().n_ctx;
    if (max_depth > 0 && max_depth + n_test + 1 > trained) {
      throw Error(ErrorCode::kInvalidArgument, "bench: depth " + std::to_string(max_depth) + " + " + std::to_string(n_test) +
                                                   " test tokens exceeds the model's trained context of " +
                                                   std::to_string(trained) + " tokens");
    }
  }
  // Every model with every KV format, measured in alternating repetitions.
  struct Variant {
    const BenchModel* bm;
    std::vector<KvFormats> kv;
  };
  std::vector<Variant> variants;
  const std::vector<std::vector<KvFormats>> kvs = p.kvs.empty() ? std::vector<std::vector<KvFormats>>{{KvFormats{}}} : p.kvs;
  for (const BenchModel& bm : models) {
    for (const std::vector<KvFormats>& kv : kvs) variants.push_back({&bm, kv});
  }
  for (int threads : p.threads) {
    const double bw = measure_read_bandwidth(threads);
    const double peak = measure_int8_peak(threads, models[0].model->isa());
    std::vector<std::unique_ptr<Context>> ctxs;
    for (const Variant& var : variants) {
      const BenchModel& bm = *var.bm;
      ContextParams cp;
      cp.n_threads = threads;
      cp.n_ctx = std::min(bm.model->config().n_ctx, max_depth + n_test + 1);
      // Filling a deep context goes in batches of up to 512 even when pp is skipped.
      cp.n_batch = std::max({1, p.n_prompt, std::min(max_depth, 512)});
      cp.act_per_token = p.act_per_token;
      cp.kv_layers = var.kv;
      cp.kv_window = std::min(p.kv_window, cp.n_ctx);
      cp.prefill = p.prefill;
      ctxs.push_back(std::make_unique<Context>(bm.model, cp));
    }
    // Deterministic pseudo-random tokens (the content does not change the work).
    std::vector<int> tokens(static_cast<size_t>(std::max({p.n_prompt, max_depth, 1})));
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7919 + 13) % static_cast<size_t>(n_vocab));
    const size_t nm = variants.size();
    for (int depth : depths) {
      // The context filled to `depth` once, then cut back to it before every repetition.
      for (size_t m = 0; m < nm; ++m) {
        ctxs[m]->reset();
        if (depth > 0) ctxs[m]->eval(std::span<const int>(tokens.data(), size_t(depth)));
      }
      const std::string at = depth > 0 ? "@d" + std::to_string(depth) : "";
      // Tokens per second of run(context) over p.reps rounds that alternate the models (round 0
      // warms up), and a result per model with the fields every test shares.
      auto rounds = [&](int n_tokens, auto&& run) {
        std::vector<std::vector<double>> rates(nm);
        for (int r = 0; r <= p.reps; ++r) {
          if (r == 1) {
            for (auto& c : ctxs) c->clear_profile();  // round 0 warms up
          }
          for (size_t m = 0; m < nm; ++m) {
            ctxs[m]->truncate(depth);
            const auto t0 = clock::now();
            run(*ctxs[m]);
            if (r > 0) rates[m].push_back(n_tokens / std::chrono::duration<double>(clock::now() - t0).count());
          }
        }
        return rates;
      };
      auto result = [&](size_t m, const std::string& test, const std::vector<double>& rates) {
        BenchResult b;
        b.threads = threads;
        b.label = variants[m].bm->label;
        b.kv = kv_plan_name(variants[m].kv);
        b.test = test + at;
        b.depth = depth;
        mean_sd(rates, &b.tok_s_mean, &b.tok_s_sd);
        b.peak_gop_s = peak / 1e9;
        return b;
      };
      if (p.n_prompt > 0) {
        for (auto& c : ctxs) c->set_profiling(p.phases);
        const auto rates =
            rounds(p.n_prompt, [&](Context& ctx) { ctx.eval(std::span<const int>(tokens.data(), size_t(p.n_prompt))); });
        for (size_t m = 0; m < nm; ++m) {
          BenchResult b = result(m, "pp" + std::to_string(p.n_prompt), rates[m]);
          b.bandwidth_gb_s = bw / 1e9;
          b.gop_s = b.tok_s_mean * 2.0 * double(macs_per_token(*variants[m].bm->model)) / 1e9;
          b.peak_pct = peak > 0 ? 100.0 * b.gop_s / b.peak_gop_s : 0.0;
          if (p.phases) b.phases = bench_phases(ctxs[m]->profile(), threads, bw, peak);
          ctxs[m]->set_profiling(false);
          out.push_back(b);
        }
      }
      if (p.n_gen > 0) {
        for (auto& c : ctxs) c->set_profiling(p.phases);
        const auto rates = rounds(p.n_gen, [&](Context& ctx) {
          for (int i = 0; i < p.n_gen; ++i) {
            const int tok[1] = {tokens[static_cast<size_t>(i) % tokens.size()]};
            ctx.eval(tok);
          }
        });
        // The bandwidth of a shared machine drifts: take the larger of the readings before the
        // tests and right after the generation runs, so that the percentages err low.
        const double bw_tg = std::max(bw, measure_read_bandwidth(threads));
        for (size_t m = 0; m < nm; ++m) {
          const uint64_t bpt = variants[m].bm->model->bytes_per_token();
          BenchResult b = result(m, "tg" + std::to_string(p.n_gen), rates[m]);
          // Generated token i attends over depth + i + 1 cached tokens.
          double kv_read = 0;
          for (int i = 0; i < p.n_gen; ++i) kv_read += ctxs[m]->kv_read_bytes(depth + i + 1);
          b.kv_bytes_per_token = kv_read / p.n_gen;
          b.kv_bytes = double(ctxs[m]->kv_bytes());
          b.weight_gb_s = b.tok_s_mean * double(bpt) / 1e9;
          b.kv_gb_s = b.tok_s_mean * b.kv_bytes_per_token / 1e9;
          b.bandwidth_gb_s = bw_tg / 1e9;
          b.bandwidth_pct = 100.0 * (b.weight_gb_s + b.kv_gb_s) / b.bandwidth_gb_s;
          b.roofline_tok_s = bw_tg / (double(bpt) + b.kv_bytes_per_token);
          if (p.phases) b.phases = bench_phases(ctxs[m]->profile(), threads, bw_tg, peak);
          ctxs[m]->set_profiling(false);
          out.push_back(b);
        }
      }
    }
  }
  return out;
}

}  // namespace mxlm
