#!/usr/bin/env bash
# Runs a fixed set of quantizing commands (every method and format, choices spelled out) on the
# models in ../shared and prints one line per output file: sha256, command tag, file name.
# Two runs of this script (before and after a refactor) must print the same lines: that is the
# "every quantized tensor byte-identical" check of a structural change.
#
#   bash scripts/output-hashes.sh build/quant /tmp/hashes-work > before.txt
#
# quant_summary.json (timings, peak RSS) is left out; everything else is hashed whole.
set -uo pipefail
Q=${1:?usage: output-hashes.sh QUANT_BINARY WORKDIR}
W=${2:?usage: output-hashes.sh QUANT_BINARY WORKDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
S=$here/../shared
[ -d "$S/models" ] || { echo "output-hashes: ../shared is absent; nothing to compare" >&2; exit 0; }
rm -rf "$W" && mkdir -p "$W"
ST=$S/models/stories260K
WL=$S/models/wiki-llama-5m
TS="--calib $S/data/tinystories-calibration.txt --nsamples 8 --seqlen 128"
C4="--calib $S/data/c4-calibration.txt --nsamples 8 --seqlen 128"

run() {  # tag, then the quant arguments (output given by the tag)
  local tag=$1; shift
  local out=$W/$tag
  "$Q" --threads 2 "$@" -o "$out" >"$W/$tag.stdout" 2>"$W/$tag.stderr"
  echo "exit=$?" >"$W/$tag.exit"
}

run rtn-w-gptq rtn "$WL" --bits 4 --group-size 128 --format gptq
run rtn-w-gptq-sym rtn "$WL" --bits 3 --group-size 64 --format gptq --sym
run rtn-w-awq rtn "$WL" --bits 4 --group-size 128 --format awq
run rtn-w-dense rtn "$WL" --bits 3 --group-size -1 --format dense --mse
run rtn-w-rules rtn "$WL" --bits 4 --group-size 128 --format gptq --rule 'down_proj=bits:8' --rule 'layers\.0\.=skip'
run rtn-s-skip rtn "$ST" --bits 4 --group-size 32 --format gptq --skip-unsupported
run rtn-s-dense rtn "$ST" --bits 4 --group-size 32 --format dense --sym
run rtn-w-bpw rtn "$WL" --bits 4 --group-size 128 --format gptq --target-bpw 3.5 --candidate-bits 2,3,4,8 --sensitivity hessian
run gptq-w-act gptq "$WL" $C4 --bits 4 --group-size 128 --format gptq --act-order
run gptq-w-sym gptq "$WL" $C4 --bits 4 --group-size 128 --format gptq --sym --static-groups
run gptq-s-dense gptq "$ST" $TS --bits 3 --group-size 32 --format dense
run gptq-s-nts gptq "$ST" $TS --bits 4 --group-size -1 --format dense --no-true-sequential --mse
run gptq-w-awqfmt gptq "$WL" $C4 --bits 4 --group-size 128 --format awq
run gptq-w-bpw gptq "$WL" $C4 --bits 4 --group-size 128 --format gptq --target-bpw 3.25 --candidate-bits 2,3,4,8 --sensitivity hessian
run awq-w awq "$WL" $C4 --bits 4 --group-size 128 --format awq
run awq-w-gptqfmt awq "$WL" $C4 --bits 3 --group-size 64 --format gptq --sym
run awq-s-dense awq "$ST" $TS --bits 4 --group-size 32 --format dense
run awq-s-auto awq "$ST" $TS --bits 4 --group-size 32
run awq-w-export awq "$WL" $C4 --bits 4 --group-size 128 --export-compatible
run kmeans-w-lut kmeans "$WL" $C4 --bits 3 --group-size -1 --format lut
run kmeans-w-none kmeans "$WL" --bits 3 --group-size 128 --format lut --outliers 0.005
run kmeans-s-dense kmeans "$ST" $TS --bits 3 --group-size -1 --format dense --solver lloyd
run gguf-w-q8 gguf "$WL" -t q8_0
run gguf-w-q4km gguf "$WL" -t q4_k_m --calib "$S/data/c4-calibration.txt" --nsamples 8 --seqlen 128
run gguf-w-q40 gguf "$WL" -t q4_0 --from-awq --calib "$S/data/c4-calibration.txt" --nsamples 8 --seqlen 128
run dry-w-bpw gptq "$WL" $C4 --bits 4 --group-size 128 --target-bpw 3.5 --candidate-bits 2,3,4,8 --sensitivity hessian --dry-run --json
run dry-s-rules rtn "$ST" --bits 4 --group-size 32 --format dense --rule 'w2=bits:8' --dry-run --json

cd "$W"
for f in *.exit; do echo "$(cat "$f") ${f%.exit}"; done
find . -type f ! -name quant_summary.json ! -name '*.stderr' ! -name '*.exit' | sort | while read -r f; do
  echo "$(sha256sum "$f" | cut -c1-16) $f"
done
