#!/usr/bin/env bash
# W8A8 and FP8 (compressed-tensors int-/float-quantized) against FP16, with and without
# SmoothQuant, on stories260K (tinystories-eval.txt, ctx 256; calibration 32 × 256 tokens of
# tinystories-calibration.txt) and wiki-llama-5m (the first 300 KB of wikitext2-test, ctx 512;
# calibration 32 × 256 tokens of c4-calibration.txt). Each cell: perplexity / KL to the float
# model (quant eval --base, with the checkpoint's activation quantization simulated).
# The issue's bars: SmoothQuant W8A8 below plain W8A8; FP8 W8A8 within 1 % of FP16.
# FP8 is llm-compressor's static preset (per-tensor weights, a calibrated input_scale per linear);
# --static-activations gives W8A8 the same static per-tensor input scales.
# Usage: bench/w8a8.sh [BUILD_DIR] (needs ../shared; ~20 minutes on 2 cores; ALPHAS="0.5 auto" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
Q=$BUILD/quant; S=../shared; T=${THREADS:-2}
ALPHAS=${ALPHAS:-"0.5 auto"}
[ -d "$S/models/wiki-llama-5m" ] || { echo "skipped: ../shared/models is absent"; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c 300000 "$S/data/wikitext2-test.txt" > "$tmp/wiki.txt"
score() {  # ppl/KL of $1 against $2 on $3 at ctx $4
  "$Q" -q -t "$T" eval "$1" --text "$3" --ctx "$4" --json --base "$2" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.4f/%.6f" % (j["ppl"], j["kl_mean"]))'
}
for spec in "stories260K $S/data/tinystories-eval.txt 256 $S/data/tinystories-calibration.txt" \
            "wiki-llama-5m $tmp/wiki.txt 512 $S/data/c4-calibration.txt"; do
  read -r name text ctx calib <<< "$spec"
  m="$S/models/$name"
  cal="--calib $calib --nsamples 32 --seqlen 256"
  float=$("$Q" -q -t "$T" eval "$m" --text "$text" --ctx "$ctx" --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')
  echo "== $name: FP16/FP32 perplexity $float"
  runs=("rtn --scheme W8A16" "rtn --scheme W8A8" "gptq --scheme W8A8 $cal" "rtn --scheme W8A16_FP8" "rtn --scheme FP8_DYNAMIC" "rtn --scheme FP8 $cal")
  for a in $ALPHAS; do
    for maps in norms all; do
      runs+=("rtn --scheme W8A8 --smooth $a --smooth-mappings $maps $cal" "gptq --scheme W8A8 --smooth $a --smooth-mappings $maps $cal")
    done
  done
  # Static per-tensor activation scales (SmoothQuant's own setting), without and with smoothing.
  for m in rtn gptq; do
    runs+=("$m --scheme W8A8 --static-activations $cal")
    for a in $ALPHAS; do runs+=("$m --scheme W8A8 --static-activations --smooth $a $cal"); done
  done
  for a in $ALPHAS; do runs+=("rtn --scheme FP8 --smooth $a $cal"); done
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086
    "$Q" -q -t "$T" $run "$m" -o "$tmp/out" --force > /dev/null
    printf '%-55s %s\n' "${run%% --calib*}" "$(score "$tmp/out" "$m" "$text" "$ctx")"
    rm -rf "$tmp/out"
  done
done
