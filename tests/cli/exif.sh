#!/usr/bin/env bash
# --exif-transpose: a photo stored sideways with an EXIF orientation gives, with the flag, the
# features of the same photo stored upright (bit for bit), and without it cn_clip's features of the
# pixels as stored; the flag is recorded in a store's metadata, spelled the same in every tool that
# decodes images for the model, and clip-query --image takes it too, or follows a store built with
# it. clip-serve's thumbnails are upright whatever the flag (as browsers show the file itself).
# Usage: exif.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" exif
fixture_model "$F" -q

# upright.png (48x32) and the same pixels turned 90 degrees clockwise, with orientation 8 (Pillow's
# exif_transpose turns them back with ROTATE_90), as PNG and as a lossless WebP.
mkdir -p "$tmp/photos"
$PY - "$tmp/photos" <<'PY'
import sys
import numpy as np
from PIL import Image
d = sys.argv[1]
y, x = np.mgrid[0:32, 0:48]
a = np.stack([(x * 5) % 256, (y * 8) % 256, ((x // 6 + y // 4) % 2) * 255], -1).astype(np.uint8)
up = Image.fromarray(a, "RGB")
up.save(f"{d}/upright.png")
ex = Image.Exif()
ex[0x0112] = 8
side = up.transpose(Image.ROTATE_270)
side.save(f"{d}/sideways.png", exif=ex.tobytes())
from PIL import ImageOps
assert ImageOps.exif_transpose(Image.open(f"{d}/sideways.png")).tobytes() == up.tobytes()
PY
check "the photos were written" test -s "$tmp/photos/sideways.png"

feat() {  # feat FILE.jsonl ID: the feature of one image as text
  $PY -c "import json,sys; [print(json.dumps(d['feature'])) for d in map(json.loads, open(sys.argv[1])) if d['image_id']==sys.argv[2]]" "$1" "$2"
}
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/plain.jsonl"
check "clip-index without the flag: exit 0" test $? -eq 0
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/up.jsonl" --exif-transpose
check "clip-index --exif-transpose: exit 0" test $? -eq 0
check "with --exif-transpose the sideways photo has the upright one's features, bit for bit" \
  test "$(feat "$tmp/up.jsonl" sideways.png)" = "$(feat "$tmp/up.jsonl" upright.png)"
check "without it the sideways photo is encoded as stored (other features, as in cn_clip)" \
  test "$(feat "$tmp/plain.jsonl" sideways.png)" != "$(feat "$tmp/plain.jsonl" upright.png)"
check "the flag does not touch a photo without an orientation" \
  test "$(feat "$tmp/plain.jsonl" upright.png)" = "$(feat "$tmp/up.jsonl" upright.png)"

"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/up.clipfeat" --exif-transpose
check "a --exif-transpose store records it in its preprocessing metadata" grep -aq '"exif_transpose":true' "$tmp/up.clipfeat"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/plain.clipfeat"
check "a store without it records no such key" bash -c "! grep -aq 'exif_transpose' '$tmp/plain.clipfeat'"

for tool in clip-index clip-query clip-classify clip-serve; do
  "$bin/$tool" --help >"$tmp/help.txt" 2>&1
  check "$tool --help lists --exif-transpose" has "$tmp/help.txt" "--exif-transpose"
done

# clip-query --image with the flag: the sideways file finds the upright photo with the score of itself.
"$bin/clip-query" "${MODEL[@]}" --index "$tmp/plain.clipfeat" --image "$tmp/photos/sideways.png" -k 2 --exif-transpose >"$tmp/q.jsonl"
check "clip-query --image --exif-transpose: exit 0" test $? -eq 0
check "... its best hit is the upright photo at score 1" $PY -c "
import json; r=[json.loads(l) for l in open('$tmp/q.jsonl')]; h=r[0]['hits'] if 'hits' in r[0] else r
best=h[0]; assert best['id']=='upright.png' and abs(best['score']-1) < 1e-5, best"
# Against a store built with --exif-transpose, query images are turned upright without the flag.
"$bin/clip-query" "${MODEL[@]}" --index "$tmp/up.clipfeat" --image "$tmp/photos/sideways.png" -k 2 >"$tmp/q2.jsonl"
check "clip-query --image against an upright store: exit 0" test $? -eq 0
check "... the query is turned upright as the store's images were (score 1 for both photos)" $PY -c "
import json; r=[json.loads(l) for l in open('$tmp/q2.jsonl')]; h=r[0]['hits'] if 'hits' in r[0] else r
assert len(h)==2 and all(abs(x['score']-1) < 1e-5 for x in h), h"
"$bin/clip-query" "${MODEL[@]}" --index "$tmp/plain.clipfeat" --image "$tmp/photos/sideways.png" -k 2 >"$tmp/q3.jsonl"
check "... and against a store without it, as stored (its best hit is itself)" $PY -c "
import json; r=[json.loads(l) for l in open('$tmp/q3.jsonl')]; h=r[0]['hits'] if 'hits' in r[0] else r
assert h[0]['id']=='sideways.png' and abs(h[0]['score']-1) < 1e-5 and abs(h[1]['score']-1) > 1e-3, h"

# clip-serve's thumbnail of the sideways photo is upright (landscape), without the flag; against the
# upright store an upload of the sideways file is turned upright too (score 1 for both photos).
"$bin/clip-serve" --index "$tmp/up.clipfeat" --host 127.0.0.1 --port 0 2>"$tmp/serve.err" &
spid=$!
port=$("$src/scripts/serve_port.sh" "$tmp/serve.err" "$spid" 60)
if [[ -n $port ]]; then
  curl -s -o "$tmp/thumb.jpg" "http://127.0.0.1:$port/api/image/sideways.png?thumb=1"
  check "clip-serve: the thumbnail of the sideways photo is upright (48x32)" $PY -c "
from PIL import Image; im=Image.open('$tmp/thumb.jpg'); assert im.size==(48, 32), im.size"
  curl -s "http://127.0.0.1:$port/api/search/image" -F image=@"$tmp/photos/sideways.png" -F k=2 >"$tmp/up.json"
  check "clip-serve: an upload against the upright store is turned upright (score 1 for both photos)" $PY -c "
import json; r=json.load(open('$tmp/up.json'))['results']; assert len(r)==2 and all(abs(x['score']-1) < 1e-5 for x in r), r"
else
  check "clip-serve started (it says: $(tail -2 "$tmp/serve.err"))" false
fi
kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null

cp "$tmp/photos/upright.png" "$tmp/photos/upright2.png"
fixture_model "$F"  # warnings on
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/plain.clipfeat" --append --exif-transpose \
  2>"$tmp/append.err"
check "--append with the other --exif-transpose setting warns that the store mixes both" has "$tmp/append.err" "mixes"
exit $((fails > 0))
