#!/usr/bin/env bash
# Configures and builds mxlm (Release) into ${MXLM_BUILD_DIR:-build}.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MXLM_BUILD_DIR:-build}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build "$build" -j "$(nproc)"
