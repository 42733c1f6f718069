#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) in build-fuzz with clang, ASan and UBSan, and runs each
# for a bounded time on a COPY of its committed seed corpus (the committed corpus never grows).
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#   MXLM_FUZZ_RUNS=1000000 scripts/fuzz.sh 1200 gguf   (stop after that many executions)
#
# Prints per target the executions, exec/s and whether it found anything; exits non-zero when
# any target crashed, leaked, timed out or ran out of memory (the reproducer is kept under
# build-fuzz/findings/<target>/). Needs what scripts/setup.sh installs (clang, libclang-rt,
# libomp); runs without network or stdin, as root or not, one target at a time (-jobs would
# compete with CI's other work). Data comes from ${MXLM_SHARED:-../shared}.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all_targets=(mxlm gguf safetensors hf_json llama2c llama2c_tokenizer spm prompt chat_template)
[ $# -gt 0 ] && targets=("$@") || targets=("${all_targets[@]}")
build=build-fuzz
export MXLM_SHARED=${MXLM_SHARED:-$(cd .. && pwd)/shared}
jobs=${MXLM_FUZZ_BUILD_JOBS:-2}

# The parsers never run a SIMD kernel: only the reference kernels are compiled (MXLM_ISAS=none;
# AVX-512's qgemm_x86.cc alone took 376 s to compile with these flags).
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=Fuzz -DCMAKE_C_FLAGS_FUZZ="-O1 -g" -DCMAKE_CXX_FLAGS_FUZZ="-O1 -g" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DMXLM_FUZZ=ON -DMXLM_ISAS=none -DMXLM_WITH_ONEDNN=OFF -DMXLM_BUILD_TESTS=OFF -DMXLM_BUILD_BENCHMARKS=OFF >/dev/null
ninja -C "$build" -j "$jobs" $(printf 'fuzz/fuzz_%s ' "${targets[@]}") >/dev/null

# Leaks, UB and ASan reports are fatal; a single input may take 10 s and 2 GiB at most.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
failed=0
printf '%-18s %12s %10s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  work="$build/fuzz-run/$t"
  findings="$build/findings/$t"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$findings"
  cp fuzz/corpus/"$t"/* "$work/corpus/" 2>/dev/null || true
  # The chat templates' seeds are the real templates the tests render.
  if [ "$t" = chat_template ]; then cp tests/data/chat_templates/*.jinja "$work/corpus/"; fi
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  log="$work/log.txt"
  rc=0
  runs=()
  [ -n "${MXLM_FUZZ_RUNS:-}" ] && runs=(-runs="$MXLM_FUZZ_RUNS")
  "$build/fuzz/fuzz_$t" "$work/corpus" "${dict[@]}" "${runs[@]}" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$findings/" </dev/null >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ "$rc" -eq 0 ]; then
    result="ok"
  else
    failed=1
    artifact=$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //' || true)
    result="FOUND (exit $rc) ${artifact:-see $log}"
    grep -E "ERROR:|SUMMARY:|runtime error|fuzz invariant|terminate called|what\(\)" "$log" | head -5 | sed 's/^/    /' >&2 || true
  fi
  printf '%-18s %12s %10s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
exit "$failed"
