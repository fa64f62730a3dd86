#!/usr/bin/env bash
# Hostile and malformed input through the real binaries: the one error policy (stop by default,
# --on-error skip), decoders that are refused instead of looping, meaningless options and inputs,
# outputs that must not overwrite inputs, and error messages that name the right thing.
# Arguments: BIN_DIR SOURCE_DIR SHARED_DIR
set -uo pipefail
BIN=$1; SRC=$2; SHARED=$3
F=$SHARED/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" hostile
T=$tmp
fixture_model "$F"
N=$(grep -c . "$F/images.tsv")

# 1. The CVE-2021-42715 Radiance HDR (50 bytes) inside a TSV: refused at once, by default and with skip.
printf '#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 1 +X 16\n\x02\x02\x00\x10' > "$T/bomb.hdr"
check "the HDR bomb is 50 bytes" [ "$(stat -c %s "$T/bomb.hdr")" -eq 50 ]
{ head -2 "$F/images.tsv"; printf '777\t%s\n' "$(base64 -w0 "$T/bomb.hdr")"; tail -n +3 "$F/images.tsv"; } > "$T/hdr.tsv"
rc=$(code timeout 60 "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/hdr.tsv" --image-out "$T/hdr.clipfeat")
check "clip-index stops on the HDR image with exit 3 (not a hang: $rc)" [ "$rc" -eq 3 ]
check "the error names line 3, image 777 and the format" bash -c "grep -q 'hdr.tsv:3' '$T/err' && grep -q 777 '$T/err' && grep -q 'Radiance HDR' '$T/err'"
check "no output after the error" [ ! -e "$T/hdr.clipfeat" ]
rc=$(code timeout 60 "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/hdr.tsv" --image-out "$T/hdr.clipfeat" --on-error skip)
check "--on-error skip leaves the HDR image out and exits 0 ($rc)" [ "$rc" -eq 0 ]
rc=$(code timeout 60 "$BIN/clip-query" -q --index "$T/hdr.clipfeat" -t "猫" -k 1000)
check "... keeping the $N others" [ "$(grep -c '"rank"' "$T/out")" -eq "$N" ]
rc=$(code timeout 60 "$BIN/clip-query" -q --index "$T/hdr.clipfeat" -i "$T/bomb.hdr")
check "clip-query --image refuses the HDR file with exit 3 ($rc)" [ "$rc" -eq 3 ]

# 2. One error policy for malformed lines: stop by default (naming file, line, id), skip on request.
{ head -2 "$F/images.tsv"; printf '4242 no tab here\n'; tail -n +3 "$F/images.tsv"; } > "$T/notab.tsv"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/notab.tsv" --image-out "$T/notab.clipfeat")
check "a line without a tab stops the run with exit 3 ($rc)" [ "$rc" -eq 3 ]
check "... naming file and line" has "$T/err" "notab.tsv:3: expected 'image_id<TAB>base64'"
check "... writing nothing" [ ! -e "$T/notab.clipfeat" ]
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/notab.tsv" --image-out "$T/notab.clipfeat" --strict)
check "--strict is the default's spelling (exit 3: $rc)" [ "$rc" -eq 3 ]
rc=$(code "$BIN/clip-index" "${MODEL[@]}" --images "$T/notab.tsv" --image-out "$T/notab.clipfeat" --on-error skip)
check "--on-error skip exits 0 ($rc)" [ "$rc" -eq 0 ]
check "... and summarises per reason" has "$T/err" "no tab x1"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/notab.tsv" --image-out "$T/x.clipfeat" --on-error skip --strict)
check "--strict with --on-error skip is a usage error ($rc)" [ "$rc" -eq 2 ]
printf 'A\x00B\n' > "$T/nul.raw"
{ head -2 "$F/images.tsv"; printf '55\tQUJD'; printf '\x00'; printf 'RA==\n'; } > "$T/nul.tsv"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/nul.tsv" --image-out "$T/nul.clipfeat")
check "a NUL byte in a TSV line stops the run ($rc)" bash -c "[ $rc -eq 3 ] && grep -q 'nul.tsv:3: NUL byte' '$T/err'"
{ head -2 "$F/texts.jsonl"; printf '{"text_id": 999, "text": "  ", "image_ids": []}\n'; } > "$T/empty.jsonl"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --texts "$T/empty.jsonl" --text-out "$T/empty.clipfeat")
check "an empty text stops the run, naming line and id ($rc)" bash -c "[ $rc -eq 3 ] && grep -q 'empty.jsonl:3: text_id 999: empty text' '$T/err'"
rc=$(code "$BIN/clip-query" -q --index "$T/hdr.clipfeat" --texts "$T/empty.jsonl" -k 1)
check "clip-query --texts follows the same policy ($rc)" [ "$rc" -eq 3 ]
rc=$(code "$BIN/clip-query" -q --index "$T/hdr.clipfeat" --texts "$T/empty.jsonl" -k 1 --on-error skip)
check "... and skips with --on-error skip ($rc)" bash -c "[ $rc -eq 0 ] && [ \$(wc -l < '$T/out') -eq 2 ]"

# 3. Meaningless input.
rc=$(code "$BIN/clip-query" -q --index "$T/hdr.clipfeat" --text "")
check "clip-query --text '' is a usage error ($rc)" bash -c "[ $rc -eq 2 ] && grep -q 'empty' '$T/err'"
: > "$T/none.tsv"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/none.tsv" --image-out "$T/none.clipfeat")
check "0 images is an error, not an empty store ($rc)" bash -c "[ $rc -eq 3 ] && [ ! -e '$T/none.clipfeat' ]"
: > "$T/none.jsonl"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --texts "$T/none.jsonl" --text-out "$T/none.jsonl.out.jsonl")
check "0 texts is an error ($rc)" [ "$rc" -eq 3 ]
for bad in "--lr nan" "--lr -0.001" "--lr inf" "--wd -1" "--warmup -1" "--eps -1" "--eps nan" "--beta1 1.5"; do
  # shellcheck disable=SC2086
  rc=$(code "$BIN/clip-finetune" --data "$SRC/data/shapes-zh" -o "$T/run" $bad)
  check "clip-finetune $bad is a usage error at parse time ($rc)" bash -c "[ $rc -eq 2 ] && grep -q 'clip-finetune: usage error: ' '$T/err' && [ ! -e '$T/run' ]"
done

# 4. Outputs: never over an input, never the same file twice, both or neither.
cp "$F/images.tsv" "$T/in.tsv"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$T/in.tsv" --image-out "$T/in.tsv")
check "--image-out equal to --images is a usage error ($rc)" bash -c "[ $rc -eq 2 ] && cmp -s '$F/images.tsv' '$T/in.tsv'"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --texts "$F/texts.jsonl" --image-out "$T/same.clipfeat" --text-out "$T/./same.clipfeat")
check "the same file for both outputs is a usage error ($rc)" bash -c "[ $rc -eq 2 ] && [ ! -e '$T/same.clipfeat' ]"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$T/keep.clipfeat" || check "clip-index" false
chmod 640 "$T/keep.clipfeat"; cp "$T/keep.clipfeat" "$T/keep.orig"
rc=$(code "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --texts "$T/empty.jsonl" --image-out "$T/keep.clipfeat" --text-out "$T/keep.txt.clipfeat")
check "failing texts leave the image output as it was ($rc)" bash -c "[ $rc -eq 3 ] && cmp -s '$T/keep.clipfeat' '$T/keep.orig' && [ ! -e '$T/keep.txt.clipfeat' ]"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$T/keep.clipfeat" || check "clip-index again" false
check "a rewritten output keeps its permissions" [ "$(stat -c %a "$T/keep.clipfeat")" = 640 ]
check "no temporary file is left" bash -c "! ls '$T' | grep -q '\\.tmp\\.'"

# 5. Messages that blame the right thing.
{ printf 'CLIPFEAX'; head -c 400 "$T/keep.clipfeat" | tail -c +9; } > "$T/magic.clipfeat"
rc=$(code "$BIN/clip-query" -q --index "$T/magic.clipfeat" -t "猫")
check "a bad store magic says so ($rc)" bash -c "[ $rc -eq 3 ] && grep -q 'CLIPFEAT' '$T/err' && ! grep -q 'not valid JSON' '$T/err'"
# A store whose metadata block is damaged (one field rewritten, the block keeping its size): exit 3 (bad
# data) naming the file and the field, never an internal error (a type error once escaped as exit 70).
cat > "$T/edit_meta.py" <<'PY'
import json, sys
src, out, field, value = sys.argv[1:5]
b = open(src, "rb").read()
n = int.from_bytes(b[36:40], "little")  # metadata size (docs/store-format.md)
m = json.loads(b[64:64 + n])
d = m
for k in field.split(".")[:-1]: d = d[k]
d[field.split(".")[-1]] = json.loads(value)
m["extra"].pop("tool", None)  # room for the longer value
new = json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode()
assert len(new) <= n, (len(new), n)
open(out, "wb").write(b[:64] + new + b" " * (n - len(new)) + b[64 + n:])
PY
for edit in 'preprocess.context_length "52"' 'preprocess.context_length 100000000' 'extra.checkpoint 5' \
            'extra.model_config "{\"vision\": 1, \"text\": 2}"' 'extra.files {"a.jpg": "big"}'; do
  field=${edit%% *}
  /usr/bin/python3 "$T/edit_meta.py" "$T/keep.clipfeat" "$T/meta.clipfeat" "$field" "${edit#* }" || check "edit $field" false
  rc=$(code "$BIN/clip-query" -q --index "$T/meta.clipfeat" -t "猫")
  check "damaged store metadata ($edit): exit 3 naming file and field ($rc)" \
    bash -c "[ $rc -eq 3 ] && grep -q \"feature store '$T/meta.clipfeat': metadata field '$field\" '$T/err'"
done
rc=$(code "$BIN/clip-index" --no-such-flag)
check "CLI11's own errors carry the tool: usage error: prefix ($rc)" bash -c "[ $rc -eq 2 ] && grep -q 'clip-index: usage error: ' '$T/err'"

[ "$fails" -eq 0 ] && echo "hostile CLI: all checks passed"
exit "$fails"
