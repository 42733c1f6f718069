#!/usr/bin/env bash
# Quantizes tinymix-26m to every format and measures perplexity with `mxlm ppl` (the protocol
# of ../shared/README.md, 64 windows of 512). Prints a markdown table (the one in README.md).
#   bash scripts/ppl_table.sh [formats...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MXLM_BUILD_DIR:-build}
shared=${MXLM_SHARED:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
formats=("$@")
if [ ${#formats[@]} -eq 0 ]; then
  formats=(bf16 q8_g32 q8_g64 q8_g128 q6_g32 q6k_g32 q5_g32 q5k_g32 q4a_g32 nu4_g32 q4_g32 q4a_g64 q4ak_g32 q4k_g32 q4_g64 q4_g128 q3a_g32 nu3_g32 q3_g32 q3ak_g32 q3k_g32 q2a_g32 q2_g32 q2a_g64 q2ak_g32 q2k_g32)
fi
ref=$(python3 -c "import json;print(json.load(open('$shared/ref/tinymix-26m/reference.json'))['val_ppl_fp32']['ppl'])" 2>/dev/null || echo 9.9919)
echo "| format | bits per weight | file size | ppl | vs f32 ($ref) |"
echo "|---|---|---|---|---|"
for f in "${formats[@]}"; do
  m="$tmp/$f.mxlm"
  if [ "$f" = bf16 ] || [ "$f" = f32 ] || [ "$f" = f16 ]; then
    "$build/mxlm" convert "$shared/models/tinymix-26m" -o "$m" --dtype "$f" -q 2>/dev/null
  else
    "$build/mxlm" quantize "$shared/models/tinymix-26m" -o "$m" --qtype "$f" -q 2>/dev/null
  fi
  bpw=$("$build/mxlm" inspect "$m" | sed -n 's/.*of weights, \([0-9.]*\) bits per weight/\1/p')
  size=$(du -h "$m" | cut -f1)
  ppl=$("$build/mxlm" ppl -m "$m" -f "$shared/text/tinymix-val.txt" --windows 64 --json 2>/dev/null |
        python3 -c "import json,sys;print('%.4f'%json.load(sys.stdin)['ppl'])")
  delta=$(python3 -c "print('%+.2f %%' % (100*($ppl/$ref-1)))")
  echo "| $f | $bpw | $size | $ppl | $delta |"
done
