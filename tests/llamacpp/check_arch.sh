#!/usr/bin/env bash
# quant's GGUF export checked in llama.cpp itself (issue: loader contract, GGUF rope scaling and
# qwen2): for each variant of a real model — the model as is, with Llama-3.1 RoPE scaling
# (rope_freqs.weight), with linear RoPE scaling (rope.scaling.* keys), and converted to qwen2
# (q/k/v biases, NEOX RoPE), and rebuilt as a 26-layer gemma2 (Gemma norms, soft-capping, sliding
# window, GELU), in Phi-3's fused layout (qkv_proj, gate_up_proj, sliding window), and as the MoE
# families mixtral / qwen2moe / qwen3moe (4 experts built from the dense MLP, random routers) —
# `llama-perplexity` on quant's F32 GGUF must agree with
# `quant eval --protocol llamacpp` on the HF checkpoint within 0.1 %, and so must `quant eval`
# of the GGUF file itself (GGUF input: config, tokenizer and weights read back from the file).
# Usage: tests/llamacpp/check_arch.sh [LLAMA_BUILD_DIR [QUANT_BUILD_DIR [MODEL TEXT]]]
# LLAMA_BUILD_DIR (default $QUANT_LLAMA_CPP_BUILD) is a llama.cpp CMake build with
# bin/llama-perplexity, built outside the repo. ctest runs this as LlamaCpp.ArchitecturesAgree.
# Exit 0: all agree; 1: a variant disagrees or fails to load; 77: skipped (no llama.cpp build or
# no ../shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
LL=${1:-${QUANT_LLAMA_CPP_BUILD:-}}; [ -n "$LL" ] || LL=${QUANT_LLAMA_CPP_BUILD:-}
Q=${2:-build}/quant
MODEL=${3:-../shared/models/wiki-llama-5m}; TEXT=${4:-../shared/data/wikitext2-test.txt}
if [ -z "$LL" ] || [ ! -x "$LL/bin/llama-perplexity" ]; then
  echo "skipped: no llama.cpp build (set QUANT_LLAMA_CPP_BUILD to a build with bin/llama-perplexity)"; exit 77
fi
if [ ! -d "$MODEL" ] || [ ! -f "$TEXT" ]; then echo "skipped: $MODEL or $TEXT is absent (../shared)"; exit 77; fi
CTX=512; T=2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c 120000 "$TEXT" > "$tmp/text.txt"

variant() {  # NAME PYTHON-EDIT: copies MODEL to $tmp/NAME and applies the edit to config/tensors
  local dir="$tmp/$1"; cp -r "$MODEL" "$dir"
  python3 tools/reference/make_variant.py "$dir" "$2"
}

status=0
printf '%-8s %12s %12s %16s %9s %9s\n' variant quant quant-gguf llama-perplexity rel.diff gguf.diff
for v in ${QUANT_ARCH_VARIANTS:-base llama3 linear yarn qwen2 qwen3 gemma2 gemma3 fused fusedlong mixtral qwen2moe qwen3moe}; do
  variant "$v" "$v"
  "$Q" -q gguf "$tmp/$v" -t f32 -o "$tmp/$v.gguf" > /dev/null
  q=$("$Q" -q -t $T eval "$tmp/$v" --text "$tmp/text.txt" --ctx $CTX --protocol llamacpp --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  g=$("$Q" -q -t $T eval "$tmp/$v.gguf" --text "$tmp/text.txt" --ctx $CTX --protocol llamacpp --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if ! "$LL/bin/llama-perplexity" -m "$tmp/$v.gguf" -f "$tmp/text.txt" -c $CTX -b $CTX -t $T > "$tmp/$v.out" 2> "$tmp/$v.err"; then
    echo "$v: llama-perplexity failed:"; tail -5 "$tmp/$v.err"; status=1; continue
  fi
  l=$(grep -o 'Final estimate: PPL = [0-9.]*' "$tmp/$v.err" | awk '{print $NF}')
  python3 - "$v" "$q" "$l" "$g" <<'PY' || status=1
import sys
v, q, l, g = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
d, dg = abs(q - l) / l, abs(g - l) / l
print(f"{v:<8} {q:12.4f} {g:12.4f} {l:16.4f} {100*d:8.4f}% {100*dg:8.4f}%")
sys.exit(0 if d <= 0.001 and dg <= 0.001 else 1)
PY
done
exit $status
