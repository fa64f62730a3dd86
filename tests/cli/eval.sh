#!/usr/bin/env bash
# clip-eval end to end on tests/data/eval/quant (expected numbers from cn_clip's evaluation.py, see its README).
# Usage: eval.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2
data=$src/tests/data/eval/quant
source "$(dirname "$0")/checks.bash" eval

# The gold file's last line repeats a text_id (see tests/data/eval/README.md): --cnclip-duplicates reads
# it as evaluation.py does; without it that is an error naming both lines (checked at the end).
# From features: both directions, the numbers evaluation.py printed, and cn_clip's prediction files.
"$bin/clip-eval" --cnclip-duplicates --image-feats "$data/imgs.img_feat.jsonl" --text-feats "$data/texts.txt_feat.jsonl" \
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
"$bin/clip-eval" --cnclip-duplicates --predictions "$tmp/pred.t2i.jsonl" --tr-predictions "$tmp/pred.i2t.jsonl" --texts "$data/texts.jsonl" \
  -q >"$tmp/out2.json"
check "exit 0 from predictions" test $? -eq 0
check "same t2i from predictions" has "$tmp/out2.json" '"mean_recall":80.33333333333333,"queries":100'
check "same overall from predictions" has "$tmp/out2.json" '"mean_recall":77.2037037037037'
"$bin/clip-eval" --cnclip-duplicates --predictions "$data/random_a.jsonl" --texts "$data/texts.jsonl" --format md -q >"$tmp/out.md"
check "markdown row" has "$tmp/out.md" '| text->image | 100 | 9.00 | 40.00 | 69.00 | 39.33 |'
"$bin/clip-eval" --cnclip-duplicates --predictions "$data/random_b.jsonl" --texts "$data/texts.jsonl" --format tsv -q >"$tmp/out.tsv"
check "tsv row" has "$tmp/out.tsv" "$(printf 'text->image\t100\t8\t52\t97\t52.33333333333333')"

# Errors: exit codes and messages naming the line.
head -c 300 "$data/t2i.topk.jsonl" >"$tmp/broken.jsonl"
"$bin/clip-eval" --cnclip-duplicates --predictions "$tmp/broken.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err2.txt"
check "broken predictions: exit 3" test $? -eq 3
check "broken predictions: line named" has "$tmp/err2.txt" "broken.jsonl:3:"
head -n 50 "$data/t2i.topk.jsonl" >"$tmp/half.jsonl"
"$bin/clip-eval" --cnclip-duplicates --predictions "$tmp/half.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err3.txt"
check "missing gold queries: exit 3" test $? -eq 3
check "missing gold queries: counted" has "$tmp/err3.txt" "no prediction for 50 of the 100 gold queries"
"$bin/clip-eval" --cnclip-duplicates --predictions "$data/i2t.topk.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err4.txt"
check "direction mix-up: exit 2" test $? -eq 2
check "direction mix-up: remedy" has "$tmp/err4.txt" "--tr-predictions"
"$bin/clip-eval" --texts "$data/texts.jsonl" >/dev/null 2>&1
check "no inputs: exit 2" test $? -eq 2
"$bin/clip-eval" --cnclip-duplicates --image-feats "$tmp/nope.jsonl" --text-feats "$data/texts.txt_feat.jsonl" --texts "$data/texts.jsonl" \
  >/dev/null 2>&1
check "missing file: exit 5" test $? -eq 5
"$bin/clip-eval" --help >"$tmp/help.txt"
check "help on stdout, exit 0" has "$tmp/help.txt" "--write-topk"

# The error policy: a repeated text_id stops the run naming both lines; --on-error skip leaves out the
# later line and bad lines of gold and predictions, counts them, and scores the rest.
"$bin/clip-eval" --predictions "$data/t2i.topk.jsonl" --texts "$data/texts.jsonl" >/dev/null 2>"$tmp/err5.txt"
check "repeated text_id: exit 3" test $? -eq 3
check "repeated text_id: both lines named" has "$tmp/err5.txt" "texts.jsonl:101: text_id 629 appears again (first on line 11)"
{ head -n 20 "$data/texts.jsonl"; echo '{"text_id": 9999, "text": "x", "image_ids": [1,'; tail -n +21 "$data/texts.jsonl"; } >"$tmp/gold.jsonl"
{ head -n 5 "$tmp/pred.t2i.jsonl"; echo '{"text_id": 641, "image_ids": [1, 2]}'; tail -n +7 "$tmp/pred.t2i.jsonl"; } >"$tmp/pred.bad.jsonl"
"$bin/clip-eval" --predictions "$tmp/pred.bad.jsonl" --texts "$tmp/gold.jsonl" >/dev/null 2>"$tmp/err6.txt"
check "malformed gold line: exit 3 naming the line" bash -c "[ $? -eq 3 ] && grep -q 'gold.jsonl:21: not valid JSON' '$tmp/err6.txt'"
"$bin/clip-eval" --predictions "$tmp/pred.bad.jsonl" --texts "$tmp/gold.jsonl" --on-error skip >"$tmp/out6.json" 2>"$tmp/err6.txt"
check "--on-error skip: exit 0" test $? -eq 0
check "... gold lines summarised per reason" has "$tmp/err6.txt" "skipped 2 bad line(s), kept 100; by reason: duplicate text_id x1; invalid JSON x1;"
check "... prediction lines summarised" has "$tmp/err6.txt" "pred.bad.jsonl: skipped 1 bad line(s), kept 99; by reason: bad field x1;"
check "... the query left without a prediction is a miss" has "$tmp/err6.txt" "no prediction for 1 of the 100 gold queries (counted as misses)"
check "... 100 gold queries scored" has "$tmp/out6.json" '"queries":100'
check "... skipped gold lines in the record" has "$tmp/out6.json" '"skipped_gold_lines":2'

if ((fails)); then echo "$fails check(s) failed" >&2; exit 1; fi
echo "all clip-eval checks passed"
