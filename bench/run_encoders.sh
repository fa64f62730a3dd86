#!/usr/bin/env bash
# Encoder throughput, C++ (LibTorch) against plain PyTorch on the same architecture:
# ViT-B-16 + RoBERTa-wwm-ext-base-chinese, random weights, fp32 and bf16, same thread count.
#   bench/run_encoders.sh [BUILD_DIR]        (environment: THREADS=2 IMAGE_BATCH=8 TEXT_BATCH=16 ITERS=3)
# Prints the raw "bench ..." lines and a Markdown table; takes about 3-5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
THREADS=${THREADS:-2}
IMAGE_BATCH=${IMAGE_BATCH:-8}
TEXT_BATCH=${TEXT_BATCH:-16}
ITERS=${ITERS:-3}
PYTHON=${PYTHON:-/usr/bin/python3}

# Same kernel choice as the tools: only when unset (OpenBLAS 0.3.21 misdetects recent Xeons).
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi
export OMP_NUM_THREADS=$THREADS

if [[ ! -f "$BUILD_DIR/build.ninja" && ! -f "$BUILD_DIR/Makefile" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$BUILD_DIR" --target bench_encoders -j"$(nproc)" >&2

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores," \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, threads=$THREADS" >&2
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Without native bf16 instructions (AVX512_BF16 / AMX) LibTorch 1.13 falls back to a scalar bf16
# matmul (about 0.5 GFLOP/s): measure one item once instead of full batches, or it takes an hour.
if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then
  BF16_ARGS=(--image-batch "$IMAGE_BATCH" --text-batch "$TEXT_BATCH" --iters "$ITERS" --warmup 1)
else
  echo "note: this CPU has no native bf16 (no avx512_bf16/amx_bf16): bf16 runs with batch 1, one timed call" >&2
  BF16_ARGS=(--image-batch "${BF16_IMAGE_BATCH:-1}" --text-batch "${BF16_TEXT_BATCH:-1}" --iters 1 --warmup 0)
fi
FP32_ARGS=(--image-batch "$IMAGE_BATCH" --text-batch "$TEXT_BATCH" --iters "$ITERS" --warmup 1)
# Alternate the implementations per precision so that machine drift hits both alike.
for dt in fp32 bf16; do
  if [[ $dt == fp32 ]]; then a=("${FP32_ARGS[@]}"); else a=("${BF16_ARGS[@]}"); fi
  "$BUILD_DIR/bin/bench_encoders" --threads "$THREADS" "${a[@]}" --dtypes "$dt" | tee -a "$out"
  "$PYTHON" bench/bench_encoders_python.py --threads "$THREADS" "${a[@]}" --dtypes "$dt" | tee -a "$out"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo
echo "| tower | dtype | batch | C++ items/s | Python items/s | C++ ms/batch | Python ms/batch |"
echo "|---|---|---|---|---|---|---|"
awk '
  { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    key = f["tower"] " " f["dtype"] " " f["batch"]
    if (!(key in seen)) { seen[key] = 1; order[n++] = key }
    rate[key, f["impl"]] = f["items_per_s"]; ms[key, f["impl"]] = f["median_ms"] }
  END { for (i = 0; i < n; i++) { split(order[i], k, " ")
          printf "| %s | %s | %s | %s | %s | %s | %s |\n", k[1], k[2], k[3], rate[order[i], "cpp"], rate[order[i], "python"],
                 ms[order[i], "cpp"], ms[order[i], "python"] } }' "$out"
