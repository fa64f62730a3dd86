#!/usr/bin/env bash
# cn_clip's LMDB layout: a dataset written to {data}/lmdb/{split}/imgs and pairs exactly as cn_clip's
# build_lmdb_dataset.py writes it (Python's lmdb module, pickled (image_id, text_id, text) tuples)
# gives the same features, recall and fine-tuning losses as its TSV/JSONL twin.
# Usage: lmdb.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
demo=$src/data/shapes-zh
F=$shared/fixtures/cnclip-tiny
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" lmdb
if ! $PY -c 'import lmdb' 2>/dev/null; then echo "FAIL: python3-lmdb is missing (scripts/setup.sh installs it)" >&2; exit 1; fi

# The TSV/JSONL twin: 16 training images (80 captions), in an order that is not the id order.
tsv=$tmp/tsv; lm=$tmp/lm
mkdir -p "$tsv" "$lm"
head -n 16 "$demo/train_imgs.tsv" | sort -r >"$tsv/train_imgs.tsv"
ids=$(cut -f1 "$tsv/train_imgs.tsv" | paste -sd'|')
grep -E "\"image_ids\": \[($ids)\]" "$demo/train_texts.jsonl" >"$tsv/train_texts.jsonl"
cp "$demo/vocab.txt" "$tsv/"; cp "$demo/vocab.txt" "$lm/"

# The LMDB twin, written the way cn_clip/preprocess/build_lmdb_dataset.py does: pairs keyed "0", "1",
# ... in the JSONL's order (one per image id of each text), images keyed by their id, counts under
# num_samples / num_images, commits every few records.
$PY - "$tsv" "$lm/lmdb" train <<'PY'
import json, os, pickle, sys
import lmdb
data, out, split = sys.argv[1:4]
d = os.path.join(out, split)
os.makedirs(d, exist_ok=True)
env = lmdb.open(os.path.join(d, "pairs"), map_size=1 << 30)
txn = env.begin(write=True)
n = 0
for line in open(os.path.join(data, f"{split}_texts.jsonl"), encoding="utf-8"):
    obj = json.loads(line.strip())
    for image_id in obj["image_ids"]:
        txn.put(key=str(n).encode("utf-8"), value=pickle.dumps((image_id, obj["text_id"], obj["text"])))
        n += 1
        if n % 7 == 0:
            txn.commit(); txn = env.begin(write=True)
txn.put(key=b"num_samples", value=str(n).encode("utf-8"))
txn.commit(); env.close()
env = lmdb.open(os.path.join(d, "imgs"), map_size=1 << 30)
txn = env.begin(write=True)
m = 0
for line in open(os.path.join(data, f"{split}_imgs.tsv"), encoding="utf-8"):
    image_id, b64 = line.strip().split("\t")
    txn.put(key=str(image_id).encode("utf-8"), value=b64.encode("utf-8"))
    m += 1
    if m % 5 == 0:
        txn.commit(); txn = env.begin(write=True)
txn.put(key=b"num_images", value=str(m).encode("utf-8"))
txn.commit(); env.close()
print(f"LMDB: {n} pairs, {m} images")
PY
check "LMDB written by the cn_clip recipe" test -s "$lm/lmdb/train/pairs/data.mdb"

fixture_model "$F" -q
# 1. clip-index: the same features per id
for d in tsv lm; do
  "$bin/clip-index" "${MODEL[@]}" --data "$tmp/$d" --split train --image-out "$tmp/$d.img.jsonl" --text-out "$tmp/$d.txt.jsonl"
  check "clip-index --data $d: exit 0" test $? -eq 0
done
$PY - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
# The LMDB holds the images in its keys' order, the TSV in the file's: batched with other rows, a
# feature may differ in its last bits on CPUs whose BLAS rounds by the block's shape (OpenBLAS's AVX2
# kernels on AMD's); texts come in the same order on both sides.
for kind, key in (("img", "image_id"), ("txt", "text_id")):
    a = {d[key]: d["feature"] for d in map(json.loads, open(f"{t}/tsv.{kind}.jsonl"))}
    b = {d[key]: d["feature"] for d in map(json.loads, open(f"{t}/lm.{kind}.jsonl"))}
    assert a.keys() == b.keys() and len(a) > 10, (kind, len(a), len(b))
    worst = max(abs(x - y) for i in a for x, y in zip(a[i], b[i]))
    assert worst <= 1e-5, (kind, worst)
    print(kind, len(a), "features equal" if worst == 0 else f"features within {worst:.2g}")
PY
check "LMDB features equal the TSV/JSONL twin's" test $? -eq 0

# 2. clip-eval from the LMDB pairs: the same recall as from the JSONL
"$bin/clip-eval" -q --image-feats "$tmp/tsv.img.jsonl" --text-feats "$tmp/tsv.txt.jsonl" --data "$tmp/lm" --split train >"$tmp/e.lm.json"
check "clip-eval --data LMDB: exit 0" test $? -eq 0
"$bin/clip-eval" -q --image-feats "$tmp/tsv.img.jsonl" --text-feats "$tmp/tsv.txt.jsonl" --texts "$tmp/tsv/train_texts.jsonl" >"$tmp/e.tsv.json"
check "clip-eval: LMDB gold equals JSONL gold" $PY -c "
import json; a=json.load(open('$tmp/e.lm.json')); b=json.load(open('$tmp/e.tsv.json'))
assert a['text_to_image']==b['text_to_image'] and a['image_to_text']==b['image_to_text'], (a, b)"

# 3. clip-finetune: the same training order and losses
for d in tsv lm; do
  "$bin/clip-finetune" --data "$tmp/$d" --vision-model "$demo/ViT-Demo.json" --text-model "$demo/RBT-Demo.json" \
    --batch-size 16 --log-interval 1 --threads 2 --lr 1e-3 --warmup 2 --max-steps 4 --no-validation -q -o "$tmp/run.$d"
  check "clip-finetune --data $d: exit 0" test $? -eq 0
done
$PY - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
def losses(d):
    return [r["loss"] for r in map(json.loads, open(f"{t}/run.{d}/metrics.jsonl")) if r.get("type") == "train"]
a, b = losses("tsv"), losses("lm")
assert len(a) == 4 and a == b, (a, b)
print("losses identical:", a)
PY
check "fine-tuning losses equal the twin's" test $? -eq 0

# 4. A damaged pairs value is reported with its key; --strict stops
$PY - "$lm/lmdb/train/pairs" <<'PY'
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=1 << 30)
with env.begin(write=True) as txn:
    txn.put(b"3", b"\x80\x04not a pickle")
PY
"$bin/clip-index" "${MODEL[@]}" --data "$tmp/lm" --split train --strict --text-out "$tmp/bad.jsonl" 2>"$tmp/err"
check "damaged pair with --strict: exit 3" test $? -eq 3
check "error names the pair" has "$tmp/err" "pair 3"

echo "$fails failure(s)"
test "$fails" -eq 0
