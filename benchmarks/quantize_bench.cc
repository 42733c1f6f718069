// The mixed-precision quantizer on tinymix-26m (issue 9's time target: calibrate + allocate +
// encode in under 60 s on 2 threads): one whole `--bpw 4.08` run per iteration, with each
// stage's seconds and the memory read bandwidth measured right after as counters. Run it alone (`--benchmark_filter=AutoQuant`): it takes about a
// minute on this 2-core machine.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "model/file_util.h"
#include "model/import.h"
#include "mxlm/autoquant.h"
#include "mxlm/bench.h"

namespace mxlm {
namespace {

std::string shared_dir() {
  const char* env = std::getenv("MXLM_SHARED");
  return env ? env : MXLM_SHARED_DEFAULT;
}

void BM_AutoQuantTinymix(benchmark::State& state) {
  const ImportedModel m = import_model(shared_dir() + "/models/tinymix-26m");
  AutoQuantOptions o;
  o.calib_text = read_file(shared_dir() + "/text/tinymix-calib.txt");
  o.bpw = 4.08;
  o.threads = static_cast<int>(state.range(0));
  const std::string out = (std::filesystem::temp_directory_path() / "mxlm_bench_autoquant.mxlm").string();
  AutoQuantResult r;
  for (auto _ : state) r = auto_quantize(m, out, o);
  std::filesystem::remove(out);
  state.counters["calibrate_s"] = r.seconds_calibrate;
  state.counters["candidates_s"] = r.seconds_candidates;
  state.counters["kl_s"] = r.seconds_kl;
  state.counters["select_s"] = r.seconds_select;
  state.counters["write_s"] = r.seconds_write;
  state.counters["bpw"] = r.bpw;
  // This machine's read bandwidth swings by 2x from hour to hour: measured in the same run.
  state.counters["read_bw_GBps"] = measure_read_bandwidth(o.threads) / 1e9;
}
BENCHMARK(BM_AutoQuantTinymix)->Arg(2)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

}  // namespace
}  // namespace mxlm
