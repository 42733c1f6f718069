// Google Benchmark of the quantized GEMM kernels (kernels/quant.h) per (QType, ISA), for the
// SIMD ISAs this host runs:
//   qgemv/<isa>/<qtype>/N:<N>/K:<K>/threads:<t>   decode, M = 1, (N, K) = Llama-7B's
//       (4096, 4096), (11008, 4096), (4096, 11008) and output head (32000, 4096); TinyLlama-1.1B's
//       (2048, 2048), (2048, 5632) and K/V projections (256, 2048), a call's fixed costs over few
//       rows. The weights rotate through more than 64 MiB of distinct matrices (L3 is 32 MiB) so
//       every call streams them from DRAM. Counters: GBps (weight bytes read per second) and
//       pct_bw (GBps as % of the DRAM read bandwidth measured by this binary: the runtime's
//       probe, mxlm/bench.h, a SIMD sum over a 1 GiB buffer on huge pages with the same thread
//       count, the larger of the readings just before and just after).
//   qgemv_cached/<isa>/<qtype>/K:4096   decode, 1 thread, one matrix of ~256 KiB (N rows, a
//       multiple of 16) that stays in L2: the kernel's compute-bound rate in GBps of packed
//       weights. Above the DRAM bandwidth it means the kernel can keep up with memory; below, it
//       is the limit. It moves with the core's clock and its sibling's load, so pct_peak gives
//       its 2*N*K operations per call as % of the int8 peak read around it (peak_GOPS): the
//       figure to compare between runs. (A 512-row matrix, as before, is 0.65-2.2 MiB: at 3+
//       bits it spilled to L3 and measured L3 bandwidth, not the kernel.)
//   qgemm/<isa>/<qtype>/M:<M>/N:4096/K:4096/threads:<t>   prefill, M = 16, 128, 512. Counters:
//       GOPS (2*M*N*K per call) and pct_peak (% of the int8 peak of the ISA's dot instruction,
//       vpdpbusd or vpmaddubsw, on `threads` threads, measured by this binary just before and
//       just after the benchmark, the larger: peak_GOPS).
// The kernels are single-threaded; threads:2 splits N in two halves on the runtime's thread pool,
// as decode does. Activation quantization is not timed.
//
// Filter with e.g. --benchmark_filter='qgemv/avx512/q4_g32/N:11008'.

#include <algorithm>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>


#include <benchmark/benchmark.h>

#include "benchmarks/bench_util.h"
#include "kernels/isa.h"
#include "kernels/quant.h"
#include "kernels/qtype.h"
#include "model/file_util.h"
#include "mxlm/bench.h"
#include "runtime/thread_pool.h"

namespace mxlm {
namespace {

using bench::kRotateBytes;
constexpr size_t kPoolBytes = size_t{160} << 20;    // room for > 64 MiB of the largest matrix

// ---- measured limits ---------------------------------------------------------------------------

// GB/s of the runtime's read-bandwidth probe (mxlm/bench.h) with `threads` threads: measured
// around every benchmark (the machine is shared: its bandwidth drifts between benchmarks).
double read_bandwidth_gbps(int threads) { return measure_read_bandwidth(threads) / 1e9; }

// GOP/s of `isa`'s int8 dot instruction on `threads` threads (mxlm/bench.h), measured around
// every benchmark like the bandwidth. It drifts as much: on the 2-core Zen 5 hosts one thread's
// probe read 567 and 842 GOP/s minutes apart, and the compute-bound GEMV (`qgemv_cached`) q4_g32
// 47, 56 and 73 GB/s in three runs within a minute (a core's sibling busy or not, the clock).
// ~40 ms per reading.
double int8_peak_gops(Isa isa, int threads) { return measure_int8_peak(threads, isa) / 1e9; }

// ---- weights ----------------------------------------------------------------------------------

// One pool of random bytes shared by all benchmarks; each benchmark writes valid scales (and
// codebooks) into the rows it uses. Random quants are valid quants of every format.
uint8_t* weight_pool() {
  // On huge pages, as the runtime loads weights by default (runtime/model.cc).
  static std::shared_ptr<uint8_t> pool;
  if (!pool) {
    pool = alloc_anonymous(kPoolBytes, true, "the benchmark weights");
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < kPoolBytes; i += 8) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      std::memcpy(pool.get() + i, &s, 8);
    }
  }
  return pool.get();
}

// Views `rows` consecutive rows of format t in the pool as valid weights: f16 scales/offsets of
// about 0.01 and a sorted codebook (two-level formats: f32 row scales, random codes).
void make_rows_valid(QType t, int64_t K, uint8_t* base, size_t row_bytes, size_t rows) {
  const QTypeInfo& info = qtype_info(t);
  const int64_t nb = (K + info.block_elems - 1) / info.block_elems;
  const int n_f16 = static_cast<int>(nb) * (info.kind == QKind::kAsymmetric ? 2 : 1);
  std::vector<uint16_t> scales(static_cast<size_t>(n_f16));
  for (int i = 0; i < n_f16; ++i) scales[i] = f32_to_f16(0.01f * (1.0f + 0.001f * static_cast<float>(i % 97)));
  int8_t cb[16];
  for (int i = 0; i < 16; ++i) cb[i] = static_cast<int8_t>(-120 + 16 * i);
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* row = base + r * row_bytes;
    if (info.two_level) {
      // f32 row scales D (and M); the codes stay random (any byte is a valid code).
      const float dm[2] = {0.01f / 64, 0.01f / 64};
      std::memcpy(row, dm, static_cast<size_t>(info.row_prefix_bytes));
      continue;
    }
    if (info.kind == QKind::kCodebook) std::memcpy(row, cb, static_cast<size_t>(codebook_size(info)));
    std::memcpy(row + info.row_prefix_bytes, scales.data(), scales.size() * 2);
  }
}

// M activation rows quantized by the ISA's quantizer.
struct Acts {
  std::vector<int8_t> q;
  std::vector<float> d, ds;
  ActQ8 view;
};

// make_rows_valid, then the kernel's load-time packing (as the runtime does at load).
void prepare_rows(Isa isa, QType t, int64_t K, uint8_t* base, size_t row_bytes, size_t rows) {
  make_rows_valid(t, K, base, row_bytes, rows);
  const QKernel kern = find_qkernel(t, isa);
  if (!kern.pack) return;
  const size_t pr = static_cast<size_t>(kern.pack_rows);
  std::vector<uint8_t> raw(row_bytes * pr);
  for (size_t r = 0; r < rows; r += pr) {
    const size_t n = std::min(pr, rows - r);
    std::memcpy(raw.data(), base + r * row_bytes, row_bytes * n);
    kern.pack(raw.data(), base + r * row_bytes, K, static_cast<int>(n), row_bytes);
  }
}

Acts make_acts(Isa isa, int M, int64_t K) {
  Acts a;
  const int64_t kp = act_padded_k(K), nbs = kp / kActBlock;
  a.q.resize(static_cast<size_t>(M * kp));
  a.d.resize(static_cast<size_t>(M * nbs));
  a.ds.resize(static_cast<size_t>(M * nbs));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(K));
  const QuantizeActFn quant = find_quantize_act(isa);
  for (int m = 0; m < M; ++m) {
    for (float& v : x) v = nd(rng);
    quant(x.data(), K, kp, a.q.data() + m * kp, a.d.data() + m * nbs, a.ds.data() + m * nbs, false);
  }
  a.view = ActQ8{a.q.data(), a.d.data(), a.ds.data(), kp};
  return a;
}

// One call of the kernel over [0, N), split into `threads` contiguous parts run on the runtime's
// pool (runtime/thread_pool.h: persistent workers spinning between regions), as decode runs its
// matmuls. (OpenMP's fork and join, which this used before, cost the 2-thread K/V projection
// shape more than its second thread gained.)
void run_split(QGemmFn fn, int threads, int M, int N, int64_t K, const ActQ8& a, const uint8_t* w, size_t row_bytes,
               float* y) {
  if (threads == 1) {
    fn(M, 0, N, N, K, a, w, row_bytes, y, static_cast<size_t>(N));
    return;
  }
  static std::unique_ptr<ThreadPool> pool;
  if (!pool || pool->size() != threads) pool = std::make_unique<ThreadPool>(threads);
  pool->run(threads, [&](int t, int) {
    // Halves rounded to 16 rows (whole tiles).
    const int per = (N / threads + 15) / 16 * 16;
    const int lo = per * t, hi = t == threads - 1 ? N : per * (t + 1);
    if (lo < hi) fn(M, lo, hi, N, K, a, w, row_bytes, y, static_cast<size_t>(N));
  });
}

void bm_gemv(benchmark::State& state, Isa isa, QType t, int N, int64_t K, int threads) {
  const QGemmFn fn = find_qkernel(t, isa).gemm;
  const size_t row_bytes = static_cast<size_t>(*qtype_row_bytes(t, static_cast<uint64_t>(K)));
  const size_t mat_bytes = row_bytes * static_cast<size_t>(N);
  const size_t n_mats = kPoolBytes / mat_bytes;
  if (n_mats * mat_bytes < kRotateBytes) {
    state.SkipWithError("weight pool too small for this shape");
    return;
  }
  uint8_t* pool = weight_pool();
  prepare_rows(isa, t, K, pool, row_bytes, n_mats * static_cast<size_t>(N));
  const Acts a = make_acts(isa, 1, K);
  std::vector<float> y(static_cast<size_t>(N));
  const double bw_before = read_bandwidth_gbps(threads);

  size_t b = 0;
  for (auto _ : state) {
    run_split(fn, threads, 1, N, K, a.view, pool + b * mat_bytes, row_bytes, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    if (++b == n_mats) b = 0;
  }
  const double bw = std::max(bw_before, read_bandwidth_gbps(threads));  // after the timed loop
  state.counters["GBps"] = benchmark::Counter(static_cast<double>(mat_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_bw"] = benchmark::Counter(static_cast<double>(mat_bytes) * 1e-9 / bw * 100.0,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bw_GBps"] = bw;
}

void bm_gemv_cached(benchmark::State& state, Isa isa, QType t, int64_t K) {
  const QGemmFn fn = find_qkernel(t, isa).gemm;
  const size_t row_bytes = static_cast<size_t>(*qtype_row_bytes(t, static_cast<uint64_t>(K)));
  const int N = std::max(16, static_cast<int>((size_t{256} << 10) / row_bytes / 16 * 16));
  uint8_t* w = weight_pool();
  prepare_rows(isa, t, K, w, row_bytes, static_cast<size_t>(N));
  const Acts a = make_acts(isa, 1, K);
  std::vector<float> y(static_cast<size_t>(N));
  const double peak_before = int8_peak_gops(isa, 1);
  for (auto _ : state) {
    fn(1, 0, N, N, K, a.view, w, row_bytes, y.data(), static_cast<size_t>(N));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double peak = std::max(peak_before, int8_peak_gops(isa, 1));  // after the timed loop
  const double ops = 2.0 * static_cast<double>(N) * static_cast<double>(K);
  state.counters["GBps"] = benchmark::Counter(static_cast<double>(row_bytes) * N * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_peak"] =
      benchmark::Counter(ops * 1e-9 / peak * 100.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GOPS"] = peak;
}

void bm_gemm(benchmark::State& state, Isa isa, QType t, int M, int N, int64_t K, int threads) {
  const QGemmFn fn = find_qkernel(t, isa).gemm;
  const size_t row_bytes = static_cast<size_t>(*qtype_row_bytes(t, static_cast<uint64_t>(K)));
  uint8_t* w = weight_pool();
  prepare_rows(isa, t, K, w, row_bytes, static_cast<size_t>(N));
  const Acts a = make_acts(isa, M, K);
  std::vector<float> y(static_cast<size_t>(M) * N);
  const double peak_before = int8_peak_gops(isa, threads);
  for (auto _ : state) {
    run_split(fn, threads, M, N, K, a.view, w, row_bytes, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double ops = 2.0 * M * static_cast<double>(N) * static_cast<double>(K);
  const double peak = std::max(peak_before, int8_peak_gops(isa, threads));  // after the timed loop
  state.counters["GOPS"] = benchmark::Counter(ops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_peak"] = benchmark::Counter(ops * 1e-9 / peak * 100.0, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GOPS"] = peak;
}

// Registered at static initialization so the benchmarks run whichever main the binary links.
const bool kRegistered = [] {
  struct NK {
    int n;
    int64_t k;
  };
  const NK gemv_shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {32000, 4096},
                            {2048, 2048}, {2048, 5632},  {256, 2048}};
  const int gemm_ms[] = {16, 128, 512};
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (!isa_available(isa)) continue;
    for (const QTypeInfo& info : kQTypes) {
      if (info.kind == QKind::kFloat) continue;
      const std::string prefix = std::string(isa_name(isa)) + "/" + std::string(info.name);
      benchmark::RegisterBenchmark(("qgemv_cached/" + prefix + "/K:4096").c_str(), bm_gemv_cached, isa, info.type,
                                   int64_t{4096})
          ->Unit(benchmark::kMicrosecond)
          ->MinTime(0.2)
          ->UseRealTime();
      for (int threads : {1, 2}) {
        for (const NK& s : gemv_shapes) {
          const std::string name = "qgemv/" + prefix + "/N:" + std::to_string(s.n) + "/K:" + std::to_string(s.k) +
                                   "/threads:" + std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(), bm_gemv, isa, info.type, s.n, s.k, threads)
              ->Unit(benchmark::kMicrosecond)
              ->MinTime(0.3)
              ->UseRealTime();
        }
        for (int m : gemm_ms) {
          const std::string name = "qgemm/" + prefix + "/M:" + std::to_string(m) + "/N:4096/K:4096/threads:" +
                                   std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(), bm_gemm, isa, info.type, m, 4096, int64_t{4096}, threads)
              ->Unit(benchmark::kMillisecond)
              ->MinTime(0.3)
              ->UseRealTime();
        }
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace mxlm
