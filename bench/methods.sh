#!/usr/bin/env bash
# Wall time and peak RSS of every quantization method, side by side in one run, on the shared
# models (stories260K, wiki-llama-5m) and a synthetic 1.1B-shaped model (generated once into
# $SYNTH, default /tmp/quant-synth-1.1b, 2.2 GB of float16 weights), 2 threads.
# Usage: bench/methods.sh [BUILD_DIR] [--skip-1.1b | --only-1.1b] [METHOD...]
#   METHOD: rtn gptq awq kmeans (default: all). Prints one row per run: wall seconds, peak RSS
#   from GNU time, and the summary JSON's own peak_rss_mb.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; shift || true
Q=$BUILD/quant; S=../shared; T=${THREADS:-2}
SYNTH=${SYNTH:-/tmp/quant-synth-1.1b}
small=1; big=1
case "${1:-}" in --skip-1.1b) big=0; shift ;; --only-1.1b) small=0; shift ;; esac
methods=("$@"); [ ${#methods[@]} -gt 0 ] || methods=(rtn gptq awq kmeans)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run() {  # label, model, then the method and its arguments
  local label=$1 model=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$tmp/time" "$Q" -q -t "$T" "$@" "$model" -o "$tmp/out" --force --json > "$tmp/json"
  read -r secs kb < "$tmp/time"
  local own; own=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_rss_bytes"] >> 20)' "$tmp/json")
  printf '%-44s %9.1f s %9d MB %9s MB\n' "$label" "$secs" "$((kb / 1024))" "$own"
  rm -rf "$tmp/out"
}
has() { local m; for m in "${methods[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
bench_model() {  # name, dir, group size, then the calibration arguments
  local name=$1 dir=$2 g=$3; shift 3
  local fmt=(); [ "$g" = 128 ] || fmt=(--format dense)  # stories260K's 172 features pack nowhere
  has rtn && run "$name rtn w4g$g" "$dir" rtn -g "$g" "${fmt[@]}"
  has gptq && run "$name gptq w4g$g" "$dir" gptq -g "$g" "${fmt[@]}" "$@"
  has awq && run "$name awq w4g$g" "$dir" awq -g "$g" "${fmt[@]}" "$@"
  has kmeans && run "$name kmeans w4 (exact, hessian)" "$dir" kmeans "${fmt[@]}" "$@"
  return 0
}
printf '%-44s %11s %12s %12s\n' run wall peak_rss summary_rss
if [ $small = 1 ] && [ -d "$S/models" ]; then
  bench_model "stories260K" "$S/models/stories260K" 32 --calib "$S/data/tinystories-calibration.txt" --nsamples 32 --seqlen 256
  bench_model "wiki-llama-5m" "$S/models/wiki-llama-5m" 128 --calib "$S/data/c4-calibration.txt" --nsamples 128 --seqlen 512
fi
if [ $big = 1 ]; then
  [ -f "$SYNTH/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$SYNTH" --preset llama-1.1b >&2
  bench_model "synthetic 1.1B (128 x 128 calib)" "$SYNTH" 128 --calib-tokens "$SYNTH/calib.ids" --nsamples 128 --seqlen 128
fi
