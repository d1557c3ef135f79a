#!/usr/bin/env bash
# quant eval against llama-perplexity on the synthetic 1.1B-shaped F16 model (issue 25, item 4),
# side by side in one run, 2 threads: the same F16 weights (quant's GGUF export, -t f16), the same
# text and tokenizer, CHUNKS windows of CTX tokens (llama.cpp's protocol on both sides). Prints
# tokens/s, peak RSS and the speed ratio. Run it on an idle machine.
# Usage: bench/vs_llamacpp_1b.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [CHUNKS] [CTX]
set -euo pipefail
cd "$(dirname "$0")/.."
LL=${1:?usage: bench/vs_llamacpp_1b.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [CHUNKS] [CTX]}
BUILD=${2:-build}; Q=$BUILD/quant; CHUNKS=${3:-4}; CTX=${4:-512}; T=2
SYNTH=${SYNTH_TOK:-/tmp/quant-synth-1.1b-tok}  # with tokenizer.model (the generator writes one)
TEXT=../shared/data/wikitext2-test.txt
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
[ -f "$SYNTH/tokenizer.model" ] || "$BUILD/bench/quant_make_synthetic" "$SYNTH" --preset llama-1.1b >&2
[ -f "$SYNTH.f16.gguf" ] || "$Q" -q gguf "$SYNTH" -t f16 -o "$SYNTH.f16.gguf" > /dev/null
head -c 400000 "$TEXT" > "$tmp/text.txt"
measure() { /usr/bin/time -f "%e %M" -o "$tmp/t" "$@" > "$tmp/out" 2> "$tmp/err" || { tail "$tmp/err" >&2; exit 1; }; cat "$tmp/t"; }
read -r q_s q_kb <<< "$(measure "$Q" -q -t $T eval "$SYNTH" --text "$tmp/text.txt" --ctx "$CTX" --protocol llamacpp --max-windows "$CHUNKS" --json)"
q_ppl=$(grep -o '"ppl": [0-9.]*' "$tmp/out" | awk '{print $2}')
read -r l_s l_kb <<< "$(measure "$LL/bin/llama-perplexity" -m "$SYNTH.f16.gguf" -f "$tmp/text.txt" -c "$CTX" -b "$CTX" --chunks "$CHUNKS" -t $T)"
l_ppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$tmp/err" | awk '{print $NF}')
tokens=$((CHUNKS * CTX))
awk -v n="$tokens" -v qs="$q_s" -v ls="$l_s" -v qk="$q_kb" -v lk="$l_kb" -v qp="$q_ppl" -v lp="$l_ppl" -v c="$CHUNKS" -v x="$CTX" 'BEGIN {
  printf "1.1B F16, %d windows of %d (wall time includes loading):\n", c, x
  printf "  quant eval        %7.1f s  %6.1f tok/s  peak %5d MB  ppl %s\n", qs, n / qs, qk / 1024, qp
  printf "  llama-perplexity  %7.1f s  %6.1f tok/s  peak %5d MB  ppl %s\n", ls, n / ls, lk / 1024, lp
  printf "  quant/llama speed ratio %.2f\n", ls / qs }'
