#!/usr/bin/env bash
# The main job on the embedded default (data/shapes-zh): sets up and builds, then
#   1. fine-tunes the demo model from scratch with cn_clip's recipe on the train split (3 epochs, about
#      3 minutes on 2 CPU cores), keeping the initial weights,
#   2. indexes the test split with the initial weights and measures Recall@1/5/10 (before training),
#   3. does the same with the trained weights (after training), and runs Chinese queries,
#      writing a contact sheet of the hits.
# Everything lands in demo-out/ (or $OUT).
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
TRAIN=(--data "$D" "${CONFIGS[@]}" --lr 1e-3 --wd 0.1 --warmup 50 --batch-size 64 --seed 123 --log-interval 20)

evaluate() {  # $1 = checkpoint, $2 = label
  echo "## $2 training: test split, Recall@1/5/10 (%)"
  "$B/clip-index" -q -c "$1" "${CONFIGS[@]}" --data "$D" --split test \
    --image-out "$OUT/$2.test.img.clipfeat" --text-out "$OUT/$2.test.txt.clipfeat"
  "$B/clip-eval" -q --image-feats "$OUT/$2.test.img.clipfeat" --text-feats "$OUT/$2.test.txt.clipfeat" \
    --texts "$D/test_texts.jsonl" --name "$2" > "$OUT/$2.recall.json"
  "$B/clip-eval" --image-feats "$OUT/$2.test.img.clipfeat" --text-feats "$OUT/$2.test.txt.clipfeat" \
    --texts "$D/test_texts.jsonl" --format md 2>/dev/null
}

echo "== 1. fine-tuning from scratch on data/shapes-zh ($EPOCHS epochs; the initial weights are kept as epoch0.pt)" >&2
"$B/clip-finetune" "${TRAIN[@]}" --max-epochs "$EPOCHS" --save-init --output-dir "$OUT/run" >&2
echo "training curves: $OUT/run/curves.svg" >&2

echo "== 2. before training (random initialisation)" >&2
evaluate "$OUT/run/checkpoints/epoch0.pt" before

echo "== 3. after training" >&2
evaluate "$OUT/run/checkpoints/epoch_latest.pt" after

echo "== 4. Chinese queries against the test images (top 3)" >&2
# The first caption of test images 102201, 102221 and 102241: the right answer is that image.
echo "## queries (captions of test images 102201, 102221, 102241), top 3 after training"
printf '%s\n' "黄色的五角星在上方，两个颜色为紫色的十字在下方" \
  "画面上方画着一个黄色的小五角星，下面画着一个较小的黄色三角，背景是白色" "三个颜色为黑色的圆圈位于画面正中间" |
  "$B/clip-query" -q --index "$OUT/after.test.img.clipfeat" -k 3 --montage "$OUT/queries.png"
echo "contact sheet of the hits: $OUT/queries.png" >&2
