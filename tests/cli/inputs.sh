#!/usr/bin/env bash
# Real inputs: a folder of photos (nested, mixed formats incl. BMP, one format folders do not read, one
# corrupt file), a file list, string ids
# through clip-index / clip-query / clip-eval, --append of new files, and the contact sheet's query text.
# Usage: inputs.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" inputs
fixture_model "$F"

# The photos, and a TSV twin holding the same file bytes under integer ids.
$PY - "$tmp" <<'PY'
import base64, io, os, sys
from PIL import Image, ImageDraw
t = sys.argv[1]
p = os.path.join(t, "photos")
files = {"2023/summer/beach.jpg": "JPEG", "2023/cat.png": "PNG", "dog.webp": "WEBP", "anim/wave.gif": "GIF",
         "平面/红色.JPG": "JPEG", "old/scan.bmp": "BMP", "old/fax.tif": "TIFF"}
for i, (name, fmt) in enumerate(sorted(files.items())):
    im = Image.new("RGB", (80 + 7 * i, 60 + 5 * i), (40 * i % 256, 200 - 20 * i, 90 + 15 * i))
    d = ImageDraw.Draw(im)
    d.ellipse((10, 10, 40 + 3 * i, 45), fill=(255 - 30 * i, 30 * i, 128))
    os.makedirs(os.path.dirname(os.path.join(p, name)), exist_ok=True)
    im.save(os.path.join(p, name), fmt)
open(os.path.join(p, "2023/broken.jpg"), "wb").write(b"\xff\xd8\xff\xe0 not really a jpeg")
open(os.path.join(p, "notes.txt"), "w").write("not an image\n")
# TSV twin of the decodable ones (the TIFF is not read from folders; the corrupt file not at all)
ok = sorted(n for n in files if not n.endswith(".tif"))
assert "old/scan.bmp" in ok and open(os.path.join(p, "old/scan.bmp"), "rb").read(2) == b"BM"
with open(os.path.join(t, "twin.tsv"), "w") as f:
    for i, n in enumerate(ok):
        f.write("%d\t%s\n" % (i + 1, base64.b64encode(open(os.path.join(p, n), "rb").read()).decode()))
open(os.path.join(t, "twin_names.txt"), "w").write("\n".join(ok) + "\n")
with open(os.path.join(t, "texts.jsonl"), "w") as f:
    f.write('{"text_id": 1, "text": "海边的夏天", "image_ids": ["2023/summer/beach.jpg"]}\n')
    f.write('{"text_id": 2, "text": "一只猫", "image_ids": ["2023/cat.png", "dog.webp"]}\n')
    f.write('{"text_id": 3, "text": "红色的圆", "image_ids": ["平面/红色.JPG"]}\n')
PY
check "test photos made" test -s "$tmp/photos/dog.webp"

# 1. A corrupt file stops the run (exit 3, naming it); --on-error skip leaves it out.
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/x.clipfeat" 2>"$tmp/err1"
check "corrupt photo: exit 3" test $? -eq 3
# (the first bad file stops it: the TIFF, which folders do not read, is met when listing, before decoding)
check "error names the file" grep -qE "photos/(old/fax\.tif|2023/broken\.jpg)" "$tmp/err1"
check "nothing written" test ! -e "$tmp/x.clipfeat"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --on-error skip --image-out "$tmp/photos.jsonl" 2>"$tmp/err2"
check "folder with --on-error skip: exit 0" test $? -eq 0
check "the TIFF is named as a format folders do not read" has "$tmp/err2" "old/fax.tif: format '.tif' is not read from folders"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/twin.tsv" --image-out "$tmp/twin.jsonl"
check "TSV twin indexed" test $? -eq 0
$PY - "$tmp" <<'PY'
import json, sys
t = sys.argv[1]
names = open(f"{t}/twin_names.txt").read().split()
twin = {d["image_id"]: d["feature"] for d in map(json.loads, open(f"{t}/twin.jsonl"))}
got = [json.loads(l) for l in open(f"{t}/photos.jsonl")]
ids = [g["image_id"] for g in got]
assert ids == names, ids                       # path ids, in path order; the BMP too, no TIFF, no corrupt file
assert "old/scan.bmp" in ids
for g in got:
    assert g["feature"] == twin[names.index(g["image_id"]) + 1], g["image_id"]
print("folder ids and features equal the TSV twin's:", ids)
PY
check "folder: path ids, features identical to the TSV twin" test $? -eq 0

# 2. A store carries the string ids: clip-query prints paths (JSONL, TSV and cn_clip lines).
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --on-error skip --image-out "$tmp/photos.clipfeat" 2>/dev/null
"$bin/clip-index" "${MODEL[@]}" --texts "$tmp/texts.jsonl" --text-out "$tmp/texts.clipfeat"
"$bin/clip-query" -q --index "$tmp/photos.clipfeat" -t "一只猫" -k 10 >"$tmp/q.jsonl"
check "query hits are paths" $PY -c "
import json,sys; ids=[json.loads(l)['id'] for l in open('$tmp/q.jsonl')]
assert sorted(ids)==sorted(open('$tmp/twin_names.txt').read().split()), ids"
"$bin/clip-query" -q --index "$tmp/photos.clipfeat" -t "一只猫" -k 2 --format tsv | cut -f3 >"$tmp/q.tsv"
check "TSV column 3 is a path" grep -q '\.' "$tmp/q.tsv"
"$bin/clip-query" -q --index "$tmp/photos.clipfeat" --texts "$tmp/texts.jsonl" -k 3 --format cnclip >"$tmp/t2i.jsonl"
check "cn_clip lines keep integer text ids and path image ids" has "$tmp/t2i.jsonl" '"text_id":1,"image_ids":["'
# ... and image queries from the folder itself (the corrupt one skipped), excluding themselves
"$bin/clip-query" -q --index "$tmp/photos.clipfeat" --query-images "$tmp/photos" --on-error skip --exclude-self -k 1 >"$tmp/qi.jsonl" 2>/dev/null
check "image queries from a folder carry path query ids" has "$tmp/qi.jsonl" '"query_id":"2023/cat.png"'
check "--exclude-self with path ids" $PY -c "
import json; r=[json.loads(l) for l in open('$tmp/qi.jsonl')]; assert r and all(x['id']!=x['query_id'] for x in r), r"

# 3. clip-eval with path ids in the gold texts
"$bin/clip-eval" -q --image-feats "$tmp/photos.clipfeat" --text-feats "$tmp/texts.clipfeat" --texts "$tmp/texts.jsonl" \
  --write-topk "$tmp/pred" >"$tmp/eval.json"
check "clip-eval on path ids" $PY -c "
import json; r=json.load(open('$tmp/eval.json')); assert r['text_to_image']['queries']==3 and r['image_to_text']['queries']==4, r"
check "prediction files keep path ids" has "$tmp/pred.i2t.jsonl" '{"image_id": "2023/cat.png", "text_ids": ['
# 4. --append adds only new or changed files
before=$("$bin/clip-query" -q --index "$tmp/photos.clipfeat" -t x -k 100 | wc -l)
$PY -c "
from PIL import Image; Image.new('RGB', (50, 70), (10, 220, 30)).save('$tmp/photos/2024/new.png') " 2>/dev/null ||
  { mkdir -p "$tmp/photos/2024"; $PY -c "from PIL import Image; Image.new('RGB', (50, 70), (10, 220, 30)).save('$tmp/photos/2024/new.png')"; }
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --on-error skip --append --image-out "$tmp/photos.clipfeat" 2>"$tmp/err3" -v
after=$("$bin/clip-query" -q --index "$tmp/photos.clipfeat" -t x -k 100 | wc -l)
check "--append: one more row ($before -> $after)" test "$after" -eq $((before + 1))
check "--append: only the new file is encoded (the corrupt one is retried)" has "$tmp/err3" "2 of 8 images are new"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --on-error skip --append --image-out "$tmp/photos.clipfeat" -v 2>"$tmp/err4"
check "--append again: nothing new but the corrupt file" has "$tmp/err4" "1 of 8 images are new"
touch -d '2001-01-01' "$tmp/photos/dog.webp"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --on-error skip --append --image-out "$tmp/photos.clipfeat" -v 2>"$tmp/err5"
check "--append: a changed file is re-encoded" has "$tmp/err5" "1 changed since indexed"
after2=$("$bin/clip-query" -q --index "$tmp/photos.clipfeat" -t x -k 100 | wc -l)
check "--append: a changed file replaces its row" test "$after2" -eq "$after"

# 5. A file list: ids are the paths as written, files found from the list's folder
printf '# my picks\nphotos/dog.webp\n\nphotos/2023/cat.png\n' >"$tmp/picks.txt"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/picks.txt" --image-out "$tmp/picks.jsonl"
check "file list ids" $PY -c "
import json; ids=[json.loads(l)['image_id'] for l in open('$tmp/picks.jsonl')]; assert ids==['photos/2023/cat.png','photos/dog.webp'], ids"

# 6. The contact sheet shows the query text (Chinese) and frames right answers.
"$bin/clip-query" --index "$tmp/photos.clipfeat" --texts "$tmp/texts.jsonl" -k 3 --montage "$tmp/sheet.png" >/dev/null 2>"$tmp/err6"
check "montage written" test -s "$tmp/sheet.png"
check "a CJK font was found" test -z "$(grep 'no CJK font' "$tmp/err6")"
cp "$tmp/sheet.png" /tmp/x/sheet.png 2>/dev/null || true
$PY - "$tmp/sheet.png" <<'PY'
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
w, h = im.size
tile = 128
# label column: x in [6, 6 + 2*tile), one row per query of height tile + 14 + 6
rows = 3
for r in range(rows):
    y0 = 6 + r * (tile + 14 + 6)
    box = im.crop((6, y0, 6 + 2 * tile - 6, y0 + 40))
    dark = sum(1 for p in box.getdata() if sum(p) < 600)
    assert dark > 30, (r, dark)           # text pixels in the label area (background is white)
greens = sum(1 for p in im.getdata() if p == (0, 170, 60))
assert greens > 100, greens              # right answers framed
print("label areas hold text; green frames:", greens)
PY
check "montage: query text drawn in the label column, right answers framed" test $? -eq 0

# 7. clip-serve shows the photos from the folder: search results carry paths, /api/image/<path> gives the file.
"$bin/clip-serve" --index "$tmp/photos.clipfeat" --host 127.0.0.1 --port 0 2>"$tmp/serve.err" &
spid=$!
port=$("$src/scripts/serve_port.sh" "$tmp/serve.err" "$spid" 60)
if [[ -n $port ]]; then
  curl -s "http://127.0.0.1:$port/api/search/text" -H 'Content-Type: application/json' -d '{"text": "一只猫", "k": 3}' >"$tmp/s.json"
  check "clip-serve: result ids are paths" $PY -c "
import json; r=json.load(open('$tmp/s.json'))['results']; assert len(r)==3 and all('.' in x['id'] for x in r), r"
  curl -s -o "$tmp/served.webp" "http://127.0.0.1:$port/api/image/dog.webp"
  check "clip-serve: /api/image/<path> is the file itself" cmp -s "$tmp/served.webp" "$tmp/photos/dog.webp"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/image/2023%2Fcat.png?thumb=1")
  check "clip-serve: thumbnail of a nested photo (URL-encoded path)" test "$code" = 200
else
  check "clip-serve started (it says: $(tail -2 "$tmp/serve.err"))" false
fi
kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null

echo "$fails failure(s)"
test "$fails" -eq 0
