#!/usr/bin/env bash
# clip-serve end to end: indexes the embedded demo split, starts the server on a free loopback port,
# drives the page in headless Chromium (tests/e2e/serve.test.mjs), takes screenshots (into
# CLIP_SCREENSHOTS_DIR when set, e.g. docs/screenshots to refresh the documentation's, else a scratch
# folder), and stops the server with SIGTERM (it must exit 0).
# Usage: serve_e2e.sh BIN_DIR SOURCE_DIR SHARED_DIR
# The model: CLIP_DEMO_CHECKPOINT (with CLIP_DEMO_VISION/CLIP_DEMO_TEXT configs when the checkpoint
# needs them) when set, else the reference fixture model in SHARED_DIR/fixtures/cnclip-tiny; the text
# query: CLIP_DEMO_QUERY when set.
set -u
bin=$1 src=$2 shared=$3
data=$src/data/shapes-zh
e2e=$src/tests/e2e
tmp=$(mktemp -d /tmp/clipserveXXXXXX)
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [[ -f $tmp/serve.err ]] && tail -20 "$tmp/serve.err" >&2; exit 1; }

[[ -x /usr/bin/chromium ]] || fail "/usr/bin/chromium is missing: run scripts/setup.sh (Debian package chromium)"
[[ -d $e2e/node_modules/playwright-core ]] || fail "playwright-core is missing: run scripts/setup.sh (npm install in tests/e2e)"
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi

fx=$shared/fixtures/cnclip-tiny
if [[ -n "${CLIP_DEMO_CHECKPOINT:-}" ]]; then
  model=(-c "$CLIP_DEMO_CHECKPOINT")
  [[ -n "${CLIP_DEMO_VISION:-}" ]] && model+=(--vision-model "$CLIP_DEMO_VISION")
  [[ -n "${CLIP_DEMO_TEXT:-}" ]] && model+=(--text-model "$CLIP_DEMO_TEXT")
else
  model=(-c "$fx/checkpoints/vit_bert.pt" --vision-model "$fx/configs/ViT-Tiny-P32.json"
         --text-model "$fx/configs/RBT-Tiny-H64-L2.json" --vocab "$fx/vocab.txt")
fi
store=$tmp/test.img.clipfeat
"$bin/clip-index" "${model[@]}" --data "$data" --split test --image-out "$store" -q || fail "clip-index"

# The expected top hit of the text query: what clip-query answers for the same store.
query="${CLIP_DEMO_QUERY:-浅蓝色背景上，上方有一个大的黄色星星，底部有两个小的紫色十字}"
expect=$("$bin/clip-query" "${model[@]}" --index "$store" --text "$query" -k 1 -q --format tsv | cut -f3)
[[ $expect =~ ^[0-9]+$ ]] || fail "clip-query gave no top hit for the query ($expect)"

# The image query: one test image, written out as a file.
line=$(sed -n 7p "$data/test_imgs.tsv")
image_id=${line%%$'\t'*}
printf '%s' "${line#*$'\t'}" | tr -d '\r' | base64 -d >"$tmp/query.jpg" || fail "decoding test image $image_id"

"$bin/clip-serve" "${model[@]}" --index "$store" --host 127.0.0.1 --port 0 2>"$tmp/serve.err" &
pid=$!
port=$("$src/scripts/serve_port.sh" "$tmp/serve.err" "$pid" 30)
case $? in
  1) fail "clip-serve exited during start-up" ;;
  2) fail "clip-serve did not report its port" ;;
esac
echo "clip-serve on 127.0.0.1:$port (pid $pid); expected top hit $expect, image query $image_id"

node "$e2e/serve.test.mjs" --url "http://127.0.0.1:$port/" --query "$query" --expect-id "$expect" \
  --image "$tmp/query.jpg" --image-id "$image_id" --shots "${CLIP_SCREENSHOTS_DIR:-$tmp/shots}"
rc=$?

kill -TERM "$pid"
wait "$pid"
src_rc=$?
pid=
[[ $src_rc -eq 0 ]] || fail "clip-serve exited $src_rc after SIGTERM (expected 0)"
grep -q "stopped (SIGTERM)" "$tmp/serve.err" || fail "clip-serve did not log a clean stop"
echo "ok: clip-serve stopped cleanly on SIGTERM"
[[ $rc -eq 0 ]] || fail "browser test"
echo "serve_e2e: all passed"
