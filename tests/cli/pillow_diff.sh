#!/usr/bin/env bash
# Bad input, decoded as Pillow decodes it: the small images of tests/data/image (PNG, JPEG, WebP,
# GIF, BMP, PNM) cut short, with bytes changed or removed, or (PNG) with a chunk length changed,
# a fixed pseudo-random set of a few thousand files. Pillow 9.4 and our decoders must agree on each
# file: both refuse it, or both decode it to the same pixels. The one known difference is left
# out: giflib reads past some invalid LZW codes where Pillow stops ("broken data stream").
# Then 400 random images of every mode, 1 to 640 pixels a side (PNG, and JPEG for some L and RGB
# ones), resized (bicubic, then to RGB) to random sizes: the same bytes as Pillow's.
# Usage: pillow_diff.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2
PY=/usr/bin/python3
source "$(dirname "$0")/checks.bash" pillowdiff
$PY -c 'import PIL, numpy' 2>/dev/null || { echo "skip: needs Python with Pillow (scripts/setup.sh installs it)"; exit 77; }

mkdir -p "$tmp/cases"
$PY - "$src/tests/data/image" "$tmp/cases" >"$tmp/pillow.tsv" <<'PY'
import hashlib, io, os, random, struct, sys
from PIL import Image

src, out = sys.argv[1], sys.argv[2]
rng = random.Random(20261206)
bases = [f for f in sorted(os.listdir(src)) if f.rsplit(".", 1)[-1] in ("png", "jpg", "webp", "gif", "bmp", "ppm")]
for f in bases:
    base = open(os.path.join(src, f), "rb").read()
    ext = f.rsplit(".", 1)[-1]
    for k in range(150):
        d = bytearray(base)
        r = rng.random()
        if r < 0.35:
            d = d[:rng.randint(2, len(d))]
        elif r < 0.65:
            for _ in range(rng.randint(1, 4)):
                d[rng.randrange(2, len(d))] = rng.randrange(256)
        elif r < 0.8 or ext != "png":
            p = rng.randrange(2, len(d))
            d = d[:p] + d[p + rng.randint(1, 20):]
        else:  # a PNG chunk's length changed, the file maybe cut after it
            p, starts = 8, []
            while p + 8 <= len(d):
                starts.append(p)
                p += 12 + struct.unpack(">I", d[p:p + 4])[0]
            p = rng.choice(starts)
            d[p:p + 4] = struct.pack(">I", max(0, struct.unpack(">I", d[p:p + 4])[0] + rng.randint(-30, 30)))
            if rng.random() < 0.5:
                d = d[:rng.randint(p, len(d))]
        name = f"{f}.{k:03d}.{ext}"
        open(os.path.join(out, name), "wb").write(d)
        try:
            im = Image.open(io.BytesIO(bytes(d)))
            im.load()
            px = im.convert("L").tobytes() if im.mode == "1" else im.tobytes()
            print(f"{name}\tok\t{hashlib.sha256(px).hexdigest()}")
        except Exception as e:
            print(f"{name}\terr\t{type(e).__name__}: {e}".replace("\n", " "))
PY
# Pillow's bicubic resize (then convert('RGB'), cn_clip's eval order) of random images: every mode the
# decoders give, sizes from 1 to 640 pixels a side, down- and up-scaled, saved as PNG, or for some L
# and RGB images as JPEG (every chroma subsampling, progressive or not, odd sizes).
$PY - "$tmp/cases" >>"$tmp/pillow.tsv" <<'PY'
import hashlib, io, os, random, sys
import numpy as np
from PIL import Image, ImageFile

ImageFile.MAXBLOCK = 1 << 24  # progressive/optimised JPEGs are written in one block
out = sys.argv[1]
rng = random.Random(6)
nrng = np.random.RandomState(6)
side = lambda: rng.choice([rng.randint(1, 8), rng.randint(9, 100), rng.randint(101, 640)])
for i in range(400):
    mode = rng.choice(["L", "LA", "RGB", "RGBA", "P"])
    w, h = side(), side()
    tw, th = rng.choice([(224, 224), (side(), side()), (max(1, w // 2), h), (w * 2, max(1, h // 3))])
    tw, th = min(tw, 700), min(th, 700)
    c = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[mode]
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * (3 + k) + y * (5 + 2 * k)) % 256 for k in range(c)], -1)
    a = np.where(((x // 7 + y // 5) % 4 == 0)[..., None], 255 - a, a)
    a = np.clip(a + nrng.randint(-40, 41, a.shape), 0, 255).astype(np.uint8)
    if mode == "P":
        im = Image.fromarray(a[..., 0], "L").convert("P")
        im.putpalette(list(nrng.randint(0, 256, 768)))
    else:
        im = Image.fromarray(a[..., 0] if c == 1 else a, mode)
    name = f"resize{i:03d}_{mode}_{w}x{h}_to_{tw}x{th}.png"
    buf = io.BytesIO()
    if i % 2 and mode in ("L", "RGB"):  # JPEGs of every subsampling, progressive or not, odd sizes
        name = name[:-4] + ".jpg"
        im.save(buf, "JPEG", quality=rng.randint(30, 98), subsampling=rng.choice([0, 1, 2]),
                progressive=rng.random() < 0.4, optimize=rng.random() < 0.3)
    else:
        im.save(buf, "PNG")
    open(os.path.join(out, name), "wb").write(buf.getvalue())
    back = Image.open(io.BytesIO(buf.getvalue()))
    back.load()
    r = back.resize((tw, th), Image.BICUBIC).convert("RGB")
    print(f"{name}\tok\t{hashlib.sha256(back.tobytes()).hexdigest()}\t{hashlib.sha256(r.tobytes()).hexdigest()}")
PY
check "the cases were written" test -s "$tmp/pillow.tsv"

CLIP_DECODE_DIR="$tmp/cases" "$bin/clip_tests" "[.decode-dir]" >"$tmp/run.log" 2>&1
check "clip_tests decoded every case (exit 0)" test $? -eq 0 || tail -20 "$tmp/run.log"

$PY - "$tmp/pillow.tsv" "$tmp/cases.out" >"$tmp/cmp.txt" <<'PY'
import collections, sys
read = lambda p: {l.split("\t")[0]: l.rstrip("\n").split("\t") for l in open(p, errors="replace")}
pil, ours = read(sys.argv[1]), read(sys.argv[2])
count = collections.Counter()
bad = []
for name, p in sorted(pil.items()):
    o = ours.get(name)
    ext = name.rsplit(".", 1)[-1]
    if o is None:
        kind = "missing"
    elif p[1] == "ok" and o[1] == "ok":
        kind = "same pixels" if p[2] == o[2] else "different pixels"
        if len(p) > 3 and kind == "same pixels":
            kind = "same resize" if len(o) > 3 and p[3] == o[3] else "different resize"
    elif p[1] == "err" and o[1] == "err":
        kind = "both refuse"
    elif p[1] == "ok":
        kind = "only Pillow decodes"
    elif ext == "gif" and "broken data stream" in p[2]:
        kind = "known: giflib reads past invalid LZW codes"
    else:
        kind = "only we decode"
    count[kind] += 1
    if kind in ("missing", "different pixels", "different resize", "only Pillow decodes", "only we decode"):
        bad.append(f"{kind}: {name}: Pillow {p[1:]}, ours {o[1:] if o else None}")
print(f"files={len(pil)} " + " ".join(f"{k.replace(' ', '_').replace(':', '')}={v}" for k, v in sorted(count.items())))
for b in bad[:20]:
    print(b)
print(f"disagreements={len(bad)}")
PY
cat "$tmp/cmp.txt"
check "at least 3000 cases, of which some decode and some are refused, and 400 resized" \
  bash -c "grep -qE 'files=[3-9][0-9]{3}' '$tmp/cmp.txt' && grep -q 'same_pixels=' '$tmp/cmp.txt' && grep -q 'both_refuse=' '$tmp/cmp.txt' && grep -q 'same_resize=400' '$tmp/cmp.txt'"
check "Pillow and our decoders agree on every case" grep -qx 'disagreements=0' "$tmp/cmp.txt"
exit $((fails > 0))
