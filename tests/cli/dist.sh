#!/usr/bin/env bash
# clip-finetune --nproc-per-node on the CPU (Gloo): a killed worker ends the whole run with an error
# naming its rank within 60 s; SIGINT (Ctrl-C) stops every worker with a resumable checkpoint (exit
# 130); --resume with another world size keeps the global batch and says so. (Exactness against a
# single process: tests/test_dist.cpp.)
# Usage: dist.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2
demo=$src/data/shapes-zh
source "$(dirname "$0")/checks.bash" dist

data=$tmp/data
mkdir -p "$data"
head -n 12 "$demo/train_imgs.tsv" >"$data/train_imgs.tsv"
ids=$(cut -f1 "$data/train_imgs.tsv" | paste -sd'|')
grep -E "\"image_ids\": \[($ids)\]" "$demo/train_texts.jsonl" >"$data/train_texts.jsonl"
cp "$demo/vocab.txt" "$data/"
common=(--data "$data" --vision-model "$demo/ViT-Demo.json" --text-model "$demo/RBT-Demo.json" --no-validation
        --batch-size 4 --log-interval 1 --lr 1e-3 --warmup 2 --max-steps 2000 --threads 1 --nproc-per-node 2)

# Waits until the run in $1 logged $2 steps (at most 90 s).
wait_steps() {
  for _ in $(seq 900); do
    [ -f "$1/metrics.jsonl" ] && [ "$(grep -c '"type":"train"' "$1/metrics.jsonl")" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
# The pid of the worker with RANK=$2 among the children of $1.
worker_pid() {
  for p in $(pgrep -P "$1"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$2" && { echo "$p"; return 0; }
  done
  return 1
}

# 1. A worker killed mid-run: the launcher stops the other one and fails, naming rank 1.
"$bin/clip-finetune" "${common[@]}" -o "$tmp/killed" 2>"$tmp/killed.txt" &
launcher=$!
check "killed run: training started" wait_steps "$tmp/killed" 2
victim=$(worker_pid "$launcher" 1)
check "killed run: rank 1 found" test -n "$victim"
t0=$(date +%s)
kill -9 "$victim"
wait "$launcher"
rc=$? t=$(( $(date +%s) - t0 ))
echo "killed worker: launcher exited $rc after ${t}s"
check "killed worker: exit 6" test "$rc" -eq 6
check "killed worker: run ended within 60 s" test "$t" -lt 60
check "killed worker: error names rank 1 and the signal" has "$tmp/killed.txt" "worker rank 1 (pid $victim) was killed by signal 9"
check "killed worker: no worker left" test -z "$(pgrep -P "$launcher")"

# 2. SIGINT to the launcher: all workers finish the step, rank 0 saves, exit 130; then --resume.
"$bin/clip-finetune" "${common[@]}" -o "$tmp/int" 2>"$tmp/int.txt" &
launcher=$!
check "interrupted run: training started" wait_steps "$tmp/int" 2
t0=$(date +%s)
kill -INT "$launcher"
wait "$launcher"
rc=$? t=$(( $(date +%s) - t0 ))
echo "SIGINT: launcher exited $rc after ${t}s"
check "SIGINT: exit 130" test "$rc" -eq 130
check "SIGINT: within 60 s" test "$t" -lt 60
check "SIGINT: resumable checkpoint" test -s "$tmp/int/checkpoints/epoch_latest.pt"
check "SIGINT: run not done" test ! -e "$tmp/int/DONE"
steps=$(grep -c '"type":"train"' "$tmp/int/metrics.jsonl")
"$bin/clip-finetune" --resume "$tmp/int" --nproc-per-node 1 --max-steps $((steps + 3)) 2>"$tmp/resume.txt"
check "resume with 1 process: exit 0" test $? -eq 0
check "resume says how the world size change is handled" has "$tmp/resume.txt" "the batch per process becomes 8"
check "resumed run done" test -e "$tmp/int/DONE"
check "resumed run logged the remaining steps" test "$(grep -c '"type":"train"' "$tmp/int/metrics.jsonl")" -eq $((steps + 3))

# 3. Usage: NCCL needs CUDA.
"$bin/clip-finetune" "${common[@]}" --dist-backend nccl -o "$tmp/nccl" 2>"$tmp/nccl.txt"
check "--dist-backend nccl on the CPU refused (exit 2)" test $? -eq 2
check "... naming the remedy" has "$tmp/nccl.txt" "use gloo on the CPU"

echo "$fails failure(s)"
test "$fails" -eq 0
