#!/usr/bin/env bash
# Peak memory of `quant eval` against the checkpoint's size on disk (issue 25: ≤ 1.2×), on the
# synthetic 1.1B- and 7B-shaped F16 models (generated once into $SYNTH / $SYNTH7; the 7B one is
# 13.5 GB), a few windows each, 2 threads. Prints the wall time, peak RSS (GNU time), the
# checkpoint's bytes and their ratio.
# Usage: bench/eval_memory.sh [BUILD_DIR] [--skip-7b]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; shift || true
Q=$BUILD/quant; T=${THREADS:-2}
SYNTH=${SYNTH:-/tmp/quant-synth-1.1b}; SYNTH7=${SYNTH7:-/tmp/quant-synth-7b}
big7=1; [ "${1:-}" = "--skip-7b" ] && big7=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ids() {  # DIR: token ids for the model's vocabulary (the generator writes calib.ids)
  [ -f "$1/calib.ids" ] || { echo "no $1/calib.ids" >&2; exit 1; }
  echo "$1/calib.ids"
}
run() {  # label, model dir, ctx, windows
  local label=$1 dir=$2 ctx=$3 windows=$4 bytes
  bytes=$(cat "$dir"/*.safetensors | wc -c)
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$Q" -q -t "$T" eval "$dir" --tokens "$(ids "$dir")" --ctx "$ctx" --max-windows "$windows" --json > "$tmp/json"
  read -r secs kb < "$tmp/time"
  printf '%-40s %8.1f s %8d MB %8d MB %6.2fx\n' "$label" "$secs" "$((kb / 1024))" "$((bytes / 1048576))" \
    "$(awk -v a="$kb" -v b="$bytes" 'BEGIN {print a * 1024 / b}')"
}
printf '%-40s %10s %11s %11s %7s\n' run wall peak_rss checkpoint ratio
[ -f "$SYNTH/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$SYNTH" --preset llama-1.1b >&2
run "synthetic 1.1B F16, 4 x 512 tokens" "$SYNTH" 512 4
if [ $big7 = 1 ]; then
  [ -f "$SYNTH7/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$SYNTH7" --preset llama-7b >&2
  run "synthetic 7B F16, 2 x 128 tokens" "$SYNTH7" 128 2
fi
