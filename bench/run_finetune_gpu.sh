#!/usr/bin/env bash
# End-to-end training throughput on one GPU: clip-finetune --use-augment on a TSV of N 500x375 JPEGs
# (reading, JPEG decoding, cn_clip's augmentation, tokenisation, upload and the step) against the
# step alone (bench_train, data already on the GPU), same precision, batch and card, in one call.
#   bench/run_finetune_gpu.sh CNCLIP_DIR [BUILD_DIR]
# CNCLIP_DIR: a checkout of OFA-Sys/Chinese-CLIP (its vocab.txt; the data generator is
# bench/bench_index_python.py make-data). Environment (defaults): N=8192 BATCH=128 STEPS=60
# PRECISIONS="bf16 amp" WORKERS=0 (all cores) WORK=/tmp/clip-bench-finetune PYTHON=python3
# GRAPH=1 (both sides replay the step as a CUDA graph, clip-finetune's default; GRAPH=0: neither, --no-cuda-graph)
# Prints per precision: "bench job=step ..." and "bench job=finetune ... ratio=R" (R = end to end /
# step alone; samples/s is the median of the log intervals after the first).
set -euo pipefail
cd "$(dirname "$0")/.."
CNCLIP=$(cd "${1:?usage: bench/run_finetune_gpu.sh CNCLIP_DIR [BUILD_DIR]}" && pwd)
BIN=${2:-build-gpu}/bin
N=${N:-8192}
BATCH=${BATCH:-128}
STEPS=${STEPS:-60}
WORKERS=${WORKERS:-0}
WORK=${WORK:-/tmp/clip-bench-finetune}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"
echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none)," \
     "$(nproc) cores" >&2
DATA=$WORK/data-$N
[[ -f $DATA/train_texts.jsonl ]] ||
  "$PYTHON" bench/bench_index_python.py make-data --out "$DATA" --split train --images "$N" --texts "$N" \
    --width 500 --height 375 --quality 90
cat "$DATA/train_imgs.tsv" > /dev/null  # page cache, as a second epoch would find it
for p in ${PRECISIONS:-bf16 amp}; do
  graph_bench=(--cuda-graph on) graph_ft=(--cuda-graph)
  [[ ${GRAPH:-1} != 0 ]] || { graph_bench=(--cuda-graph off); graph_ft=(--no-cuda-graph); }
  step=$("$BIN/bench_train" --device cuda --precision "$p" --batch "$BATCH" --steps 20 --warmup 5 "${graph_bench[@]}")
  echo "$step"
  step_sps=$(sed -n 's/.*samples_per_s=\([0-9.]*\).*/\1/p' <<<"$step")
  run=$WORK/run-$p
  rm -rf "$run"
  "$BIN/clip-finetune" --data "$DATA" --vision-model ViT-B-16 --text-model RoBERTa-wwm-ext-base-chinese \
    --vocab "$CNCLIP/cn_clip/clip/vocab.txt" --device cuda --precision "$p" -b "$BATCH" --use-augment \
    --max-steps "$STEPS" --log-interval 10 --no-validation --save-epoch-frequency 1000 --workers "$WORKERS" "${graph_ft[@]}" -q -o "$run"
  "$PYTHON" - "$run/metrics.jsonl" "$p" "$BATCH" "$step_sps" <<'PY'
import json, statistics, sys
path, p, batch, step_sps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lines = [json.loads(l) for l in open(path)]
train = [l for l in lines if l.get("type") == "train"][1:]  # the first interval holds the start
sps = statistics.median(l["samples_per_s"] for l in train)
wait = sum(l["data_wait_s"] for l in train) / sum(l["step_s"] + l["data_wait_s"] for l in train)
print(f"bench job=finetune precision={p} batch={batch} intervals={len(train)} samples_per_s={sps:.1f} "
      f"data_wait_share={wait:.3f} step_only_samples_per_s={step_sps:.1f} ratio={sps / step_sps:.3f}")
PY
done
