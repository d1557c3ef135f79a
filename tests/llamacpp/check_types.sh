#!/usr/bin/env bash
# quant's GGUF block types checked against llama-quantize itself: for every type quant writes,
# without and with an imatrix made by llama-imatrix (legacy .dat), `quant gguf MODEL -t T` must
# hold the same tensors, types and bytes as `llama-quantize` of quant's F32 GGUF of the model,
# and llama-perplexity must load quant's file. Also: the .dat and its GGUF twin (quant imatrix
# --in-file) give the same export.
# Usage: tests/llamacpp/check_types.sh [LLAMA_BUILD_DIR [QUANT_BUILD_DIR [MODEL TEXT]]]
# LLAMA_BUILD_DIR (default $QUANT_LLAMA_CPP_BUILD) needs bin/llama-quantize, bin/llama-imatrix and
# bin/llama-perplexity. ctest runs this as LlamaCpp.TypesByteIdentical. Exit 0: all identical;
# 1: a difference or a failure; 77: skipped (no llama.cpp build or no ../shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
LL=${1:-${QUANT_LLAMA_CPP_BUILD:-}}
Q=${2:-build}/quant
MODEL=${3:-../shared/models/wiki-llama-5m}; TEXT=${4:-../shared/data/c4-calibration.txt}
for b in llama-quantize llama-imatrix llama-perplexity; do
  if [ -z "$LL" ] || [ ! -x "$LL/bin/$b" ]; then echo "skipped: no llama.cpp build with bin/$b (set QUANT_LLAMA_CPP_BUILD)"; exit 77; fi
done
if [ ! -d "$MODEL" ] || [ ! -f "$TEXT" ]; then echo "skipped: $MODEL or $TEXT is absent (../shared)"; exit 77; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c 30000 "$TEXT" > "$tmp/small.txt"
"$Q" -q gguf "$MODEL" -t f32 -o "$tmp/f32.gguf" > /dev/null
"$LL/bin/llama-imatrix" -m "$tmp/f32.gguf" -f "$TEXT" -o "$tmp/im.dat" -c 512 --chunks 10 -t 2 --no-ppl > /dev/null 2>&1
"$Q" -q imatrix --in-file "$tmp/im.dat" -o "$tmp/im.gguf"
cat > "$tmp/cmp.py" <<'PY'
import struct, sys
def tensors(path):
    b = open(path, "rb").read(); p = 0
    def u(f):
        nonlocal p; v = struct.unpack_from(f, b, p)[0]; p += struct.calcsize(f); return v
    def s():
        nonlocal p; n = u("<Q"); v = b[p:p + n]; p += n; return v
    def val(t):
        if t == 8: return s()
        if t == 9:
            et = u("<I"); return [val(et) for _ in range(u("<Q"))]
        return u({0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[t])
    assert b[:4] == b"GGUF"; p = 4; u("<I"); nt = u("<Q"); nk = u("<Q"); align = 32
    for _ in range(nk):
        k = s(); v = val(u("<I"))
        if k == b"general.alignment": align = v
    infos = []
    for _ in range(nt):
        n = s(); nd = u("<I"); ne = [u("<Q") for _ in range(nd)]; infos.append((n, ne, u("<I"), u("<Q")))
    start = (p + align - 1) // align * align
    out = {}
    for i, (n, ne, t, off) in enumerate(infos):
        end = infos[i + 1][3] if i + 1 < len(infos) else len(b) - start
        out[n] = (t, ne, b[start + off:start + end])
    return out
a, c = tensors(sys.argv[1]), tensors(sys.argv[2])
bad = [n for n in a if n not in c or a[n][:2] != c[n][:2] or a[n][2].rstrip(b"\0") != c[n][2].rstrip(b"\0")]
bad += [n for n in c if n not in a]
print(f"{sys.argv[3]:<26} {len(a)} tensors, {len(bad)} differ {bad[:3]}")
sys.exit(1 if bad else 0)
PY
status=0
for t in f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q2_k_s q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs; do
  for im in "" "--imatrix $tmp/im.dat"; do
    [ "$t" = q2_k_s ] && [ -z "$im" ] && continue  # both tools refuse it without an imatrix
    rm -f "$tmp/q.gguf" "$tmp/l.gguf"
    "$Q" -q gguf "$MODEL" -t $t $im -o "$tmp/q.gguf" > /dev/null
    "$LL/bin/llama-quantize" $im "$tmp/f32.gguf" "$tmp/l.gguf" $t 2 > /dev/null 2>&1
    python3 "$tmp/cmp.py" "$tmp/q.gguf" "$tmp/l.gguf" "$t${im:+ imatrix}" || status=1
    "$LL/bin/llama-perplexity" -m "$tmp/q.gguf" -f "$tmp/small.txt" -c 512 -t 2 > /dev/null 2>&1 || { echo "$t: llama-perplexity failed to run quant's file"; status=1; }
  done
done
"$Q" -q gguf "$MODEL" -t q4_k_m --imatrix "$tmp/im.gguf" -o "$tmp/twin.gguf" > /dev/null
"$Q" -q gguf "$MODEL" -t q4_k_m --imatrix "$tmp/im.dat" -o "$tmp/dat.gguf" > /dev/null
cmp -s "$tmp/twin.gguf" "$tmp/dat.gguf" && echo ".dat and its GGUF twin: same bytes" || { echo ".dat and its GGUF twin differ"; status=1; }
exit $status
