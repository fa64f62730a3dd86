#!/usr/bin/env bash
# clip-classify: its ranking and probabilities equal cn_clip's zero-shot protocol computed here from
# clip-index's features (class feature = normalised mean of normalised template features; softmax of
# 100 x cosine), and --ground-truth accuracy counts what it should.
# Usage: classify.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" classify
fixture_model "$F" -q
printf '狗\n猫\n汽车\n\n一朵花\n' >"$tmp/labels.txt"
T1='一张{}的照片' T2='{}的素描。'

"$bin/clip-classify" "${MODEL[@]}" --images "$F/images.tsv" --labels "$tmp/labels.txt" --template "$T1" --template "$T2" \
  -k 3 >"$tmp/pred.jsonl"
check "clip-classify: exit 0" test $? -eq 0
# The protocol by hand, from clip-index: the template texts as a texts JSONL, and the image features.
$PY - "$tmp" "$T1" "$T2" <<'PY'
import json, sys
t, *tmpl = sys.argv[1:]
labels = [l.strip() for l in open(f"{t}/labels.txt") if l.strip()]
with open(f"{t}/prompts.jsonl", "w") as f:
    for c, lab in enumerate(labels):
        for j, tp in enumerate(tmpl):
            f.write(json.dumps({"text_id": c * 100 + j, "text": tp.replace("{}", lab), "image_ids": []}, ensure_ascii=False) + "\n")
PY
"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --texts "$tmp/prompts.jsonl" --image-out "$tmp/img.jsonl" --text-out "$tmp/txt.jsonl"
$PY - "$tmp" <<'PY'
import json, math, sys
t = sys.argv[1]
labels = [l.strip() for l in open(f"{t}/labels.txt") if l.strip()]
txt = {d["text_id"]: d["feature"] for d in map(json.loads, open(f"{t}/txt.jsonl"))}
norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]
classes = []
for c in range(len(labels)):
    fs = [norm(txt[c * 100 + j]) for j in range(2)]
    classes.append(norm([sum(col) / len(fs) for col in zip(*fs)]))
got = {}
for d in map(json.loads, open(f"{t}/pred.jsonl")):
    got.setdefault(d["image_id"], []).append(d)
n = 0
for d in map(json.loads, open(f"{t}/img.jsonl")):
    v = norm(d["feature"])
    logits = [100 * sum(a * b for a, b in zip(v, c)) for c in classes]
    m = max(logits); e = [math.exp(x - m) for x in logits]; s = sum(e)
    probs = [x / s for x in e]
    order = sorted(range(len(labels)), key=lambda i: -probs[i])[:3]
    rows = got[d["image_id"]]
    assert [r["rank"] for r in rows] == [1, 2, 3], rows
    assert [r["label"] for r in rows] == [labels[i] for i in order], (rows, order)
    for r, i in zip(rows, order):
        assert abs(r["score"] - probs[i]) < 2e-4, (r, probs[i])
    n += 1
assert n == len(got) == 7, (n, len(got))
# ground truth: the right top-1 for the first 4 images, a wrong label for the others
with open(f"{t}/gt.tsv", "w") as f:
    for k, (iid, rows) in enumerate(sorted(got.items())):
        f.write("%s\t%s\n" % (iid, rows[0]["label"] if k < 4 else rows[-1]["label"] if k < 6 else "不存在的类"))
print("top labels and probabilities agree with the protocol on", n, "images")
PY
check "top labels and scores equal the protocol over clip-index's features" test $? -eq 0

"$bin/clip-classify" "${MODEL[@]}" --images "$F/images.tsv" --labels "$tmp/labels.txt" --template "$T1" --template "$T2" \
  --ground-truth "$tmp/gt.tsv" >"$tmp/acc.json" 2>/dev/null
check "--ground-truth: accuracy JSON (4 of 7 top-1, 6 of 7 top-5)" $PY -c "
import json; a=json.load(open('$tmp/acc.json'))
assert a['images']==7 and abs(a['top1']-400/7)<1e-9 and abs(a['top5']-600/7)<1e-9, a"

# The built-in cn_clip templates: 80 of them, all used by default
"$bin/clip-classify" -c "$F/checkpoints/vit_bert.pt" --vision-model "$F/configs/ViT-Tiny-P32.json" \
  --text-model "$F/configs/RBT-Tiny-H64-L2.json" --vocab "$F/vocab.txt" --images "$F/images.tsv" \
  --labels "$tmp/labels.txt" --templates cnclip -k 1 >"$tmp/p80.jsonl" 2>"$tmp/err80"
check "--templates cnclip: exit 0, one line per image" test "$(wc -l <"$tmp/p80.jsonl")" -eq 7
check "--templates cnclip: 80 templates" has "$tmp/err80" "4 classes x 80 templates"
"$bin/clip-classify" "${MODEL[@]}" --images "$F/images.tsv" --labels "$tmp/labels.txt" --template "没有占位符" 2>"$tmp/err"
check "a template without {} is a usage error (exit 2)" test $? -eq 2

echo "$fails failure(s)"
test "$fails" -eq 0
