#!/usr/bin/env bash
# On a CUDA machine, after scripts/gpu_build.sh: clip-finetune --nproc-per-node 1 --device cuda (one
# worker joining through NCCL, world size 1) against the same run without the launcher, on the demo
# model and data: the loss of every step and the final weights must agree.
#   scripts/check_dist_gpu.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-gpu}/bin
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--data data/shapes-zh --vision-model data/shapes-zh/ViT-Demo.json --text-model data/shapes-zh/RBT-Demo.json
        -b 32 --max-steps 10 --log-interval 1 --no-validation --device cuda --seed 5 -q)
"$B/clip-finetune" "${common[@]}" -o "$out/single"
"$B/clip-finetune" "${common[@]}" --nproc-per-node 1 -o "$out/nccl"
grep -q '"dist_backend": *"nccl"\|"dist_backend":"nccl"' "$out/nccl/params.json" || {
  echo "FAIL: the launched run did not record the nccl backend" >&2; grep dist "$out/nccl/params.json" >&2; exit 1; }
python3 - "$out/single" "$out/nccl" <<'PY'
import json, sys, torch
def losses(run):
    return [json.loads(l)["loss"] for l in open(run + "/metrics.jsonl") if '"type":"train"' in l.replace(" ", "")]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) == 10, (len(a), len(b))
rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
sa = torch.load(sys.argv[1] + "/checkpoints/epoch_latest.pt", map_location="cpu")["state_dict"]
sb = torch.load(sys.argv[2] + "/checkpoints/epoch_latest.pt", map_location="cpu")["state_dict"]
wmax = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
print(f"nccl world 1 vs single process: {len(a)} steps, loss max rel diff {rel:.3g}, final weights max abs diff {wmax:.3g}")
sys.exit(0 if rel <= 1e-5 and wmax <= 1e-4 else 1)
PY
