#!/usr/bin/env bash
# The main job on the embedded default (data/shapes-zh): sets up and builds, then
#   1. trains the demo model from scratch with cn_clip's recipe on the train split (3 epochs, under
#      3 minutes on 2 CPU cores), keeping the initial weights,
#   2. indexes the test split with the initial weights and measures Recall@1/5/10 (before training),
#   3. does the same with the trained weights (after training),
#   4. searches the test images with three of the test split's Chinese captions and draws their
#      contact sheet (each caption's own image framed in green).
# Everything lands in demo-out/ (or $OUT); the numbers go to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi

B=build/bin
D=data/shapes-zh
OUT=${OUT:-demo-out}
EPOCHS=${EPOCHS:-3}
rm -rf "$OUT"
mkdir -p "$OUT"
CONFIGS=(--vision-model "$D/ViT-Demo.json" --text-model "$D/RBT-Demo.json" --vocab "$D/vocab.txt")
TRAIN=(--data "$D" "${CONFIGS[@]}" --lr 2e-3 --wd 0.1 --warmup 50 --batch-size 64 --seed 123 --log-interval 20)

evaluate() {  # $1 = checkpoint, $2 = label
  echo "## $2 training: test split, Recall@1/5/10 (%)"
  "$B/clip-index" -q -c "$1" "${CONFIGS[@]}" --data "$D" --split test \
    --image-out "$OUT/$2.test.img.clipfeat" --text-out "$OUT/$2.test.txt.clipfeat"
  "$B/clip-eval" -q --image-feats "$OUT/$2.test.img.clipfeat" --text-feats "$OUT/$2.test.txt.clipfeat" \
    --texts "$D/test_texts.jsonl" --name "$2" > "$OUT/$2.recall.json"
  "$B/clip-eval" --image-feats "$OUT/$2.test.img.clipfeat" --text-feats "$OUT/$2.test.txt.clipfeat" \
    --texts "$D/test_texts.jsonl" --format md 2>/dev/null
}

echo "== 1. training from scratch on data/shapes-zh ($EPOCHS epochs; the initial weights are kept as epoch0.pt)" >&2
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s.%N)
"$B/clip-finetune" "${TRAIN[@]}" --max-epochs "$EPOCHS" --save-init --output-dir "$OUT/run" >&2
seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')
echo "## training: $EPOCHS epochs in $seconds s on $(nproc) CPU cores (load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "training curves: $OUT/run/curves.svg" >&2

echo "== 2. before training (random initialisation)" >&2
evaluate "$OUT/run/checkpoints/epoch0.pt" before

echo "== 3. after training" >&2
evaluate "$OUT/run/checkpoints/epoch_latest.pt" after

echo "== 4. Chinese queries against the test images (top 3)" >&2
# Three captions of the test split (two groups told apart by shape and place; a count; colour, size and
# shape bound to left and right); the right answer to each is the image it was written for.
grep -E '"text_id": (11226|11559|11882),' "$D/test_texts.jsonl" > "$OUT/queries.jsonl"
sed -E 's/.*"text": "([^"]*)", "image_ids": \[([0-9]+)\].*/\1\t\2/' "$OUT/queries.jsonl" > "$OUT/queries.gold.tsv"
echo "## queries: three test captions, top 3 after training (<- marks the image the caption was written for)"
"$B/clip-query" -q --index "$OUT/after.test.img.clipfeat" --texts "$OUT/queries.jsonl" -k 3 --format tsv \
    --montage "$OUT/queries.png" |
  awk -F'\t' 'NR == FNR { gold[$1] = $2; next }
              $2 == 1 { print $1 }
              { printf "  %d. %s  %.3f%s\n", $2, $3, $4, $3 == gold[$1] ? "  <-" : "" }' "$OUT/queries.gold.tsv" -
echo "contact sheet of the hits: $OUT/queries.png" >&2
