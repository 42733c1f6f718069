#!/usr/bin/env bash
# One command from a fresh machine to generated text: installs the dependencies, builds,
# converts the default model (../shared/models/tinymix-26m) and continues a prompt.
#   bash scripts/demo.sh ["prompt"] [extra mxlm run options]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${MXLM_SHARED:-../shared}
prompt=${1:-Once upon a time}
shift || true
bash scripts/setup.sh
bash scripts/build.sh
build=${MXLM_BUILD_DIR:-build}
model="$build/tinymix-26m.mxlm"
if [ ! -f "$model" ]; then
  "$build/mxlm" convert "$shared/models/tinymix-26m" -o "$model" --dtype bf16
fi
"$build/mxlm" inspect "$model" --verify | tail -n 2
"$build/mxlm" run -m "$model" -p "$prompt" -n 96 --temp 0.7 --seed 1 "$@"
