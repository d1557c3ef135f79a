#!/usr/bin/env bash
# The Kubernetes Indexed Job of docs/cluster.md, as written: the container command and
# QUANT_SHARDS are read from examples/kubernetes/quant-indexed-job.yaml and run once per index
# (JOB_COMPLETION_INDEX 0…completions−1, side by side, as the pods would), then index 1 again (a
# retried pod: every job of it is "done"), then the merge. The outputs must equal the same recipe
# run without sharding, byte for byte. No Kubernetes needed; skipped (77) without ../shared.
set -uo pipefail
QUANT=$(readlink -f "$1")
SHARED=${2:-$(dirname "$0")/../../../shared}
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=$(readlink -f "$SHARED/models/stories260K" 2>/dev/null) || true
CALIB=$(readlink -f "$SHARED/data/tinystories-calibration.txt" 2>/dev/null) || true
[ -f "$MODEL/config.json" ] && [ -f "$CALIB" ] || { echo "SKIP: ../shared/models/stories260K is absent"; exit 77; }
W=$(mktemp -d /tmp/quant-indexed.XXXXXX)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; cat "$W"/pod-*.log 2>/dev/null | tail -30; exit 1; }
# shellcheck source=common.sh
source "$HERE/common.sh"

MANIFEST=$HERE/../../examples/kubernetes/quant-indexed-job.yaml
cmd=$(sed -n 's/^ *command: \["sh", "-c", "\(.*\)"\]$/\1/p' "$MANIFEST")
completions=$(sed -n 's/^ *completions: \([0-9]*\).*/\1/p' "$MANIFEST")
shards=$(grep -A1 'name: QUANT_SHARDS' "$MANIFEST" | sed -n 's/^ *value: "\([0-9]*\)"/\1/p')
[ -n "$cmd" ] && [ -n "$completions" ] && [ "$shards" = "$completions" ] || fail "cannot read the command, completions and QUANT_SHARDS from $MANIFEST"

recipe "$W/plain"; recipe "$W/pods"
"$QUANT" -q -t 1 run "$W/plain/jobs.json" > /dev/null || fail "the recipe failed without sharding"
export PATH="$(dirname "$QUANT"):$PATH"
cd "$W/pods" || exit 1
pids=()
for ((i = 0; i < completions; i++)); do
  JOB_COMPLETION_INDEX=$i QUANT_SHARDS=$shards sh -c "$cmd" > "$W/pod-$i.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a pod failed"; done
grep -q "shard 3/4 (JOB_COMPLETION_INDEX=3 of QUANT_SHARDS=4)" "$W/pod-3.log" || fail "pod 3 did not say which shard it ran"
JOB_COMPLETION_INDEX=1 QUANT_SHARDS=$shards sh -c "$cmd" > "$W/pod-1-retry.log" 2>&1 || fail "the retried pod failed"
grep -q "complete from an earlier run of this job; not run again" "$W/pod-1-retry.log" || fail "the retried pod ran its job again"
same_outputs "$W/pods"
"$QUANT" -q run jobs.json --report-merge reports --json > "$W/merged.json" || fail "--report-merge failed"
[ "$(grep -c '"status": "\(ok\|done\)"' "$W/merged.json")" = 4 ] || { cat "$W/merged.json"; fail "the merged report does not list four succeeded jobs"; }
echo "indexed job: $completions pods as in the manifest, a retried pod, outputs byte-identical, merged report lists all four"
