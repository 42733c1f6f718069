// Google Benchmark of the float32 GEMM (kernels/f32_ops.h) on every ISA this host runs, for bf16,
// f16 and f32 weights, single-threaded:
//   (1, 4096, 4096)  decode GEMV; weights rotate through > 64 MiB so they stream from DRAM
//                    (L3 is 32 MiB), reported as weight GB/s (DRAM read: ~27 GB/s one thread)
//   (128, 1280, 512), (512, 512, 512), (512, 4096, 512)  prefill shapes
//   (512, 2048, 2048), (512, 2048, 5632)  a 512-token calibration window through TinyLlama-1.1B's
//                    q/o and down projections (the quantizer's forward passes over f16 weights)
// Counters: GFLOPS (2*M*N*K per call), peak = GFLOPS / 116 (the f32 FMA peak of one Zen 4 core,
// shared/TOOLCHAIN.md), and wGBps for M = 1.
//
// gemm_bf16/<isa>/M:<M>/N:<N>/K:<K>: the bf16 x bf16 GEMM (F32Kernels::gemm_bf16, the prefill of
// ContextParams::Prefill::kBf16 and the quantizer's Gram products on large models) at the M > 1
// shapes, its x and weights already in bf16; the same counters.
//
// Names: gemm/<isa>/<wtype>/M:<M>/N:<N>/K:<K>; filter with --benchmark_filter=gemm/avx512.
// log_sum_exp/<isa>/n:32000: below.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "benchmarks/bench_util.h"
#include "kernels/f32_ops.h"
#include "kernels/isa.h"
#include "kernels/qtype.h"

namespace mxlm {
namespace {

constexpr double kF32FmaPeakGflops = 116.0;
using bench::alloc_aligned;
using bench::Buffer;
using bench::kRotateBytes;

void fill_random(float* p, size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (size_t i = 0; i < n; ++i) p[i] = dist(rng);
}

void bm_gemm(benchmark::State& state, Isa isa, QType wtype, int M, int N, int K) {
  const F32Kernels& kern = f32_kernels(isa);
  const size_t row_bytes = *qtype_row_bytes(wtype, static_cast<uint64_t>(K));
  const size_t w_bytes = row_bytes * static_cast<size_t>(N);
  // M = 1 is memory-bound: rotate through enough matrices that each call reads from DRAM.
  const size_t n_bufs = M == 1 ? kRotateBytes / w_bytes + 2 : 1;

  std::mt19937 rng(42);
  std::vector<float> row(static_cast<size_t>(K));
  std::vector<Buffer> weights;
  for (size_t b = 0; b < n_bufs; ++b) {
    Buffer w = alloc_aligned(w_bytes);
    for (int n = 0; n < N; ++n) {
      fill_random(row.data(), row.size(), rng);
      convert_row_from_f32(wtype, row.data(), w.get() + static_cast<size_t>(n) * row_bytes, row.size());
    }
    weights.push_back(std::move(w));
  }
  Buffer xb = alloc_aligned(sizeof(float) * static_cast<size_t>(M) * K);
  Buffer yb = alloc_aligned(sizeof(float) * static_cast<size_t>(M) * N);
  float* x = reinterpret_cast<float*>(xb.get());
  float* y = reinterpret_cast<float*>(yb.get());
  fill_random(x, static_cast<size_t>(M) * K, rng);

  size_t b = 0;
  for (auto _ : state) {
    kern.gemm(M, 0, N, K, x, static_cast<size_t>(K), weights[b].get(), row_bytes, wtype, y, static_cast<size_t>(N));
    benchmark::DoNotOptimize(y);
    benchmark::ClobberMemory();
    if (++b == n_bufs) b = 0;
  }

  const double flops = 2.0 * M * static_cast<double>(N) * K;
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak"] =
      benchmark::Counter(flops * 1e-9 / kF32FmaPeakGflops, benchmark::Counter::kIsIterationInvariantRate);
  if (M == 1) {
    state.counters["wGBps"] =
        benchmark::Counter(static_cast<double>(w_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  }
}

void bm_gemm_bf16(benchmark::State& state, Isa isa, int M, int N, int K) {
  const F32Kernels& kern = f32_kernels(isa);
  std::mt19937 rng(42);
  std::vector<float> xf(static_cast<size_t>(M) * K), wf(static_cast<size_t>(N) * K);
  fill_random(xf.data(), xf.size(), rng);
  fill_random(wf.data(), wf.size(), rng);
  std::vector<uint16_t> x(xf.size()), w(wf.size());
  kern.to_bf16(xf.data(), QType::kF32, x.data(), x.size());
  kern.to_bf16(wf.data(), QType::kF32, w.data(), w.size());
  std::vector<float> y(static_cast<size_t>(M) * N);
  for (auto _ : state) {
    kern.gemm_bf16(M, 0, N, K, x.data(), static_cast<size_t>(K), w.data(), static_cast<size_t>(K), y.data(),
                   static_cast<size_t>(N));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * M * static_cast<double>(N) * K;
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak"] =
      benchmark::Counter(flops * 1e-9 / kF32FmaPeakGflops, benchmark::Counter::kIsIterationInvariantRate);
}

// log_sum_exp/<isa>/n:<n>: the normalizer of a log-softmax row (F32Kernels::log_sum_exp) over
// n logits, as the KL probes and perplexity run it per token (n = 32000: a Llama vocabulary).
// Counter: ns per element. The reference sums libm's exp in order.
void bm_log_sum_exp(benchmark::State& state, Isa isa, int n) {
  const F32Kernels& kern = f32_kernels(isa);
  std::mt19937 rng(42);
  std::vector<float> x(static_cast<size_t>(n));
  std::uniform_real_distribution<float> dist(-12.0f, 12.0f);  // logits' usual spread
  for (float& v : x) v = dist(rng);
  for (auto _ : state) {
    double r = kern.log_sum_exp(x.data(), n);
    benchmark::DoNotOptimize(r);
  }
  state.counters["ns_per_elem"] = benchmark::Counter(static_cast<double>(n) * 1e-9,
                                                     benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

struct Shape {
  int m, n, k;
};

// Registered at static initialization so the benchmarks run whichever main the binary links.
const bool kRegistered = [] {
  const Shape shapes[] = {{1, 4096, 4096},   {128, 1280, 512},  {512, 512, 512},
                          {512, 4096, 512}, {512, 2048, 2048}, {512, 2048, 5632}};
  for (Isa isa : available_isas()) {
    for (QType wtype : {QType::kBF16, QType::kF16, QType::kF32}) {
      for (const Shape& s : shapes) {
        // The scalar spec runs ~1 GFLOP/s: keep it to the shapes that finish quickly.
        if (isa == Isa::kRef && s.m * static_cast<double>(s.n) * s.k > 4e8) continue;
        const std::string name = "gemm/" + std::string(isa_name(isa)) + "/" + std::string(qtype_info(wtype).name) +
                                 "/M:" + std::to_string(s.m) + "/N:" + std::to_string(s.n) + "/K:" + std::to_string(s.k);
        benchmark::RegisterBenchmark(name.c_str(), bm_gemm, isa, wtype, s.m, s.n, s.k)
            ->Unit(benchmark::kMicrosecond)
            ->MinTime(0.5);
      }
    }
    for (const Shape& s : shapes) {
      if (s.m == 1 || (isa == Isa::kRef && s.m * static_cast<double>(s.n) * s.k > 4e8)) continue;
      const std::string name = "gemm_bf16/" + std::string(isa_name(isa)) + "/M:" + std::to_string(s.m) +
                               "/N:" + std::to_string(s.n) + "/K:" + std::to_string(s.k);
      benchmark::RegisterBenchmark(name.c_str(), bm_gemm_bf16, isa, s.m, s.n, s.k)->Unit(benchmark::kMicrosecond)->MinTime(0.5);
    }
    const std::string lse = "log_sum_exp/" + std::string(isa_name(isa)) + "/n:32000";
    benchmark::RegisterBenchmark(lse.c_str(), bm_log_sum_exp, isa, 32000)->Unit(benchmark::kMicrosecond)->MinTime(0.2);
  }
  return true;
}();

}  // namespace
}  // namespace mxlm

// Weak: another benchmark source may define main (benchmarks/*.cc link into one binary).
__attribute__((weak)) int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
