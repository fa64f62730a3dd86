#!/usr/bin/env bash
# --decode exact|fast|device: the default is exact (byte-identical features to no flag), fast is
# accepted by every tool that decodes images for the model, gives features close to exact's (and
# different for JPEGs), is recorded in a store's preprocessing metadata; device (the resize on the
# model's device, here the CPU) stays within a cosine of 0.9999 of exact; a bad value is a usage error
# (exit 2).
# Usage: decode.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" decode
fixture_model "$F" -q

"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/default.jsonl"
check "clip-index without --decode: exit 0" test $? -eq 0
"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/exact.jsonl" --decode exact
check "clip-index --decode exact: exit 0" test $? -eq 0
check "--decode exact is the default (same bytes)" cmp -s "$tmp/default.jsonl" "$tmp/exact.jsonl"
"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/fast.jsonl" --decode fast
check "clip-index --decode fast: exit 0" test $? -eq 0
"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/device.jsonl" --decode device
check "clip-index --decode device: exit 0" test $? -eq 0
$PY - "$tmp" >"$tmp/cos.txt" <<'PY'
import json, sys
t = sys.argv[1]
load = lambda n: {d["image_id"]: d["feature"] for d in map(json.loads, open(f"{t}/{n}.jsonl"))}
ex = load("exact")
for mode in ("fast", "device"):
    got = load(mode)
    assert ex.keys() == got.keys(), (ex.keys(), got.keys())
    print(mode, "min", min(sum(a * b for a, b in zip(ex[i], got[i])) for i in ex))
    print(mode, "differ", sum(ex[i] != got[i] for i in ex))
    print(mode, "png_same", int(ex[1000562] == got[1000562] and ex[1001004] == got[1001004]))
PY
check "fast features: cosine to exact >= 0.99 for every image" awk '$1=="fast" && $2=="min" && $3+0 >= 0.99 {ok=1} END {exit !ok}' "$tmp/cos.txt"
check "fast features differ from exact for the JPEGs (5 of 7)" has "$tmp/cos.txt" "fast differ 5"
check "fast leaves PNGs exact" has "$tmp/cos.txt" "fast png_same 1"
check "device features: cosine to exact >= 0.9999 for every image" awk '$1=="device" && $2=="min" && $3+0 >= 0.9999 {ok=1} END {exit !ok}' "$tmp/cos.txt"
check "device features are computed apart from exact's (some differ)" awk '$1=="device" && $2=="differ" && $3+0 >= 1 {ok=1} END {exit !ok}' "$tmp/cos.txt"

"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/device.clipfeat" --decode device
check "a --decode device store records it in its preprocessing metadata" grep -aq '"decode":"device"' "$tmp/device.clipfeat"

"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/fast.clipfeat" --decode fast
check "store of --decode fast: exit 0" test $? -eq 0
check "a --decode fast store records it in its preprocessing metadata" grep -aq '"decode":"fast"' "$tmp/fast.clipfeat"
"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/exact.clipfeat"
check "an exact store records no decode key (metadata as before)" bash -c "! grep -aq '\"decode\"' '$tmp/exact.clipfeat'"

"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/bogus.jsonl" --decode bogus 2>"$tmp/err.txt"
check "--decode bogus: usage error, exit 2" test $? -eq 2
check "--decode bogus: the message names the flag" has "$tmp/err.txt" "--decode"
check "--decode bogus: nothing written" test ! -e "$tmp/bogus.jsonl"

# The same flag, spelled the same, in every tool that decodes images for the model.
for tool in clip-index clip-query clip-classify clip-serve; do
  "$bin/$tool" --help >"$tmp/help.txt" 2>&1
  check "$tool --help lists --decode" has "$tmp/help.txt" "--decode"
done
"$bin/clip-query" --index "$tmp/exact.clipfeat" "${MODEL[@]}" --query-images "$F/images.tsv" --decode fast -k 1 \
  >"$tmp/q.jsonl"
check "clip-query --decode fast --query-images: exit 0" test $? -eq 0
check "clip-query --decode fast: one answer per image" test "$(wc -l <"$tmp/q.jsonl")" -eq 7
"$bin/clip-query" --index "$tmp/exact.clipfeat" "${MODEL[@]}" --query-images "$F/images.tsv" --decode gpu -k 1 \
  >/dev/null 2>&1
check "clip-query --decode gpu (not offered): exit 2" test $? -eq 2
exit $((fails > 0))
