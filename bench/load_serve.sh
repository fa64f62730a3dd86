#!/usr/bin/env bash
# Load test of clip-serve (text queries at 1, 4 and 16 concurrent clients) on the embedded demo split:
# indexes data/shapes-zh (test) with the given model (default: the tiny reference fixture model),
# starts clip-serve on a free loopback port, runs bench/load_serve.py, stops the server.
#   bench/load_serve.sh [BUILD_BIN_DIR] [extra clip-serve flags...]
# Environment: LOAD_REQUESTS (per level, default 400), LOAD_SECONDS (per level, default 30),
# CLIP_DEMO_CHECKPOINT / CLIP_DEMO_VISION / CLIP_DEMO_TEXT (a trained model instead of the fixture).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$src/build/bin}
shift || true
shared=${CLIP_SHARED_DIR:-$src/../shared}
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi
tmp=$(mktemp -d /tmp/clipserveloadXXXXXX)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
fx=$shared/fixtures/cnclip-tiny
if [[ -n "${CLIP_DEMO_CHECKPOINT:-}" ]]; then
  model=(-c "$CLIP_DEMO_CHECKPOINT")
  [[ -n "${CLIP_DEMO_VISION:-}" ]] && model+=(--vision-model "$CLIP_DEMO_VISION")
  [[ -n "${CLIP_DEMO_TEXT:-}" ]] && model+=(--text-model "$CLIP_DEMO_TEXT")
else
  model=(-c "$fx/checkpoints/vit_bert.pt" --vision-model "$fx/configs/ViT-Tiny-P32.json"
         --text-model "$fx/configs/RBT-Tiny-H64-L2.json" --vocab "$fx/vocab.txt")
fi
"$bin/clip-index" "${model[@]}" --data "$src/data/shapes-zh" --split test --image-out "$tmp/store" -q
"$bin/clip-serve" "${model[@]}" --index "$tmp/store" --host 127.0.0.1 --port 0 "$@" 2>"$tmp/serve.err" &
pid=$!
port=$("$src/scripts/serve_port.sh" "$tmp/serve.err" "$pid" 30) || { cat "$tmp/serve.err" >&2; exit 1; }
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); clip-serve $*" >&2
python3 "$src/bench/load_serve.py" --port "$port" --texts "$src/data/shapes-zh/test_texts.jsonl" \
  --requests "${LOAD_REQUESTS:-400}" --seconds "${LOAD_SECONDS:-30}"
kill -TERM $pid
wait $pid
pid=
