#!/usr/bin/env bash
# clip-finetune end to end on a slice of data/shapes-zh with the demo model: the run folder, the
# exit codes (refusal to overwrite, usage errors, a diverging run), resume, and torch.load of a
# checkpoint when Debian's python3-torch is there.
# Usage: finetune.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2
demo=$src/data/shapes-zh
source "$(dirname "$0")/checks.bash" finetune

# 12 training images (60 captions), 6 validation images.
data=$tmp/data
demo_slice "$demo" "$data"
base=(--data "$data" --vision-model "$demo/ViT-Demo.json" --text-model "$demo/RBT-Demo.json"
      --batch-size 16 --log-interval 1 --threads 2)
common=("${base[@]}" --lr 1e-3 --warmup 2)

# A short run: 60 pairs -> 4 batches of 16 per epoch, 2 epochs.
"$bin/clip-finetune" "${common[@]}" --max-epochs 2 --save-step-frequency 3 -o "$tmp/run" 2>"$tmp/err1.txt"
check "exit 0" test $? -eq 0
for f in params.json metrics.jsonl curves.svg DONE checkpoints/epoch1.pt checkpoints/epoch2.pt \
         checkpoints/epoch_latest.pt checkpoints/epoch_1_3.pt checkpoints/epoch_2_6.pt checkpoints/vocab.txt; do
  check "run folder has $f" test -s "$tmp/run/$f"
done
check "8 train lines in metrics.jsonl" test "$(grep -c '"type":"train"' "$tmp/run/metrics.jsonl")" -eq 8
check "2 validations in metrics.jsonl" test "$(grep -c '"type":"val"' "$tmp/run/metrics.jsonl")" -eq 2
check "validation recall logged" has "$tmp/run/metrics.jsonl" '"t2i_r1":'
check "params record the schedule" has "$tmp/run/params.json" '"max_steps": 8'
check "curves are an SVG" has "$tmp/run/curves.svg" '<svg'
check "parseable progress lines" has "$tmp/err1.txt" 'progress task=train done=8 total=8'
check "validation line" has "$tmp/err1.txt" 'validation (epoch 2 @ 8 steps)'

# The same folder again is refused (exit 6), nothing touched.
before=$(md5sum "$tmp/run/checkpoints/epoch_latest.pt")
"$bin/clip-finetune" "${common[@]}" --max-epochs 2 -o "$tmp/run" 2>"$tmp/err2.txt"
check "existing run folder refused with exit 6" test $? -eq 6
check "refusal names --resume" has "$tmp/err2.txt" '--resume'
check "checkpoint untouched" test "$before" = "$(md5sum "$tmp/run/checkpoints/epoch_latest.pt")"

# Usage errors exit 2.
"$bin/clip-finetune" --data "$data" -o "$tmp/x" 2>"$tmp/err3.txt"
check "from scratch without configs: exit 2" test $? -eq 2
"$bin/clip-finetune" "${common[@]}" --precision fp16 -o "$tmp/y" 2>/dev/null
check "bad --precision: exit 2" test $? -eq 2

# Interrupted (--stop-after-steps) then resumed with only --resume: same weights as straight through.
"$bin/clip-finetune" "${common[@]}" --max-steps 6 -o "$tmp/a" -q
"$bin/clip-finetune" "${common[@]}" --max-steps 6 -o "$tmp/b" --stop-after-steps 2 -q
check "stopped run is resumable, not done" test ! -e "$tmp/b/DONE"
"$bin/clip-finetune" --resume "$tmp/b" -q
check "resume exit 0" test $? -eq 0
check "resumed run done" test -e "$tmp/b/DONE"

# The same with a mixed precision: --resume alone keeps the run's precision (it once fell back to fp32).
for p in amp bf16; do
  "$bin/clip-finetune" "${common[@]}" --precision $p --max-steps 4 --no-validation -o "$tmp/$p-a" -q
  "$bin/clip-finetune" "${common[@]}" --precision $p --max-steps 4 --no-validation -o "$tmp/$p-b" --stop-after-steps 2 -q
  "$bin/clip-finetune" --resume "$tmp/$p-b" -q
  check "$p: resume exit 0" test $? -eq 0
  check "$p: the resumed run keeps --precision $p" has "$tmp/$p-b/params.json" "\"precision\": \"$p\""
  check "$p: resumed losses equal the uninterrupted run's" test \
    "$(grep -o '"loss":[^,]*' "$tmp/$p-a/metrics.jsonl")" = "$(grep -o '"loss":[^,]*' "$tmp/$p-b/metrics.jsonl")"
done

# --cuda-graph where no graph can run (the CPU): said once, and the run is the ordinary one.
"$bin/clip-finetune" "${common[@]}" --precision bf16 --max-steps 4 --no-validation --cuda-graph -o "$tmp/graph" \
  2>"$tmp/err5.txt"
check "--cuda-graph on the CPU: exit 0" test $? -eq 0
check "--cuda-graph: says why not" has "$tmp/err5.txt" '--cuda-graph: not here'
check "--cuda-graph: the same losses as without" test \
  "$(grep -o '"loss":[^,]*' "$tmp/bf16-a/metrics.jsonl")" = "$(grep -o '"loss":[^,]*' "$tmp/graph/metrics.jsonl")"
check "--cuda-graph: metrics say no graph ran" has "$tmp/graph/metrics.jsonl" '"cuda_graph":false'
# The graph is on by default (params.json), silently where it cannot run; --no-cuda-graph turns it off.
check "graph on by default" has "$tmp/run/params.json" '"cuda_graph": true'
check "default graph: nothing said on the CPU" test "$(grep -c 'cuda-graph' "$tmp/err1.txt")" -eq 0
"$bin/clip-finetune" "${common[@]}" --precision bf16 --max-steps 2 --no-validation --no-cuda-graph -o "$tmp/nograph" \
  2>"$tmp/err6.txt"
check "--no-cuda-graph: exit 0" test $? -eq 0
check "--no-cuda-graph: saved off" has "$tmp/nograph/params.json" '"cuda_graph": false'

# A diverging run stops with exit 6 and keeps its last good checkpoint.
"$bin/clip-finetune" "${base[@]}" --lr 1e30 --warmup 1 --max-steps 6 --save-step-frequency 1 --no-validation \
  -o "$tmp/nan" 2>"$tmp/err4.txt"
check "non-finite loss: exit 6" test $? -eq 6
check "message says so" has "$tmp/err4.txt" 'loss became'
check "last good checkpoint kept" test -s "$tmp/nan/checkpoints/epoch_latest.pt"

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 - "$tmp/a/checkpoints/epoch_latest.pt" "$tmp/b/checkpoints/epoch_latest.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, map_location="cpu") for p in sys.argv[1:3])
assert a["step"] == b["step"] == 6, (a["step"], b["step"])
assert list(a["state_dict"]) == list(b["state_dict"]) and all(k.startswith("module.") for k in a["state_dict"])
assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), "resumed weights differ"
assert len(a["optimizer"]["param_groups"]) == 2
PY
  check "torch.load: cn_clip layout, resumed weights identical" test $? -eq 0
  for p in amp bf16; do
    /usr/bin/python3 - "$tmp/$p-a/checkpoints/epoch_latest.pt" "$tmp/$p-b/checkpoints/epoch_latest.pt" <<'PY'
import sys, torch
a, b = (torch.load(p, map_location="cpu") for p in sys.argv[1:3])
assert all(t.dtype == torch.float32 for t in a["state_dict"].values() if t.is_floating_point())
assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), "resumed weights differ"
PY
    check "$p: float32 checkpoints, resumed weights identical" test $? -eq 0
  done
else
  echo "skip: /usr/bin/python3 without torch"
fi

echo "$fails failure(s)"
test "$fails" -eq 0
