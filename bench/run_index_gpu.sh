#!/usr/bin/env bash
# Indexing throughput on one GPU, whole processes side by side on the same generated data:
#   clip-index with each --decode mode of MODES on N 500x375 JPEGs (start of the process to the store on disk),
#   clip-index on TEXTS Chinese texts, and cn_clip's own extraction loop (bench/bench_index_python.py extract:
#   extract_features.py's model, dataset logic and DataLoader loop) on the same images and texts as the baseline.
#
#   bench/run_index_gpu.sh CNCLIP_DIR [BUILD_DIR] [CHECKPOINT]
#
# CNCLIP_DIR: a checkout of OFA-Sys/Chinese-CLIP (read only; its cn_clip folder is imported, never copied).
# BUILD_DIR: a scripts/gpu_build.sh build (default build-gpu). CHECKPOINT: a real cn_clip checkpoint (vocab.txt
# beside it); without it one with random weights in cn_clip's layout is made once in WORK.
# Environment (defaults): N=16384 TEXTS=20000 DEVICE=cuda PRECISION=fp16 BATCH=256 THREADS=0 (all cores)
#   VISION=ViT-B-16 TEXT=RoBERTa-wwm-ext-base-chinese PY_BATCH=64 (cn_clip's) PY_WORKERS="0 <cores>" (0 is cn_clip's)
#   MODES="exact fast device" RUNS=1 WORK=/tmp/clip-bench-index PYTHON=python3 SKIP_PY= (1: clip-index only)
# A small check on a CPU machine:
#   N=256 TEXTS=512 DEVICE=cpu PRECISION=fp32 VISION=ViT-B-32 TEXT=RBT3-chinese BATCH=32 bench/run_index_gpu.sh .device/cnclip build
# Each wall time is the command's, as a shell sees it: on CUDA clip-index returns once its outputs are written, the
# GPU context's teardown ending in a detached child (docs/architecture.md, "Process start and end"; CLIP_DETACH=0
# in the environment times it inside). After the first run on a checkpoint its weights hash comes from the cache.
# Prints one "bench ..." line per run (stdout), clip-index's "timing ..." lines (stderr: where each process's time
# went, docs/benchmarks.md) and a Markdown table; the data and checkpoint are reused between calls.
set -euo pipefail
cd "$(dirname "$0")/.."
CNCLIP=$(cd "${1:?usage: bench/run_index_gpu.sh CNCLIP_DIR [BUILD_DIR] [CHECKPOINT]}" && pwd)
BUILD_DIR=${2:-build-gpu}
CKPT=${3:-}
N=${N:-16384}
TEXTS=${TEXTS:-20000}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-fp16}
BATCH=${BATCH:-256}
THREADS=${THREADS:-0}
VISION=${VISION:-ViT-B-16}
TEXT=${TEXT:-RoBERTa-wwm-ext-base-chinese}
PY_BATCH=${PY_BATCH:-64}
PY_WORKERS=${PY_WORKERS:-"0 $(nproc)"}
RUNS=${RUNS:-1}
MODES=${MODES:-exact fast device}
SKIP_PY=${SKIP_PY:-}
WORK=${WORK:-/tmp/clip-bench-index}
PYTHON=${PYTHON:-python3}
HELPER=bench/bench_index_python.py
BIN=$BUILD_DIR/bin

[[ -x $BIN/clip-index ]] || { echo "no $BIN/clip-index: build it first (scripts/gpu_build.sh)" >&2; exit 1; }
[[ -d $CNCLIP/cn_clip/clip ]] || { echo "$CNCLIP/cn_clip/clip not found: give a checkout of OFA-Sys/Chinese-CLIP" >&2; exit 1; }
mkdir -p "$WORK"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" >&2
if [[ $DEVICE == cuda* ]]; then
  echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" >&2
fi
echo "torch: $($PYTHON -c 'import torch; print(torch.__version__)')" >&2

# 1. Data: N JPEGs in the Flickr30k-CN layout and TEXTS texts (made once per size).
DATA=$WORK/data-$N-$TEXTS
if [[ ! -f $DATA/bench_texts.jsonl ]]; then
  "$PYTHON" "$HELPER" make-data --out "$DATA" --split bench --images "$N" --texts "$TEXTS" --width 500 --height 375 --quality 90
fi
IMAGES=$DATA/bench_imgs.tsv
TEXTS_JSONL=$DATA/bench_texts.jsonl

# 2. Checkpoint: the one given, else random weights in cn_clip's layout (made once per architecture).
if [[ -z $CKPT ]]; then
  CKPT=$WORK/ckpt-$VISION-$TEXT/model.pt
  [[ -f $CKPT ]] || "$PYTHON" "$HELPER" make-checkpoint --cnclip "$CNCLIP" --out "$CKPT" --vision "$VISION" --text "$TEXT"
fi

# Both sides read their inputs from the page cache.
cat "$IMAGES" "$TEXTS_JSONL" "$CKPT" >/dev/null
echo "data: $(du -h "$IMAGES" | cut -f1) TSV, checkpoint $(du -h "$CKPT" | cut -f1); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# timed JOB IMPL ITEMS COMMAND...: runs the whole process, prints and records one line.
timed() {
  local job=$1 impl=$2 items=$3; shift 3
  local t0 t1
  t0=$(date +%s.%N)
  # A failing run is reported and the others still run (the script's status is then 1).
  "$@" 2> "$WORK/last.err" || { echo "failed ($impl): $*" >&2; tail -20 "$WORK/last.err" >&2; failed=1; return 0; }
  t1=$(date +%s.%N)
  grep -h '^python extract' "$WORK/last.err" >&2 || true
  grep -h '^timing ' "$WORK/last.err" >&2 || true  # clip-index: where the time went (docs/benchmarks.md)
  awk -v j="$job" -v i="$impl" -v n="$items" -v a="$t0" -v b="$t1" \
    'BEGIN { printf "bench job=%s impl=%s items=%d wall_s=%.2f items_per_s=%.1f\n", j, i, n, b - a, n / (b - a) }' |
    tee -a "$out"
}

CPP=(-c "$CKPT" --vision-model "$VISION" --text-model "$TEXT" --device "$DEVICE" --precision "$PRECISION"
     --batch-size "$BATCH" --threads "$THREADS")  # not -q: its "timing ..." lines are printed
PYX=(extract --cnclip "$CNCLIP" --checkpoint "$CKPT" --vision "$VISION" --text "$TEXT" --device "$DEVICE"
     --precision "$PRECISION" --batch-size "$PY_BATCH")
for ((r = 1; r <= RUNS; r++)); do
  # Alternated, so that drift of the machine hits every implementation alike.
  for m in $MODES; do
    timed images "clip-index --decode $m" "$N" "$BIN/clip-index" "${CPP[@]}" --images "$IMAGES" --image-out "$WORK/$m.clipfeat" --decode "$m"
  done
  [[ -n $SKIP_PY ]] || for w in $PY_WORKERS; do
    timed images "cn_clip loop, $w workers" "$N" "$PYTHON" "$HELPER" "${PYX[@]}" --workers "$w" --images "$IMAGES" --out "$WORK/py-img-$w.jsonl"
  done
  timed texts "clip-index" "$TEXTS" "$BIN/clip-index" "${CPP[@]}" --texts "$TEXTS_JSONL" --text-out "$WORK/texts.clipfeat"
  [[ -n $SKIP_PY ]] || timed texts "cn_clip loop, 0 workers" "$TEXTS" "$PYTHON" "$HELPER" "${PYX[@]}" --workers 0 --texts "$TEXTS_JSONL" --out "$WORK/py-txt.jsonl"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Agreement: fast against exact (the cost of --decode fast), and each C++ output against cn_clip's.
first_w=${PY_WORKERS%% *}
for m in $MODES; do
  [[ $m == exact || ! -f $WORK/exact.clipfeat || ! -f $WORK/$m.clipfeat ]] || "$PYTHON" "$HELPER" compare "$WORK/exact.clipfeat" "$WORK/$m.clipfeat" | sed "s/^/$m vs exact: /"
done
if [[ -z $SKIP_PY ]]; then
  [[ ! -f $WORK/exact.clipfeat ]] || "$PYTHON" "$HELPER" compare "$WORK/exact.clipfeat" "$WORK/py-img-$first_w.jsonl" | sed 's/^/exact vs cn_clip: /'
  [[ ! -f $WORK/texts.clipfeat || ! -f $WORK/py-txt.jsonl ]] || "$PYTHON" "$HELPER" compare "$WORK/texts.clipfeat" "$WORK/py-txt.jsonl" | sed 's/^/texts vs cn_clip: /'
fi

echo
echo "| job | implementation | items | wall s (whole process) | items/s |"
echo "|---|---|---|---|---|"
awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
       impl = $0; sub(/.*impl=/, "", impl); sub(/ items=.*/, "", impl)
       printf "| %s | %s | %s | %s | %s |\n", f["job"], impl, f["items"], f["wall_s"], f["items_per_s"] }' "$out"
exit $failed
