#!/usr/bin/env bash
# GGUF export speed and memory against llama-quantize, side by side in one run (issue: GGUF
# parity): on the synthetic 1.1B-shaped model (F16), `quant gguf -t T` from the safetensors
# checkpoint vs `llama-quantize F16.gguf T` (the same F16 weights as quant's F16 GGUF), 2 threads,
# for each type; wall time, peak RSS and the ratios.
# Usage: bench/gguf_export.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [MODEL_DIR] [TYPES]
set -euo pipefail
cd "$(dirname "$0")/.."
LL=${1:?usage: bench/gguf_export.sh LLAMA_BUILD_DIR [QUANT_BUILD_DIR] [MODEL_DIR] [TYPES]}
BUILD=${2:-build}; Q=$BUILD/quant
MODEL=${3:-${TMPDIR:-/tmp}/quant-synth-1.1b}
TYPES=${4:-"q4_k_m iq4_xs"}
T=2
[ -f "$MODEL/config.json" ] || "$BUILD/bench/quant_make_synthetic" "$MODEL" --preset llama-1.1b >&2
# The synthetic model has no tokenizer; GGUF needs one: a byte-level vocabulary of the model's
# size (the 256 byte symbols, then fillers), no merges.
[ -f "$MODEL/tokenizer.json" ] || python3 - "$MODEL" <<'PY'
import json, sys
d = sys.argv[1]
n = json.load(open(f"{d}/config.json"))["vocab_size"]
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs, k = bs[:], 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + k); k += 1
vocab = {chr(c): i for i, c in enumerate(cs)}
for i in range(len(vocab), n): vocab[f"<filler{i}>"] = i
json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": []},
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}, open(f"{d}/tokenizer.json", "w"))
PY
tmp=$(mktemp -d "${TMPDIR:-/tmp}/quant-gguf-bench.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
# "seconds peak_kib" of a command
run() { /usr/bin/time -f "%e %M" -o "$tmp/t" "$@" > /dev/null 2> "$tmp/err" || { tail -5 "$tmp/err" >&2; exit 1; }; cat "$tmp/t"; }
"$Q" -q gguf "$MODEL" -t f16 -o "$tmp/f16.gguf"
for t in $TYPES; do
  read -r qs qm < <(run "$Q" -q -t $T gguf "$MODEL" -t "$t" -o "$tmp/q-$t.gguf")
  read -r ls lm < <(run "$LL/bin/llama-quantize" "$tmp/f16.gguf" "$tmp/l-$t.gguf" "$t" $T)
  python3 -c "import sys; qs,qm,ls,lm=map(float,sys.argv[1:]); print(f'$t: quant {qs:.1f} s, peak {qm/1024:.0f} MiB; llama-quantize {ls:.1f} s, peak {lm/1024:.0f} MiB; llama/quant time ratio {ls/qs:.2f}')" "$qs" "$qm" "$ls" "$lm"
  rm -f "$tmp/q-$t.gguf" "$tmp/l-$t.gguf"
done
