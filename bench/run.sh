#!/usr/bin/env bash
# End-to-end benchmarks, measured side by side in one run: `quant eval` tokens/s for the shared
# models at 1 and 2 threads, and RTN wall time. Needs ../shared. Usage: bench/run.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
Q=$BUILD/quant
S=../shared
[ -d "$S/models" ] || { echo "bench: ../shared is absent; nothing to measure" >&2; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
printf '%-16s %-8s %8s %12s %10s\n' model threads windows tokens/s ppl
for spec in "stories260K tinystories-eval.txt 256 0" "wiki-llama-5m wikitext2-test.txt 1024 200000"; do
  set -- $spec
  limit=(); [ "$4" != 0 ] && limit=(--limit-bytes "$4")
  for t in 1 2; do
    j=$("$Q" -q -t $t eval "$S/models/$1" --text "$S/data/$2" --ctx "$3" "${limit[@]}" --json)
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print("%-16s %-8s %8d %12.0f %10.4f" % (sys.argv[2], sys.argv[3], j["windows"], j["tokens_per_s"], j["ppl"]))' "$j" "$1" "$t"
  done
done
echo
printf '%-16s %-8s %10s\n' model threads rtn_seconds
for m in stories260K wiki-llama-5m; do
  for t in 1 2; do
    s=$( { /usr/bin/time -f %e "$Q" -q -t $t rtn "$S/models/$m" -o "$tmp/$m-$t" --format dense >/dev/null; } 2>&1 )
    printf '%-16s %-8s %10s\n' "$m" "$t" "$s"
  done
done
