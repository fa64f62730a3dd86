#!/usr/bin/env bash
# On a CUDA machine, after scripts/gpu_build.sh (targets clip-finetune clip-index clip-query clip-serve):
# search on the GPU (--search-device cuda, the default with --device cuda) gives the CPU's answers.
#   1. the demo model, trained for 40 steps on data/shapes-zh, indexes the test split (float16 store);
#   2. clip-query, --search-device cuda against cpu: three text queries (identical output), the 1,000
#      test captions in one batch (identical ids and ranks; scores within 1e-5, as the CPU scores a
#      batch with a matrix product), image queries with --exclude-self, a --threshold;
#   3. clip-serve --device cuda: /api/info names the GPU search, a text search equals clip-query's.
#   scripts/check_search_gpu.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-gpu}/bin
D=data/shapes-zh
out=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$out"' EXIT
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

"$B/clip-finetune" --data "$D" --vision-model "$D/ViT-Demo.json" --text-model "$D/RBT-Demo.json" --vocab "$D/vocab.txt" \
  -b 64 --max-steps 40 --lr 2e-3 --no-validation --device cuda -q -o "$out/run"
ck=$out/run/checkpoints/epoch_latest.pt
"$B/clip-index" -q -c "$ck" --data "$D" --split test --device cuda --image-out "$out/test.img.clipfeat" --dtype f16

q=(-q -c "$ck" --index "$out/test.img.clipfeat" --device cuda)
t=(--text "红色的圆形" --text "两个较小的黑色星形在上面" --text "背景是浅绿色")
"$B/clip-query" "${q[@]}" "${t[@]}" -k 20 --search-device cpu >"$out/cpu.jsonl"
"$B/clip-query" "${q[@]}" "${t[@]}" -k 20 --search-device cuda >"$out/gpu.jsonl"
cmp -s "$out/cpu.jsonl" "$out/gpu.jsonl" && echo "three text queries: identical ($(wc -l <"$out/cpu.jsonl") hits)" ||
  fail "text queries differ: $(diff "$out/cpu.jsonl" "$out/gpu.jsonl" | head -5)"

"$B/clip-query" "${q[@]}" --texts "$D/test_texts.jsonl" -k 10 --format tsv --search-device cpu >"$out/cpu.tsv"
"$B/clip-query" "${q[@]}" --texts "$D/test_texts.jsonl" -k 10 --format tsv --search-device cuda >"$out/gpu.tsv"
paste "$out/cpu.tsv" "$out/gpu.tsv" | awk -F'\t' '
  $1 != $5 || $2 != $6 { bad++ } $3 != $7 { ids++ }  # other ids: near ties in another order
  { d = $4 - $8; if (d < 0) d = -d; if (d > m) m = d }
  END { printf "1000 captions in one batch: %d hits, %d with another id, max score difference %.2g\n", NR, ids, m;
        exit (bad > 0 || m > 1e-5) }' || fail "batched text queries differ beyond ties"
# Rows whose id differs must be ties (equal scores on the CPU side): print them for a look.
paste "$out/cpu.tsv" "$out/gpu.tsv" | awk -F'\t' '$3 != $7' | head -5

"$B/clip-query" "${q[@]}" --query-images "$D/test_imgs.tsv" --exclude-self -k 5 --threshold 0.2 --search-device cpu >"$out/cpu-img.jsonl"
"$B/clip-query" "${q[@]}" --query-images "$D/test_imgs.tsv" --exclude-self -k 5 --threshold 0.2 --search-device cuda >"$out/gpu-img.jsonl"
python3 - "$out/cpu-img.jsonl" "$out/gpu-img.jsonl" <<'PY' || fail "image queries differ"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b), (len(a), len(b))
worst = max((abs(x["score"] - y["score"]) for x, y in zip(a, b)), default=0)
same = sum(x["id"] == y["id"] for x, y in zip(a, b))
assert all(x["query"] == y["query"] and x["rank"] == y["rank"] for x, y in zip(a, b))
assert all(x["id"] != x["query_id"] for x in b), "exclude-self"
print(f"200 image queries, --exclude-self --threshold 0.2: {len(a)} hits, {same} with the same id, max score difference {worst:.2g}")
assert worst <= 1e-5
PY

if [[ ! -x $B/clip-serve ]]; then
  echo "clip-serve: not in this build (cpp-httplib missing): its GPU search was not checked"
  exit $status
fi
"$B/clip-serve" -c "$ck" --index "$out/test.img.clipfeat" --device cuda --host 127.0.0.1 --port 0 2>"$out/serve.err" &
pid=$!
port=$(scripts/serve_port.sh "$out/serve.err" "$pid" 30) || true
if [[ -z $port ]]; then
  fail "clip-serve did not start: $(tail -3 "$out/serve.err")"
else
  info=$(curl -s "127.0.0.1:$port/api/info")
  grep -q 'exact on cuda' <<<"$info" && echo "clip-serve /api/info: $(grep -o '"search[^,]*' <<<"$info")" || fail "/api/info: $info"
  got=$(curl -s "127.0.0.1:$port/api/search/text" -d '{"text": "红色的圆形", "k": 5}' | python3 -c '
import json, sys; print(" ".join(str(r["id"]) for r in json.load(sys.stdin)["results"]))')
  want=$("$B/clip-query" "${q[@]}" --text "红色的圆形" -k 5 --format tsv | cut -f3 | tr '\n' ' ' | sed 's/ $//')
  [[ $got == "$want" ]] && echo "clip-serve text search on the GPU: $got (as clip-query)" || fail "clip-serve gave '$got', clip-query '$want'"
fi
exit $status
