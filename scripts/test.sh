#!/usr/bin/env bash
# One command from a fresh machine to a tested build: installs the dependencies, builds and
# runs the whole suite (GoogleTest through ctest). Data comes from ${MXLM_SHARED:-../shared}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build=${MXLM_BUILD_DIR:-build}
export MXLM_SHARED=${MXLM_SHARED:-$(cd .. && pwd)/shared}
(cd "$build" && ctest --output-on-failure -j "$(nproc)" "$@")
# NEON kernels: cross-compiled for aarch64 and run under qemu (with and without dotprod).
bash scripts/test_neon.sh
