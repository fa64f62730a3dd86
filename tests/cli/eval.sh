#!/usr/bin/env bash
# clip-eval end to end on tests/data/eval/quant (expected numbers from cn_clip's evaluation.py, see its README).
# Usage: eval.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2
data=$src/tests/data/eval/quant
source "$(dirname "$0")/checks.bash" eval

# From features: both directions, the numbers evaluation.py printed, and cn_clip's prediction files.
"$bin/clip-eval" --image-feats "$data/imgs.img_feat.jsonl" --text-feats "$data/texts.txt_feat.jsonl" \
  --texts "$data/texts.jsonl" --write-topk "$tmp/pred" --name quant >"$tmp/out.json" 2>"$tmp/err.txt"
check "exit 0 from features" test $? -eq 0
check "one JSON line" test "$(wc -l <"$tmp/out.json")" -eq 1
check "t2i recall" has "$tmp/out.json" '"text_to_image":{"hits1":61,"hits10":93,"hits5":87,"mean_recall":80.33333333333333,"queries":100,"r1":61.0,"r10":93.0,"r5":87.0}'
check "i2t recall" has "$tmp/out.json" '"image_to_text":{"hits1":14,"hits10":35,"hits5":31,"mean_recall":74.07407407407408,"queries":36,"r1":38.88888888888889,"r10":97.22222222222221,"r5":86.11111111111111}'
check "overall mean recall" has "$tmp/out.json" '"mean_recall":77.2037037037037'
check "counts" has "$tmp/out.json" '"image_features":40'
check "name" has "$tmp/out.json" '"name":"quant"'
check "table on stderr" has "$tmp/err.txt" 'text->image'
check "t2i predictions identical to make_topk_predictions.py" cmp -s "$tmp/pred.t2i.jsonl" "$data/t2i.topk.jsonl"
check "i2t predictions identical to make_topk_predictions_tr.py" cmp -s "$tmp/pred.i2t.jsonl" "$data/i2t.topk.jsonl"

# From prediction files: the same numbers.
"$bin/clip-eval" --predictions "$tmp/pred.t2i.jsonl" --tr-predictions "$tmp/pred.i2t.jsonl" --texts "$data/texts.jsonl" \
  -q >"$tmp/out2.json"
check "exit 0 from predictions" test $? -eq 0
check "same t2i from predictions" has "$tmp/out2.json" '"mean_recall":80.33333333333333,"queries":100'
check "same overall from predictions" has "$tmp/out2.json" '"mean_recall":77.2037037037037'
"$bin/clip-eval" --predictions "$data/random_a.jsonl" --texts "$data/texts.jsonl" --format md -q >"$tmp/out.md"
check "markdown row" has "$tmp/out.md" '| text->image | 100 | 9.00 | 40.00 | 69.00 | 39.33 |'
"$bin/clip-eval" --predictions "$data/random_b.jsonl" --texts "$data/texts.jsonl" --format tsv -q >"$tmp/out.tsv"
check "tsv row" has "$tmp/out.tsv" "$(printf 'text->image\t100\t8\t52\t97\t52.33333333333333')"

# Errors: exit codes and messages naming the line.
head -c 300 "$data/t2i.topk.jsonl" >"$tmp/broken.jsonl"
"$bin/clip-eval" --predictions "$tmp/broken.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err2.txt"
check "broken predictions: exit 3" test $? -eq 3
check "broken predictions: line named" has "$tmp/err2.txt" "broken.jsonl:3:"
head -n 50 "$data/t2i.topk.jsonl" >"$tmp/half.jsonl"
"$bin/clip-eval" --predictions "$tmp/half.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err3.txt"
check "missing gold queries: exit 3" test $? -eq 3
check "missing gold queries: counted" has "$tmp/err3.txt" "no prediction for 50 of the 100 gold queries"
"$bin/clip-eval" --predictions "$data/i2t.topk.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err4.txt"
check "direction mix-up: exit 2" test $? -eq 2
check "direction mix-up: remedy" has "$tmp/err4.txt" "--tr-predictions"
"$bin/clip-eval" --texts "$data/texts.jsonl" >/dev/null 2>&1
check "no inputs: exit 2" test $? -eq 2
"$bin/clip-eval" --image-feats "$tmp/nope.jsonl" --text-feats "$data/texts.txt_feat.jsonl" --texts "$data/texts.jsonl" \
  >/dev/null 2>&1
check "missing file: exit 5" test $? -eq 5
"$bin/clip-eval" --help >"$tmp/help.txt"
check "help on stdout, exit 0" has "$tmp/help.txt" "--write-topk"

if ((fails)); then echo "$fails check(s) failed" >&2; exit 1; fi
echo "all clip-eval checks passed"
