#!/usr/bin/env bash
# Training throughput on one GPU, clip-finetune's step (bench_train, C++; each --precision) against
# Python cn_clip's (bench_train_python.py: fp32, bf16 autocast, bf16 autocast + fused AdamW, its own
# fp16 amp) on the same card in the same run: ViT-B-16 + RoBERTa-wwm-ext-base-chinese, batch 128,
# random weights and data already on the GPU. ONLY="cpp" runs the C++ lines alone; SKIP_FP32=1 leaves
# out the fp32 pair.
#   bench/run_train_gpu.sh CNCLIP_DIR [BUILD_DIR]      (environment: BATCH=128 STEPS=20 WARMUP=5)
# CNCLIP_DIR: a checkout of OFA-Sys/Chinese-CLIP (read only). BUILD_DIR: a scripts/gpu_build.sh build.
# Prints the raw "bench ..." lines (with the allocator's peak memory) and each process's peak device
# memory as nvidia-smi saw it (CUDA context included).
set -euo pipefail
cd "$(dirname "$0")/.."
CNCLIP=${1:?usage: bench/run_train_gpu.sh CNCLIP_DIR [BUILD_DIR]}
BUILD_DIR=${2:-build-gpu}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
PYTHON=${PYTHON:-python3}

echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" >&2
echo "torch: $($PYTHON -c 'import torch; print(torch.__version__)')" >&2

# Runs a command while sampling its device memory every 50 ms; appends nvidia_peak_mib to its line.
with_peak() {
  local log
  log=$(mktemp)
  "$@" > "$log.out" &
  local pid=$! peak=0 m
  while kill -0 "$pid" 2>/dev/null; do
    m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        awk -F', *' -v p="$pid" '$1==p {print $2}')
    [[ -n "$m" && "$m" -gt "$peak" ]] && peak=$m
    sleep 0.05
  done
  wait "$pid"
  echo "$(cat "$log.out") nvidia_peak_mib=$peak"
  rm -f "$log" "$log.out"
}

common=(--batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP")
# CKPT_MODES="plain" skips the gradient-checkpointing half.
modes=(""); [[ ${CKPT_MODES:-plain ckpt} == *ckpt* ]] && modes+=(--grad-checkpointing)
for ckpt in "${modes[@]}"; do
  if [[ -z ${SKIP_FP32:-} ]]; then
  with_peak "$BUILD_DIR/bin/bench_train" --device cuda --precision fp32 "${common[@]}" $ckpt
  [[ ${ONLY:-} != cpp ]] && with_peak "$PYTHON" bench/bench_train_python.py --cnclip "$CNCLIP" --precision fp32 "${common[@]}" $ckpt
  fi
  with_peak "$BUILD_DIR/bin/bench_train" --device cuda --precision amp "${common[@]}" $ckpt
  with_peak "$BUILD_DIR/bin/bench_train" --device cuda --precision bf16 "${common[@]}" $ckpt
  with_peak "$BUILD_DIR/bin/bench_train" --device cuda --precision amp-fp16 "${common[@]}" $ckpt
  [[ ${ONLY:-} == cpp ]] && continue
  with_peak "$PYTHON" bench/bench_train_python.py --cnclip "$CNCLIP" --precision amp-bf16 "${common[@]}" $ckpt
  with_peak "$PYTHON" bench/bench_train_python.py --cnclip "$CNCLIP" --precision amp-bf16 --fused-adamw "${common[@]}" $ckpt
  with_peak "$PYTHON" bench/bench_train_python.py --cnclip "$CNCLIP" --precision amp-fp16 "${common[@]}" $ckpt
done
