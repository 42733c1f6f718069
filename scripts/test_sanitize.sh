#!/usr/bin/env bash
# The test suite under sanitizers (issue 8), each build in its own directory:
#
#   build-asan  g++, -fsanitize=address,undefined,float-cast-overflow, -O1, libgomp and oneDNN
#               (the shipped configuration): every test but the slow quality repeats below.
#   build-tsan  clang++, -fsanitize=thread, -O1, LLVM libomp with its TSan-aware "archer" tool,
#               oneDNN off: the tests that run our OpenMP regions. g++'s libgomp is not
#               TSan-aware (its barriers would be reported as races), oneDNN is built against
#               libgomp, and two OpenMP runtimes must never share a process — hence this split.
#
# Usage: scripts/test_sanitize.sh [asan|tsan|all]   (default: all)
# Env: MXLM_SHARED (data), MXLM_JOBS (build jobs, default nproc), MXLM_SANITIZE_SHARDS (test
# processes run side by side, default 2), MXLM_ASAN_FILTER / MXLM_TSAN_FILTER (replace the gtest
# filters below). Both builds use only `mxlm_tests` and `mxlm` (the CLI tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
jobs=${MXLM_JOBS:-$(nproc)}
shards=${MXLM_SANITIZE_SHARDS:-2}
export MXLM_SHARED=${MXLM_SHARED:-$(cd .. && pwd)/shared}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

# Left out of the ASan run (each repeats, for quality, code that other tests run under ASan):
#  *Perplexity*        Tinymix.PerplexityProtocol and the 17 Formats/TinymixQuantized tests:
#                      64 windows x 512 tokens each (PerplexityProtocol alone ran 18 min under
#                      ASan on the shared 2-core build machine);
#                      the same forward pass runs in Tinymix.*, Eval.*, Prefill.*, and every
#                      format's kernels in All/QGemm*Test.
#  *TinymixRepacked*   seven formats each quantizing tinymix-26m and running it through the
#                      scalar reference kernels; repacking itself is run by the TSan job and
#                      the repacking kernels by All/QGemmTest.*.
#  *PredictedKlRanks*  the sensitivity model on tinymix-26m (116 KL runs of 1024 tokens); the
#                      same calibration, encoding and KL code runs in AutoQuant.* on stories260K.
#  AutoQuant.MoreBits*, .LandsWithinHalf*, .SizeBudget*, .LargeModels*: whole mixed-precision
#                      quantizations of stories260K (233, 75, 73 and 53 s under ASan on an AVX2
#                      host: 434 of the 1570 s the ASan tests took), repeating the calibration,
#                      candidates, KL, allocation and writing that the other nine AutoQuant.*
#                      tests and Cli.QuantizeBpw*, Cli.Sweep* and Cli.Interrupted* run under
#                      ASan; what they add (several budgets, --size, thread counts, the large-
#                      model defaults) is arithmetic on the same buffers. MoreBits runs under TSan.
asan_filter=${MXLM_ASAN_FILTER:-"-*Perplexity*:*TinymixRepacked*:*PredictedKlRanks*:AutoQuant.MoreBits*:AutoQuant.LandsWithinHalf*:AutoQuant.SizeBudget*:AutoQuant.LargeModels*"}
# The TSan run: the tests that run our OpenMP regions with 2 or more threads (contexts with the
# default thread count, omp_get_num_procs(), or the CLI's -t 2): prefill and decode threads in
# runtime/model.cc (Tinymix.*, Stories260K, MixedPrecision, Cli.ThreadCount*), the parallel
# quantizer in model/import.cc (Cli.QuantizeInspectRun, TinymixRepacked) and repacking at bind
# (TinymixRepacked's nu3_g32 on AVX-512, WeightMemory.* in place on AVX2 and AVX-512: the same
# code path for every format), and the mixed-precision quantizer's
# calibration (Gram products over row chunks), GPTQ (row chunks, triangular-inverse chunks) and
# its whole pipeline at 1 and 2 threads (Calibration.Statistics*, EncodeDeterminism.*,
# AutoQuant.MoreBits*). Not here: the kernel tests (one
# thread: they split [n0, n1) by hand), Eval.* and Prefill.* (contexts pinned to one thread),
# synth and bench (the CLI tests run them with -t 1); all of them run under ASan.
tsan_filter=${MXLM_TSAN_FILTER:-"ThreadPool.*:CApi.FourThreads*:CoreBudget.*:WeightMemory.*:Tinymix.LogitsMatchFloat64Reference:Tinymix.Greedy64MatchesReference:MixedPrecision.*:Sources/Stories260K.*:Cli.ThreadCount*:Cli.QuantizeInspectRun:Formats/TinymixRepacked.*/nu3_g32:Calibration.StatisticsEqual*:EncodeDeterminism.*:AutoQuant.MoreBits*"}

# The SIMD kernel sets this CPU can run (kernels/CMakeLists.txt, MXLM_ISAS): the tests skip the
# others, so compiling them under sanitizers would only cost time (AVX-512's qgemm_x86.cc alone
# took 177 s of the ASan build). The AVX-512 set needs what kernels/cpu_features.cc checks.
host_isas() {
  local flags f
  flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
  case "$(uname -m)" in
    x86_64)
      for f in avx512f avx512cd avx512dq avx512bw avx512vl avx512_vnni avx512vbmi avx512_bf16 gfni; do
        [[ " $flags " == *" $f "* ]] || { echo avx2; return; }
      done
      echo "avx2;avx512" ;;
    *) echo all ;;
  esac
}

configure_build() {  # dir compiler-c compiler-cxx cmake-args...
  local dir=$1 cc=$2 cxx=$3
  shift 3
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 \
      -DMXLM_BUILD_BENCHMARKS=OFF "-DMXLM_ISAS=$(host_isas)" "$@" >/dev/null
  fi
  local t0=$SECONDS
  cmake --build "$dir" -j "$jobs" --target mxlm_tests mxlm
  echo "sanitize: built $dir in $((SECONDS - t0)) s" >&2
}

# Runs the gtest binary as $shards processes (GTEST_SHARD_INDEX), each logging to $dir/sanitize-N.log.
run_shards() {  # dir name filter
  local dir=$1 name=$2 filter=$3 t0=$SECONDS pids=() rc=0
  for ((i = 0; i < shards; ++i)); do
    GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i \
      "$dir/tests/mxlm_tests" --gtest_filter="$filter" --gtest_brief=1 >"$dir/sanitize-$i.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 0; i < shards; ++i)); do
    if ! wait "${pids[$i]}"; then
      rc=1
      echo "sanitize: $name shard $i FAILED ($dir/sanitize-$i.log):" >&2
      # What failed, wherever it sits in the log (skip notices can bury it): gtest's failure
      # blocks and failed tests, and a sanitizer's report, then the log's end.
      grep -n -A12 -E '^\[  FAILED  \]|: Failure$|^==[0-9]+==ERROR|runtime error:|^WARNING: ThreadSanitizer' \
        "$dir/sanitize-$i.log" | head -n 200 >&2 || true
      echo "sanitize: ... the log's last lines:" >&2
      tail -n 30 "$dir/sanitize-$i.log" >&2
    fi
  done
  local n
  n=$(cat "$dir"/sanitize-*.log | grep -Eo '^\[==========\] [0-9]+ tests? from' | awk '{s += $2} END {print s + 0}')
  echo "sanitize: $name ran $n tests in $((SECONDS - t0)) s: $([ $rc = 0 ] && echo passed || echo FAILED)" >&2
  return $rc
}

status=0
if [ "$what" = all ] || [ "$what" = asan ]; then
  configure_build build-asan gcc g++ -DMXLM_SANITIZE=address,undefined,float-cast-overflow
  # Two test processes share 2 cores: OpenMP threads must sleep, not spin, when idle.
  OMP_WAIT_POLICY=passive \
  ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:strict_string_checks=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    run_shards build-asan "ASan+UBSan" "$asan_filter" || status=1
fi
if [ "$what" = all ] || [ "$what" = tsan ]; then
  configure_build build-tsan clang clang++ -DMXLM_SANITIZE=thread -DMXLM_WITH_ONEDNN=OFF
  # libomp itself is not instrumented: archer (an OMPT tool shipped with libomp) tells TSan about
  # its parallel regions, barriers, tasks and locks; ignore_noninstrumented_modules keeps TSan
  # from reporting libomp's own internal accesses (archer's documented setting). Races between
  # our threads on our data are still reported (a planted race in an omp for is).
  archer=$(cd "$(clang++ -print-resource-dir)/../.." && pwd)/libarcher.so
  [ -f "$archer" ] || { echo "sanitize: $archer missing (libomp-14-dev)" >&2; exit 1; }
  if [ "$(nproc)" -lt 2 ]; then
    echo "sanitize: warning: 1 CPU, the TSan run's OpenMP regions get one thread" >&2
  fi
  export OMP_TOOL_LIBRARIES=$archer OMP_NUM_THREADS=$(( $(nproc) > 2 ? $(nproc) : 2 )) KMP_BLOCKTIME=0
  export TSAN_OPTIONS="halt_on_error=1:abort_on_error=0:second_deadlock_stack=1:ignore_noninstrumented_modules=1"
  # The setup must report a planted race in an omp for and nothing on correct OpenMP code
  # (without archer it reports libomp's barriers): scripts/sanitizers/tsan_omp_check.cc.
  clang++ -O1 -g1 -fsanitize=thread -fopenmp scripts/sanitizers/tsan_omp_check.cc -o build-tsan/tsan_omp_check
  if ! build-tsan/tsan_omp_check >build-tsan/tsan_omp_check.log 2>&1; then
    cat build-tsan/tsan_omp_check.log >&2
    echo "sanitize: TSan reports races in correct OpenMP code: archer is not active" >&2
    exit 1
  fi
  if build-tsan/tsan_omp_check race >build-tsan/tsan_omp_check.log 2>&1 || ! grep -q "data race" build-tsan/tsan_omp_check.log; then
    cat build-tsan/tsan_omp_check.log >&2
    echo "sanitize: TSan missed the planted OpenMP race" >&2
    exit 1
  fi
  run_shards build-tsan "TSan" "$tsan_filter" || status=1
fi
exit $status
