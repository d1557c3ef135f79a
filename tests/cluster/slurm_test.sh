#!/usr/bin/env bash
# quant run on a real Slurm (issue 26): a single-node cluster started for the test runs a 4-job
# recipe (stories260K: rtn, gptq, awq, kmeans) as a 2-task job array; every output must equal the
# same recipe run without Slurm, byte for byte, and the merged shard reports must list all four.
# Then one array task is cancelled mid-job (GPTQ stalled after journaling layer 1, by the
# QUANT_FAULT_STALL_AFTER_LAYER hook) and requeued: it resumes from the journal and its outputs
# are still byte-identical.
# The batch script is examples/slurm/quant-array.sbatch, as documented.
# Usage: slurm_test.sh QUANT_BINARY [SHARED_DIR]. Exit 77 (skipped, with the reason) without
# root, without slurm-wlm/munge, or without ../shared.
set -uo pipefail
QUANT=$(readlink -f "$1")
SHARED=${2:-$(dirname "$0")/../../../shared}
HERE=$(cd "$(dirname "$0")" && pwd)
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "the Slurm test starts munged, slurmctld and slurmd and needs root"
for t in munged slurmctld slurmd sbatch scontrol squeue sinfo; do
  command -v "$t" >/dev/null || skip "$t is missing: install Debian's slurm-wlm and munge (scripts/install-deps.sh does)"
done
MODEL=$(readlink -f "$SHARED/models/stories260K" 2>/dev/null) || true
CALIB=$(readlink -f "$SHARED/data/tinystories-calibration.txt" 2>/dev/null) || true
[ -f "$MODEL/config.json" ] && [ -f "$CALIB" ] || skip "../shared/models/stories260K is absent"

W=$(mktemp -d /tmp/quant-slurm.XXXXXX)
# shellcheck source=cluster.sh
source "$HERE/cluster.sh"
cleanup() { cluster_stop; rm -rf "$W"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$W"/*/logs/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done; exit 1; }

# shellcheck source=common.sh
source "$HERE/common.sh"

recipe "$W/plain"; recipe "$W/array"; recipe "$W/kill"
"$QUANT" -q -t 1 run "$W/plain/jobs.json" > /dev/null || fail "the recipe failed without Slurm"

cluster_start "$W/cluster" || fail "could not start the single-node Slurm cluster"
# The documented example itself (docs/cluster.md), with the array and cores scaled to this node.
EXAMPLE=$(readlink -f "$HERE/../../examples/slurm/quant-array.sbatch")
export PATH="$(dirname "$QUANT"):$PATH"
[ "$(command -v quant)" = "$QUANT" ] || fail "the quant under test is not first on PATH"

# 1. A 2-task array (sbatch --wait), then the merge job of the example (afterany).
cd "$W/array" && mkdir -p logs
job=$(timeout 150 sbatch --wait --parsable --array=0-1 -c 1 "$EXAMPLE") || fail "sbatch --wait of the example failed (or a task did)"
timeout 150 sbatch --wait --dependency=afterany:"$job" -o merge.out \
  --wrap "quant run jobs.json --report-merge reports --junit merged.xml" > /dev/null || { cat merge.out; fail "the merge job failed"; }
grep -q "shard 0/2 (SLURM_ARRAY_TASK_ID=0" "logs/quant-${job}_0.out" || fail "task 0 did not say which shard it ran"
same_outputs "$W/array"
grep -q 'tests="4" failures="0"' merged.xml || { cat merge.out; fail "the merged JUnit report does not list four succeeded jobs"; }
"$QUANT" -q run jobs.json --report-merge reports --json > "$W/merged.json" || fail "--report-merge failed"
[ "$(grep -c '"status": "ok"' "$W/merged.json")" = 4 ] || { cat "$W/merged.json"; fail "the merged report does not list four succeeded jobs"; }
echo "array: 4 jobs in 2 tasks, outputs byte-identical, merged report lists all four"

# 2. Cancel the task running GPTQ after its layer 1 is journaled, then requeue it.
cd "$W/kill" && mkdir -p logs
gptq_shard=$(quant -q run jobs.json --list --shard 0/2 | awk '$2 == "gptq" {split($1, s, "/"); print s[1]}')
job=$(sbatch --parsable --array=0-1 -c 1 --export=ALL,QUANT_FAULT_STALL_AFTER_LAYER=1:gptq "$EXAMPLE") || fail "sbatch failed"
for _ in $(seq 1 300); do
  grep -qs '"layers_done": 2' out/gptq.resume/state.json && break
  sleep 0.2
done
grep -qs '"layers_done": 2' out/gptq.resume/state.json || fail "GPTQ never journaled layer 1"
task=${job}_${gptq_shard}
state() { scontrol show job "$task" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
wait_state() {  # SECONDS STATE...: until the task is in one of the states
  local i s want
  for i in $(seq 1 $(($1 * 5))); do
    s=$(state)
    for want in "${@:2}"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.2
  done
  echo "task $task is $s after $1 s, not ${*:2}"
  return 1
}
scancel "$task" || fail "scancel failed"
wait_state 30 CANCELLED || fail "scancel did not cancel the task"
[ -d "$W/kill/out/gptq" ] && fail "the cancelled GPTQ job left an output"
[ -d "$W/kill/out/gptq.resume" ] || fail "the cancelled GPTQ job lost its journal"
# Requeue once the node has let go of the cancelled instance (its slurmstepd gone): a task
# started while the old one is still being torn down can fail to launch (exit 1, no output);
# such a launch failure is requeued again, up to three times.
jobid=$(scontrol show job "$task" | grep -o '^JobId=[0-9]*' | cut -d= -f2)
for _ in $(seq 1 50); do pgrep -f "slurmstepd: \[${jobid}\." > /dev/null || break; sleep 0.2; done
for attempt in 1 2 3; do
  scontrol requeue "$task" || fail "scontrol requeue failed"
  wait_state 10 PENDING RUNNING COMPLETED FAILED || fail "the requeued task is not pending"
  # Slurm holds a requeued job back (BeginTime about two minutes ahead); let it start now (again
  # while it stays pending: an update that lands as the requeue settles can be lost).
  for _ in $(seq 1 18); do
    [ "$(state)" = PENDING ] && scontrol update JobId="$task" StartTime=now > /dev/null 2>&1
    wait_state 5 COMPLETED FAILED > /dev/null && break
  done
  [ "$(state)" = FAILED ] || break
  echo "requeued task failed to launch (attempt $attempt); requeueing again"
  sleep 2
done
[ "$(state)" = COMPLETED ] || { scontrol show job "$task"; fail "the requeued task did not complete within 90 s"; }
for _ in $(seq 1 150); do
  squeue -h -j "$job" 2>/dev/null | grep -q . || break
  sleep 0.2
done
grep -q "resuming .*gptq after layer 1" "logs/quant-${job}_${gptq_shard}.out" || fail "the requeued task did not resume GPTQ from its journal"
same_outputs "$W/kill"
"$QUANT" -q run jobs.json --report-merge reports --json > "$W/merged-kill.json" || fail "--report-merge after the requeue failed"
echo "cancel + requeue: GPTQ resumed after layer 1, outputs byte-identical"
