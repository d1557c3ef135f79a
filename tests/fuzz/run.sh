#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each over its seed corpus plus what it finds.
#   bash tests/fuzz/run.sh BUILD_DIR [SECONDS=60] [TARGET...]
# BUILD_DIR is a QUANT_FUZZ=ON build (docs/fuzzing.md). The growing corpus is kept in
# BUILD_DIR/fuzz-corpus/<target> (seeded from tests/fuzz/corpus/<target>), crash inputs in
# BUILD_DIR/fuzz-artifacts/. Prints executions and corpus size per target; exits 1 if any
# target crashed, leaked, hung or ran out of memory. Budgets: 5 s and 2 GB per input, inputs up to
# 256 KiB (deep nesting and 10k-entry headers fit: a quadratic or unbounded parse fails them).
set -uo pipefail
build=${1:?usage: run.sh BUILD_DIR [SECONDS] [TARGET...]}
secs=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors index config tokenizer gguf recipe)
status=0
mkdir -p "$build/fuzz-artifacts"
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz: $bin is missing (configure with -DQUANT_FUZZ=ON)" >&2; exit 2; }
  corpus="$build/fuzz-corpus/$t"
  mkdir -p "$corpus"
  cp -n "$here/corpus/$t/"* "$corpus/" 2>/dev/null || true
  log="$build/fuzz-artifacts/$t.log"
  "$bin" "$corpus" -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 -max_len=262144 \
    -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t-" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$')
  echo "fuzz_$t: exit $rc, ${execs:-?} executions in ${secs}s, corpus $(ls "$corpus" | wc -l) files"
  if [ $rc -ne 0 ]; then
    status=1
    grep -E 'ERROR|runtime error|internal error|unexpected exception|Test unit written' "$log" | head -5
  fi
done
exit $status
