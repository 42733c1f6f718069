#!/usr/bin/env bash
# One command from a fresh machine to a tested build: installs the dependencies, builds and
# runs the whole suite (GoogleTest through ctest), then the same suite's other builds: the NEON
# kernels under qemu, ASan+UBSan and TSan builds (scripts/test_sanitize.sh) and a bounded run
# of every parser fuzzer (scripts/fuzz.sh). Data comes from ${MXLM_SHARED:-../shared}.
#   MXLM_FUZZ_SECONDS  seconds per fuzz target (default 10; 0 skips the fuzzers)
#   MXLM_SANITIZE=0    skips the sanitizer builds
# Arguments are passed to ctest (e.g. -R Tinymix).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
stage() { echo "test.sh: $1 ($((SECONDS - t0)) s so far)" >&2; }
bash scripts/setup.sh
bash scripts/build.sh
build=${MXLM_BUILD_DIR:-build}
export MXLM_SHARED=${MXLM_SHARED:-$(cd .. && pwd)/shared}
# ctest runs one test process per core and each runs OpenMP threads: idle threads must sleep,
# not spin, or they steal the core another test needs (a 2-thread greedy run took 29 s instead
# of 0.1 s next to a busy neighbour).
stage "build done; the suite"
(cd "$build" && OMP_WAIT_POLICY=passive ctest --output-on-failure -j "$(nproc)" "$@")
# NEON kernels: cross-compiled for aarch64 and run under qemu (with and without dotprod).
stage "NEON suite under qemu"
bash scripts/test_neon.sh
if [ "${MXLM_SANITIZE:-1}" != 0 ]; then
  stage "sanitizer builds"
  bash scripts/test_sanitize.sh
fi
fuzz_seconds=${MXLM_FUZZ_SECONDS:-10}
if [ "$fuzz_seconds" != 0 ]; then
  stage "fuzzers, ${fuzz_seconds} s each"
  bash scripts/fuzz.sh "$fuzz_seconds"
fi
stage "all passed"
