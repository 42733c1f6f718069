// Google Benchmark of decode attention (runtime/attention.h) over the KV cache formats, one
// thread: one query per KV head (Llama-7B: head_dim 128, 32 heads, no GQA) at depth 2048, each
// call attending over a layer's every head. Layers rotate through > 64 MiB of cache so that the
// rows stream from DRAM as in a real decode token (L3 is 32 MiB).
// Counter: kvGBps, the cache bytes a token reads (KvCache::read_bytes) per second; the time is
// one layer's 32 heads, each over its slices of kAttSlice positions in turn (runtime/attention.h),
// as a 2-thread decode runs them. Measured (Zen 5, one thread, AVX-512), time against f32 in the same run
// (2430-2750 us, DRAM-bound): f16 0.34, k8v8 0.27, k4v4 0.29, k2v2 0.47, for 0.50 / 0.25 / 0.16 /
// 0.11 of its bytes (before gemm_i8 read the int8 and int4 keys: k8v8 0.29, k4v4 0.35): the
// quantized formats were bound by decoding each element for one product (no GQA), mostly in
// P·V. With P·V factored (kernels/simd/f32_kernels.cc, gemm_nn_tile_factored): k8v8 0.20-0.22,
// k4v4 0.17-0.21, k2v2 0.27-0.35 (f32 2270-3020 us in those runs).
//
// Names: attention/<isa>/<kv>/T:<depth>/S:<slice>; filter with --benchmark_filter=attention/avx512.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "benchmarks/bench_util.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/quant.h"
#include "kernels/qtype.h"
#include "mxlm/model.h"
#include "runtime/attention.h"
#include "runtime/kv_cache.h"
#include "runtime/thread_pool.h"

namespace mxlm {
namespace {

constexpr int kHeads = 32, kDim = 128;

void bm_attend(benchmark::State& state, Isa isa, const std::string& spec, int T, int slice) {
  const F32Kernels& kr = f32_kernels(isa);
  const KvFormats f = *parse_kv_formats(spec);
  const int window = ContextParams{}.kv_window;
  const double layer_bytes = KvCache(1, T, kHeads, kDim, {f}, window).read_bytes(T);
  const int L = std::max(2, int(double(bench::kRotateBytes) / layer_bytes) + 2);
  KvCache kv(L, T, kHeads, kDim, std::vector<KvFormats>(size_t(L), f), window);
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const size_t ld = size_t(kHeads) * kDim;
  std::vector<float> k(size_t(T) * ld), v(size_t(T) * ld);
  for (float& x : k) x = g(rng);
  for (float& x : v) x = g(rng);
  for (int l = 0; l < L; ++l) {
    // Positions 0 .. T - 2 stored and settled, then the decoded token's own row.
    kv.round_window(l, T, k.data(), v.data(), ld);
    kv.store(l, 0, T - 1, k.data(), v.data(), ld);
    kv.settle(l, 0, T - 1, k.data(), v.data(), ld);
    kv.store(l, T - 1, 1, &k[size_t(T - 1) * ld], &v[size_t(T - 1) * ld], ld);
  }
  const AttentionBatch batch{T - 1, &k[size_t(T - 1) * ld], &v[size_t(T - 1) * ld], ld};
  const int ns = attention_slices(T - 1, slice);
  std::vector<float> q(kDim), out(kDim), wscores(attention_window_scratch(kv, 1, 1));
  std::vector<float> scores(static_cast<size_t>(T)), lse(static_cast<size_t>(ns)), parts(2 * size_t(ns) * kDim);
  const AttentionScratch scratch{scores.data(), wscores.data(), lse.data(), parts.data()};
  for (float& x : q) x = 0.1f * g(rng);
  int l = 0;
  for (auto _ : state) {
    for (int h = 0; h < kHeads; ++h) {
      attend(kr, kv, l, h, batch, T - 1, 1, 1, q.data(), slice, scratch, out.data());
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++l == L) l = 0;
  }
  state.counters["kvGBps"] = benchmark::Counter(layer_bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// q·Kᵀ alone over one layer's keys (32 heads x T rows of head_dim 128) in a KV key format, through
// the float gemm (dequantizing each element) or gemm_i8 (int8 query, integer dots): the kernels'
// ratio in one run. Layers rotate through > 64 MiB as above. Measured (Zen 5, one thread, three
// alternating runs): AVX-512 q4a_g32 float 520-800 us, int8 200-210; q8_g128 450-700, 250-340;
// AVX2 q4a_g32 970-1350 vs 250-290, q8_g128 790-1080 vs 280-330.
void bm_scores(benchmark::State& state, Isa isa, QType kt, bool i8, int T) {
  const F32Kernels& kr = f32_kernels(isa);
  const size_t rb = *qtype_row_bytes(kt, kDim);
  const size_t layer = size_t(kHeads) * size_t(T) * rb;
  const int L = std::max(2, int(bench::kRotateBytes / layer) + 2);
  std::vector<uint8_t> keys(size_t(L) * layer);
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> row(kDim);
  for (size_t r = 0; r < size_t(L) * kHeads * size_t(T); ++r) {
    for (float& x : row) x = g(rng);
    quantize_row(kt, row.data(), kDim, &keys[r * rb]);
  }
  std::vector<float> q(kDim), s(static_cast<size_t>(T));
  for (float& x : q) x = 0.1f * g(rng);
  int l = 0;
  for (auto _ : state) {
    for (int h = 0; h < kHeads; ++h) {
      const uint8_t* k = &keys[size_t(l) * layer + size_t(h) * T * rb];
      if (i8) {
        kr.gemm_i8(1, T, kDim, q.data(), kDim, k, rb, kt, s.data(), size_t(T));
      } else {
        kr.gemm(1, 0, T, kDim, q.data(), kDim, k, rb, kt, s.data(), size_t(T));
      }
    }
    benchmark::DoNotOptimize(s.data());
    benchmark::ClobberMemory();
    if (++l == L) l = 0;
  }
  state.counters["GBps"] = benchmark::Counter(double(layer) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// One decode token's store into a Llama-7B layer's cache (32 KV heads of 128, keys and values),
// then settle, as Context::layer_forward runs them, at positions cycling through 4096 (a wrap
// truncates, as a new sequence would). threads: KvCache::store's pool (a task per head and
// tensor). Counter: rows, the head rows encoded per second. Measured (Zen 5): see the README's
// KV section.
void bm_kv_store(benchmark::State& state, const std::string& spec, int threads) {
  const KvFormats f = *parse_kv_formats(spec);
  constexpr int kCtx = 4096;
  KvCache kv(1, kCtx, kHeads, kDim, {f}, ContextParams{}.kv_window);
  ThreadPool pool(threads);
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const size_t ld = size_t(kHeads) * kDim;
  std::vector<float> k(ld), v(ld);
  for (float& x : k) x = g(rng);
  for (float& x : v) x = g(rng);
  int p = 0;
  for (auto _ : state) {
    kv.round_window(0, 1, k.data(), v.data(), ld);
    kv.store(0, p, 1, k.data(), v.data(), ld, threads > 1 ? &pool : nullptr);
    kv.settle(0, p, 1, k.data(), v.data(), ld);
    if (++p == kCtx) p = 0;
  }
  state.counters["rows"] = benchmark::Counter(2.0 * kHeads, benchmark::Counter::kIsIterationInvariantRate);
}

// Registered at static initialization so the benchmarks run whichever main the binary links.
const bool kRegistered = [] {
  for (Isa isa : available_isas()) {
    if (isa == Isa::kRef) continue;  // the double-precision spec: minutes per layer
    for (const char* spec : {"f32", "f16", "k8v8", "k4v4", "k2v2"}) {
      const int T = 2048;
      // S: positions per slice, the default and one slice of all (what slicing costs).
      for (int slice : {kAttSlice, T}) {
        const std::string name = "attention/" + std::string(isa_name(isa)) + "/" + spec + "/T:" + std::to_string(T) +
                                 "/S:" + std::to_string(slice);
        benchmark::RegisterBenchmark(name.c_str(), bm_attend, isa, std::string(spec), T, slice)
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.5)
            ->UseRealTime();
      }
    }
  }
  for (const char* spec : {"k8v8", "k4v4", "k2v2"}) {
    for (int threads : {1, 2}) {
      const std::string name = "kv_store/" + std::string(spec) + "/threads:" + std::to_string(threads);
      benchmark::RegisterBenchmark(name.c_str(), bm_kv_store, std::string(spec), threads)
          ->Unit(benchmark::kMicrosecond)
          ->MinTime(0.3)
          ->UseRealTime();
    }
  }
  for (Isa isa : available_isas()) {
    if (isa == Isa::kRef) continue;
    for (QType kt : {QType::kQ8G128, QType::kQ4AG32}) {
      for (bool i8 : {false, true}) {
        const std::string name = "scores/" + std::string(isa_name(isa)) + "/" + std::string(qtype_info(kt).name) +
                                 (i8 ? "/int8" : "/float") + "/T:2048";
        benchmark::RegisterBenchmark(name.c_str(), bm_scores, isa, kt, i8, 2048)
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.5)
            ->UseRealTime();
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace mxlm
