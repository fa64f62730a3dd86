#!/usr/bin/env bash
# End-to-end retrieval loop on the reference fixtures: clip-index -> clip-query -> clip-eval, checked
# against the features the original Python implementation wrote, plus the documented error exits.
# Arguments: BIN_DIR SOURCE_DIR SHARED_DIR
set -uo pipefail
BIN=$1; SRC=$2; SHARED=$3
F=$SHARED/fixtures/cnclip-tiny
PY=/usr/bin/python3
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
MODEL=(-c "$F/checkpoints/vit_bert.pt" --vision-model "$F/configs/ViT-Tiny-P32.json" --text-model "$F/configs/RBT-Tiny-H64-L2.json" --vocab "$F/vocab.txt")

# 1. features as cn_clip's extract_features writes them, and as a store
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --texts "$F/texts.jsonl" \
  --image-out "$T/img.jsonl" --text-out "$T/txt.jsonl" || fail "clip-index jsonl"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --texts "$F/texts.jsonl" \
  --image-out "$T/img.clipfeat" --text-out "$T/txt.clipfeat" || fail "clip-index store"
$PY - "$T" "$F" <<'PYEOF' || fail "features differ from cn_clip's"
import json, sys
t, f = sys.argv[1], sys.argv[2]
for kind, key in (("image", "image_id"), ("text", "text_id")):
    exp = {}
    for l in open(f"{f}/expected/{kind}_features.jsonl"):
        d = json.loads(l)
        if d["model"] == "vit": exp[d[key]] = d["feature"]
    got = [json.loads(l) for l in open(f"{t}/{'img' if kind == 'image' else 'txt'}.jsonl")]
    assert len(got) == len(exp), (kind, len(got), len(exp))
    worst = max(abs(a - b) for g in got for a, b in zip(g["feature"], exp[g[key]]))
    assert worst <= 1e-5, (kind, worst)
    print(f"{kind}: {len(got)} features, max |diff| vs cn_clip {worst:.2e}")
PYEOF

# 1b. one-tower jobs (texts only, images only) write the same bytes as the two-tower run, and their stores
# the same weights_hash (the whole checkpoint's), so clip-eval still pairs them
"$BIN/clip-index" -q "${MODEL[@]}" --texts "$F/texts.jsonl" --text-out "$T/txt1.jsonl" || fail "clip-index texts only"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$T/img1.jsonl" || fail "clip-index images only"
cmp -s "$T/txt1.jsonl" "$T/txt.jsonl" || fail "text-only features differ from the two-tower run"
cmp -s "$T/img1.jsonl" "$T/img.jsonl" || fail "image-only features differ from the two-tower run"
"$BIN/clip-index" -q "${MODEL[@]}" --texts "$F/texts.jsonl" --text-out "$T/txt1.clipfeat" 2> "$T/log1" || fail "text-only store"
$PY - "$T" <<'PYEOF' || fail "one-tower store metadata"
import json, struct, sys
t = sys.argv[1]
def meta(p):  # docs/store-format.md: meta_size (u32) at offset 36, the JSON at offset 64
    b = open(p, "rb").read()
    (n,) = struct.unpack_from("<I", b, 36)
    return json.loads(b[64:64 + n].decode())
a, b = meta(f"{t}/txt1.clipfeat"), meta(f"{t}/txt.clipfeat")
assert a["weights_hash"] and a["weights_hash"] == b["weights_hash"], (a["weights_hash"], b["weights_hash"])
print("one-tower store weights_hash", a["weights_hash"], "= two-tower")
PYEOF
"$BIN/clip-index" "${MODEL[@]}" --texts "$F/texts.jsonl" --text-out "$T/txt2.jsonl" 2> "$T/log2" || fail "clip-index log"
grep -q "text tower only" "$T/log2" || fail "a text-only job should say it loads the text tower only: $(cat "$T/log2")"

# 2. a text query: ranks and scores equal to the brute force over cn_clip's own features
Q="一只金毛犬在草地上奔跑"
"$BIN/clip-query" -q --index "$T/img.clipfeat" -t "$Q" -k 3 > "$T/q.jsonl" || fail "clip-query"
[ "$(wc -l < "$T/q.jsonl")" -eq 3 ] || fail "expected 3 hits"
$PY - "$T" "$F" <<'PYEOF' || fail "query hits differ from the brute force"
import json, sys
t, f = sys.argv[1], sys.argv[2]
img = {d["image_id"]: d["feature"] for d in map(json.loads, open(f"{f}/expected/image_features.jsonl")) if d["model"] == "vit"}
txt = [d for d in map(json.loads, open(f"{f}/expected/text_features.jsonl")) if d["model"] == "vit" and d["text_id"] == 100][0]["feature"]
ranked = sorted(img, key=lambda i: -sum(a * b for a, b in zip(img[i], txt)))
hits = [json.loads(l) for l in open(f"{t}/q.jsonl")]
assert [h["id"] for h in hits] == ranked[:3], (hits, ranked[:3])
for h in hits:
    ref = sum(a * b for a, b in zip(img[h["id"]], txt))
    assert abs(h["score"] - ref) < 1e-5, (h, ref)
    assert h["query"] == "一只金毛犬在草地上奔跑"
print("query ranks and scores match the brute force:", [h["id"] for h in hits])
PYEOF

# 3. TSV for cut/sort; a closed pipe is success
"$BIN/clip-query" -q --index "$T/img.clipfeat" -t "$Q" -k 2 --format tsv | awk -F'\t' 'NF!=4{exit 1}' || fail "tsv columns"
"$BIN/clip-query" -q --index "$T/img.clipfeat" -t "$Q" -k 7 | head -1 > /dev/null
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "closed pipe should exit 0"

# 4. clip-eval from features and from clip-query's cn_clip predictions agree
"$BIN/clip-query" -q --index "$T/img.clipfeat" --texts "$F/texts.jsonl" -k 7 --format cnclip > "$T/t2i.jsonl" || fail "cnclip format"
head -1 "$T/t2i.jsonl" | grep -q '"text_id":100,"image_ids":\[' || fail "cnclip line shape: $(head -1 "$T/t2i.jsonl")"
"$BIN/clip-eval" -q --image-feats "$T/img.clipfeat" --text-feats "$T/txt.clipfeat" --texts "$F/texts.jsonl" > "$T/eval.json" || fail "clip-eval feats"
grep -q '"text_to_image"' "$T/eval.json" || fail "eval JSON"

# 5. errors: documented exit codes, nothing partial left behind
"$BIN/clip-index" -q -c "$F/checkpoints/vit_bert.pt" --vision-model NoSuchModel --vocab "$F/vocab.txt" --images "$F/images.tsv" --image-out "$T/x.clipfeat" 2> "$T/err"
[ $? -eq 2 ] || fail "unknown model name should exit 2"; grep -q "ViT-B-16" "$T/err" || fail "known names not listed"
"$BIN/clip-index" -q -c "$F/checkpoints/vit_bert.pt" --vision-model "$F/configs/ViT-Tiny-P32.json" --text-model "$F/configs/RBT-Tiny-H64-L2.json" \
  --images "$F/images.tsv" --image-out "$T/x.clipfeat" 2> "$T/err"
[ $? -eq 4 ] || fail "missing vocab should exit 4"; grep -q -- "--vocab" "$T/err" || fail "vocab remedy"
{ head -2 "$F/images.tsv"; printf '4242\tbm90IGFuIGltYWdl\n'; tail -n +3 "$F/images.tsv"; } > "$T/bad.tsv"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$T/bad.tsv" --image-out "$T/bad.clipfeat" 2> "$T/err"
[ $? -eq 3 ] || fail "undecodable image should exit 3"; [ ! -e "$T/bad.clipfeat" ] || fail "partial output written"
grep -q "4242" "$T/err" && grep -q ":3" "$T/err" || fail "error should name the line and image_id: $(cat "$T/err")"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$T/bad.tsv" --image-out "$T/bad.clipfeat" --on-error skip || fail "--on-error skip"
"$BIN/clip-query" -q --index "$T/bad.clipfeat" -t "$Q" -k 100 | grep -c '"rank"' | grep -qx 7 || fail "skip should keep 7 images"
head -c 200 "$T/img.clipfeat" > "$T/trunc.clipfeat"
"$BIN/clip-query" -q --index "$T/trunc.clipfeat" -t "$Q" 2> "$T/err"; [ $? -eq 3 ] || fail "truncated store should exit 3"
"$BIN/clip-query" -q --index "$T/img.clipfeat" -t "$Q" --threshold 0.99 > /dev/null; [ $? -eq 1 ] || fail "no hit above threshold should exit 1"
echo "retrieval CLI: all checks passed"
