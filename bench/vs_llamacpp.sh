#!/usr/bin/env bash
# quant against llama.cpp on the same weights, side by side in one run (issue: performance):
#   eval: `quant eval --protocol llamacpp` vs `llama-perplexity` on the same F32 weights and text
#         (quant's GGUF export of the model), 2 threads; tokens/s and the ratio.
#   quantize: `quant rtn` (whole model, w4 g32 sym, gptq format) and `quant gguf -t q4_0` vs
#         `llama-quantize F32.gguf Q4_0`; wall time and the ratios.
# Usage: bench/vs_llamacpp.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [MODEL_DIR TEXT CTX]
# LLAMA_BUILD_DIR is a llama.cpp CMake build (bin/llama-perplexity, bin/llama-quantize).
set -euo pipefail
cd "$(dirname "$0")/.."
LL=${1:?usage: bench/vs_llamacpp.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [MODEL TEXT CTX]}
BUILD=${2:-build}; Q=$BUILD/quant
MODEL=${3:-../shared/models/wiki-llama-5m}; TEXT=${4:-../shared/data/wikitext2-test.txt}; CTX=${5:-1024}
T=2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
secs() { /usr/bin/time -f %e -o "$tmp/t" "$@" > "$tmp/out" 2> "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }; cat "$tmp/t"; }

"$Q" -q gguf "$MODEL" -t f32 -o "$tmp/f32.gguf" > /dev/null
q_eval=$(secs "$Q" -q -t $T eval "$MODEL" --text "$TEXT" --ctx "$CTX" --protocol llamacpp --json)
q_json=$(cat "$tmp/out")
l_eval=$(secs "$LL/bin/llama-perplexity" -m "$tmp/f32.gguf" -f "$TEXT" -c "$CTX" -b "$CTX" -t $T)
l_ppl=$(grep -o 'Final estimate: PPL = [0-9.]*' "$tmp/err" | awk '{print $NF}')
q_rtn=$(secs "$Q" -q -t $T rtn "$MODEL" -b 4 -g 32 --sym -o "$tmp/rtn" --skip-unsupported)
q_gguf=$(secs "$Q" -q -t $T gguf "$MODEL" -t q4_0 -o "$tmp/q4_0.gguf")
l_q=$(secs "$LL/bin/llama-quantize" "$tmp/f32.gguf" "$tmp/ref-q4_0.gguf" Q4_0 $T)
python3 - "$q_json" "$q_eval" "$l_eval" "$l_ppl" "$q_rtn" "$q_gguf" "$l_q" <<'PY'
import json, sys
j = json.loads(sys.argv[1]); qe, le, lp, qr, qg, lq = map(float, sys.argv[2:])
tokens = j["windows"] * j["ctx"]  # processed (both tools run every token of every window)
print(f"eval ({j['windows']} windows of {j['ctx']}): quant {tokens/qe:,.0f} tok/s (ppl {j['ppl']:.4f}), "
      f"llama-perplexity {tokens/le:,.0f} tok/s (ppl {lp:.4f}); quant/llama speed ratio {le/qe:.2f}")
print(f"quantize: quant rtn {qr:.2f} s, quant gguf q4_0 {qg:.2f} s, llama-quantize Q4_0 {lq:.2f} s; "
      f"llama/quant time ratio rtn {lq/qr:.2f}, gguf {lq/qg:.2f}")
PY
