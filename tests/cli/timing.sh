#!/usr/bin/env bash
# clip-index's timing lines (docs/benchmarks.md, "The timing line"): one per job at info level on
# stderr, with every documented key and a number for each *_s key; none with -q; no weights hash for
# JSONL outputs; the background weights hash gives the store the same metadata as before.
# Usage: timing.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" timing
fixture_model "$F"

"$bin/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --texts "$F/texts.jsonl" -b 4 \
  --image-out "$tmp/img.clipfeat" --text-out "$tmp/txt.clipfeat" >"$tmp/out.txt" 2>"$tmp/err.txt"
check "clip-index to two stores: exit 0" test $? -eq 0
check "nothing on stdout" test ! -s "$tmp/out.txt"
grep '^timing ' "$tmp/err.txt" >"$tmp/timing.txt"
check "one timing line per job" test "$(wc -l <"$tmp/timing.txt")" -eq 2
grep '^timing job=images ' "$tmp/timing.txt" >"$tmp/images.txt"
grep '^timing job=texts ' "$tmp/timing.txt" >"$tmp/texts.txt"
check "an images line and a texts line" test -s "$tmp/images.txt" -a -s "$tmp/texts.txt"
keys_of() { tr ' ' '\n' <"$1" | sed -n 's/=.*//p' | paste -sd' '; }
check "images keys" test "$(keys_of "$tmp/images.txt")" = "job items skipped batches batch device precision decode threads \
total_s startup_s load_s load_wait_s open_s encode_s wait_decode_s stage_s forward_s first_forward_s wait_device_s read_cpu_s \
decode_cpu_s resize_cpu_s slab_wait_cpu_s hash_s hash_cached hash_wait_s write_s"
check "texts keys" test "$(keys_of "$tmp/texts.txt")" = "job items skipped batches batch device precision trim columns \
total_s startup_s load_s load_wait_s open_s encode_s tokenize_s wait_tokenize_s stage_s forward_s first_forward_s wait_device_s \
hash_s hash_cached hash_wait_s write_s"
numbers() { tr ' ' '\n' <"$1" | grep '_s=' | grep -cvE '^[a-z_]+_s=[0-9]+\.[0-9]{3}$'; }
check "every *_s value is a number with 3 decimals" test "$(numbers "$tmp/timing.txt")" -eq 0
check "images: 7 items in 2 batches of 4 on the CPU" has "$tmp/images.txt" "job=images items=7 skipped=0 batches=2 batch=4 device=cpu precision=fp32 decode=exact"
check "texts: 12 items in 3 batches, untrimmed on the CPU" has "$tmp/texts.txt" "job=texts items=12 skipped=0 batches=3 batch=4 device=cpu precision=fp32 trim=off columns=1.000"
val() { tr ' ' '\n' <"$1" | sed -n "s/^$2=//p"; }
check "the weights hash was computed for the stores" awk -v h="$(val "$tmp/images.txt" hash_s)" 'BEGIN {exit !(h > 0)}'
check "total_s covers the start-up, the load and the encoding" awk -v t="$(val "$tmp/images.txt" total_s)" \
  -v s="$(val "$tmp/images.txt" startup_s)" -v l="$(val "$tmp/images.txt" load_s)" -v e="$(val "$tmp/images.txt" encode_s)" \
  'BEGIN {exit !(t >= s + l + e - 0.005 && s > 0)}'

# The store's metadata (weights hash included) is what a synchronous hash gives: the same bytes as
# a second run, and the weights hash that clip-export records for the checkpoint.
"$bin/clip-index" "${MODEL[@]}" -q --images "$F/images.tsv" -b 4 --image-out "$tmp/img2.clipfeat" 2>"$tmp/err2.txt"
check "-q: exit 0" test $? -eq 0
check "-q: no timing line" test ! -s "$tmp/err2.txt"
check "the same store bytes from a second run" cmp -s "$tmp/img.clipfeat" "$tmp/img2.clipfeat"
want=$(/usr/bin/python3 -c "
import json,sys
b=open(sys.argv[1],'rb').read()
i=b.index(b'\"weights_hash\"'); print(b[i:i+40].split(b'\"')[3].decode())" "$tmp/img.clipfeat")
check "the store records a 16-hex-digit weights hash" bash -c "[[ '$want' =~ ^[0-9a-f]{16}$ ]]"

# JSONL outputs never hash the checkpoint.
"$bin/clip-index" "${MODEL[@]}" --texts "$F/texts.jsonl" --text-out "$tmp/txt.jsonl" 2>"$tmp/err3.txt"
check "JSONL: exit 0" test $? -eq 0
check "JSONL: hash_s=0.000 hash_cached=0 hash_wait_s=0.000" has "$tmp/err3.txt" "hash_s=0.000 hash_cached=0 hash_wait_s=0.000"

# A photo folder appended to with nothing new: no job, no line (and no hash thread started).
mkdir -p "$tmp/photos"
/usr/bin/python3 - "$F/images.tsv" "$tmp/photos" <<'PY'
import base64, sys
for line in open(sys.argv[1]):
    i, b = line.rstrip("\n").split("\t")
    data = base64.urlsafe_b64decode(b)
    ext = "png" if data[1:4] == b"PNG" else "jpg"
    open(f"{sys.argv[2]}/{i}.{ext}", "wb").write(data)
PY
"$bin/clip-index" "${MODEL[@]}" -q --images "$tmp/photos" --image-out "$tmp/photos.clipfeat"
check "a photo folder: exit 0" test $? -eq 0
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/photos.clipfeat" --append 2>"$tmp/err4.txt"
check "--append, nothing new: exit 0" test $? -eq 0
check "--append, nothing new: said so" has "$tmp/err4.txt" "nothing to add"
check "--append, nothing new: no timing line" bash -c "! grep -q '^timing ' '$tmp/err4.txt'"
touch -d '2001-01-01' "$tmp/photos/1000002.jpg"
"$bin/clip-index" "${MODEL[@]}" --images "$tmp/photos" --image-out "$tmp/photos.clipfeat" --append 2>"$tmp/err5.txt"
check "--append, one changed file: exit 0" test $? -eq 0
check "--append, one changed file: a line for one image, hashed" \
  bash -c "grep '^timing job=images items=1 ' '$tmp/err5.txt' | grep -qv 'hash_s=0.000'"
exit $((fails > 0))
