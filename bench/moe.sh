#!/usr/bin/env bash
# Mixtral-8x7B-shaped benchmark (issue 22): wall time and peak RSS of `quant rtn` and `quant gptq`
# on a synthetic checkpoint with Mixtral's layer shapes (hidden 4096, 8 experts of ffn 14336,
# top 2, 32 heads / 8 KV heads, vocab 32000; F16, random weights), a few layers of it. Per-layer
# time is the wall time over the sparse layers (the head, embedding and the writing included).
# The size to compare the peak with: one expert's float32 working set is 3 × 4096 × 14336 × 4 B
# = 705 MB, a whole sparse layer's 5.6 GB.
# Usage: bench/moe.sh [BUILD_DIR]   env: SYNTH_MOE (checkpoint dir, generated once; default
# /tmp/quant-synth-mixtral), LAYERS (2), NSAMPLES (4), SEQLEN (256), THREADS (2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; Q=$BUILD/quant; T=${THREADS:-2}
DIR=${SYNTH_MOE:-/tmp/quant-synth-mixtral}; L=${LAYERS:-2}; N=${NSAMPLES:-4}; S=${SEQLEN:-256}
[ -f "$DIR/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$DIR" --preset mixtral-8x7b --layers "$L" >&2
layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$DIR/config.json")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
printf '%-44s %9s %11s %11s\n' run wall per_layer peak_rss
run() {  # label, quant arguments (the output goes to $tmp)
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$Q" -q -t "$T" "$@" -o "$tmp/out" --force > /dev/null
  read -r secs kb < "$tmp/time"
  printf '%-44s %8.1fs %10.1fs %8d MB\n' "$label" "$secs" "$(awk -v s="$secs" -v l="$layers" 'BEGIN {print s / l}')" "$((kb / 1024))"
  rm -rf "$tmp/out"
}
run "rtn w4 g128 ($layers sparse layers)" rtn "$DIR" -b 4 -g 128
run "gptq w4 g128, $N x $S tokens" gptq "$DIR" -b 4 -g 128 --calib-tokens "$DIR/calib.ids" --nsamples "$N" --seqlen "$S"
