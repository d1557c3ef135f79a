#!/usr/bin/env bash
# The main job: quantize the bundled default model (models/wiki-llama-5m) to 4 bits and print
# its perplexity before and after. Evaluation text: ../shared/data/wikitext2-test.txt when
# present (first 200,000 bytes), else the GPL-3 text every Debian system ships.
set -euo pipefail
cd "$(dirname "$0")/.."
QUANT=${1:-build/quant}
MODEL=models/wiki-llama-5m
OUT=${OUT:-out/wiki-llama-5m-rtn-w4g128}
if [ -f ../shared/data/wikitext2-test.txt ]; then
  TEXT=../shared/data/wikitext2-test.txt
  LIMIT=(--limit-bytes 200000)
else
  TEXT=/usr/share/common-licenses/GPL-3
  LIMIT=()
fi
mkdir -p out
echo "== quantizing $MODEL (RTN, 4 bits, group 128, gptq format) -> $OUT" >&2
"$QUANT" rtn "$MODEL" -o "$OUT" --bits 4 --group-size 128 --force > /dev/null
echo "== evaluating on $TEXT ${LIMIT[*]}" >&2
fp=$("$QUANT" -q eval "$MODEL" --text "$TEXT" --ctx 1024 "${LIMIT[@]}" --json)
q=$("$QUANT" -q eval "$OUT" --text "$TEXT" --ctx 1024 "${LIMIT[@]}" --base "$MODEL" --json)
python3 - "$fp" "$q" <<'PY' 2>/dev/null || { echo "FP16: $fp"; echo "RTN w4g128: $q"; }
import json, sys
fp, q = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'model':<28}{'perplexity':>12}{'KL vs FP16':>14}{'top-1 agree':>14}")
print(f"{'wiki-llama-5m FP16':<28}{fp['ppl']:>12.3f}{'':>14}{'':>14}")
print(f"{'RTN w4 g128 (gptq format)':<28}{q['ppl']:>12.3f}{q['kl_mean']:>14.5f}{q['top1_agreement']:>14.4f}")
PY
