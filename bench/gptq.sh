#!/usr/bin/env bash
# GPTQ wall time and peak RSS (GNU time) for stories260K, wiki-llama-5m and a synthetic
# 1.1B-shaped model (generated once into $SYNTH, default /tmp/quant-synth-1.1b, 2.2 GB).
# Usage: bench/gptq.sh [BUILD_DIR] [--skip-1.1b]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; Q=$BUILD/quant; S=../shared
SYNTH=${SYNTH:-/tmp/quant-synth-1.1b}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run() {  # label, then the quant arguments
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$Q" -q "$@" -o "$tmp/out" --force > /dev/null
  read -r secs kb < "$tmp/time"
  printf '%-44s %9.1f s %9.0f MB\n' "$label" "$secs" "$((kb / 1024))"
}
printf '%-44s %11s %12s\n' run wall peak_rss
if [ -d "$S/models" ]; then
  run "stories260K w4g32 act-order 32x256" gptq "$S/models/stories260K" --calib "$S/data/tinystories-calibration.txt" --nsamples 32 --seqlen 256 --group-size 32 --act-order --format dense
  run "wiki-llama-5m w4g128 128x512" gptq "$S/models/wiki-llama-5m" --calib "$S/data/c4-calibration.txt" --nsamples 128 --seqlen 512
fi
if [ "${2:-}" != "--skip-1.1b" ]; then
  [ -f "$SYNTH/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$SYNTH" --preset llama-1.1b
  run "synthetic 1.1B w4g128 128x128" -v gptq "$SYNTH" --calib-tokens "$SYNTH/calib.ids" --nsamples 128 --seqlen 128
fi
