#!/usr/bin/env bash
# Cross-compiles the kernels and their tests for AArch64 (NEON) and runs them under qemu-user,
# twice: on an emulated CPU with the dot-product instructions (-cpu max: the SDOT kernels) and on
# a Cortex-A57 without them (the SMULL/SADALP kernels). Exits non-zero when a build or a test
# fails. Installs nothing: scripts/setup.sh provides g++-aarch64-linux-gnu, qemu-user and the
# GoogleTest sources (googletest).
#
#   scripts/test_neon.sh                 # build into ${MXLM_NEON_BUILD_DIR:-build-aarch64}, test
#   GTEST_FILTER='*Neon*' scripts/test_neon.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MXLM_NEON_BUILD_DIR:-build-aarch64}
jobs=${MXLM_JOBS:-$(nproc)}

missing=()
for tool in aarch64-linux-gnu-g++ aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -d /usr/aarch64-linux-gnu/lib ] || missing+=("/usr/aarch64-linux-gnu (libc6-dev-arm64-cross)")
[ -f /usr/src/googletest/CMakeLists.txt ] || missing+=("/usr/src/googletest (googletest)")
if ((${#missing[@]})); then
  echo "test_neon: missing ${missing[*]}; run scripts/setup.sh (packages g++-aarch64-linux-gnu qemu-user googletest)" >&2
  exit 2
fi

if [ ! -f "$build/CMakeCache.txt" ]; then
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" -DMXLM_KERNELS_ONLY=ON -DMXLM_WITH_ONEDNN=OFF
fi
cmake --build "$build" -j "$jobs" --target mxlm_kernel_tests

# CPU name for qemu, expected HWCAP_ASIMDDP (checked by NeonRegistry in tests/neon_kernels_test.cc).
runs=("max 1" "cortex-a57 0")
status=0
summary=()
for run in "${runs[@]}"; do
  read -r cpu dotprod <<<"$run"
  log="$build/test-neon-$cpu.log"
  echo "== NEON kernel tests under qemu-aarch64 -cpu $cpu (dotprod expected: $dotprod)"
  rc=0
  QEMU_CPU=$cpu MXLM_EXPECT_DOTPROD=$dotprod ctest --test-dir "$build" --output-on-failure -V >"$log" 2>&1 || rc=$?
  # The gtest summary (ctest -V prefixes test output with "<test number>: ").
  sed -E 's/^[0-9]+: //' "$log" |
    grep -E '^\[   INFO   \]|^\[==========\] .* ran|^\[  PASSED  \]|^\[  SKIPPED \] [0-9]+ test|^\[  FAILED  \]|Failure$|tests passed|tests failed|Exception' || true
  echo "   full log: $log"
  if ((rc != 0)); then
    status=1
    summary+=("-cpu $cpu: FAILED (ctest exit $rc)")
  else
    summary+=("-cpu $cpu: passed")
  fi
done
echo "== NEON summary"
printf '   %s\n' "${summary[@]}"
exit "$status"
