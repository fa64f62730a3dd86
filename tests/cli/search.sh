#!/usr/bin/env bash
# Shards, the approximate index and the int8 file through the tools: clip-index --ann / --dtype i8 /
# --append, clip-query --index a --index b, --exact, and the refusals (duplicate ids, stale index).
# Arguments: BIN_DIR SOURCE_DIR SHARED_DIR
set -uo pipefail
BIN=$1; SHARED=$3
F=$SHARED/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" search
fixture_model "$F"
Q="一只猫"
head -4 "$F/images.tsv" > "$tmp/a.tsv"
tail -n +5 "$F/images.tsv" > "$tmp/b.tsv"

"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/all.clipfeat" --dtype f16
"$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/a.tsv" --image-out "$tmp/a.clipfeat" --dtype f16
"$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/b.tsv" --image-out "$tmp/b.clipfeat" --dtype f16
"$BIN/clip-query" -q --index "$tmp/all.clipfeat" -t "$Q" -k 7 > "$tmp/all.jsonl"
"$BIN/clip-query" -q --index "$tmp/a.clipfeat" --index "$tmp/b.clipfeat" -t "$Q" -k 7 > "$tmp/ab.jsonl"
check "two shards answer as the store holding both" cmp -s "$tmp/all.jsonl" "$tmp/ab.jsonl"
check "shards: 7 hits" test "$(grep -c '"rank"' "$tmp/ab.jsonl")" = 7
"$BIN/clip-query" -q --index "$tmp/a.clipfeat" --index "$tmp/all.clipfeat" -t "$Q" 2> "$tmp/err" > /dev/null
rc=$?
check "an id in two shards exits 3" test $rc = 3
check "and says ids must be unique across shards" has "$tmp/err" "unique across shards"

# int8 file: the same hits, exact scores.
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$tmp/i8.clipfeat" --dtype i8
check "--dtype i8 writes STORE.i8" test -f "$tmp/i8.clipfeat.i8"
"$BIN/clip-query" -q --index "$tmp/i8.clipfeat" -t "$Q" -k 7 > "$tmp/i8.jsonl"
check "int8 search with re-scoring equals exact search on 7 rows" cmp -s "$tmp/all.jsonl" "$tmp/i8.jsonl"

if "$BIN/clip-index" --help | grep -q -- "--ann"; then
  "$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/a.tsv" --image-out "$tmp/ann.clipfeat" --dtype f16 --ann HNSW8 2> "$tmp/err"
  if grep -q "no faiss" "$tmp/err"; then
    echo "skip: built without faiss"
  else
    check "--ann writes STORE.ann" test -f "$tmp/ann.clipfeat.ann"
    "$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/b.tsv" --image-out "$tmp/ann.clipfeat" --append
    "$BIN/clip-query" -q --index "$tmp/ann.clipfeat" -t "$Q" -k 7 --ef 64 > "$tmp/ann.jsonl"
    check "after --append the index answers as exact search" cmp -s "$tmp/all.jsonl" "$tmp/ann.jsonl"
    "$BIN/clip-query" -v --index "$tmp/ann.clipfeat" -t "$Q" -k 7 --exact 2> "$tmp/log" > "$tmp/exact.jsonl"
    check "--exact bypasses the index" has "$tmp/log" "search: exact"
    # A stale index: the store rewritten (other rows) and an old index put back beside it.
    cp "$tmp/ann.clipfeat.ann" "$tmp/keep.ann"
    "$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/a.tsv" --image-out "$tmp/ann.clipfeat" --dtype f16
    check "writing the store anew removes its index" test ! -f "$tmp/ann.clipfeat.ann"
    cp "$tmp/keep.ann" "$tmp/ann.clipfeat.ann"
    "$BIN/clip-query" -q --index "$tmp/ann.clipfeat" -t "$Q" 2> "$tmp/err" > /dev/null
    rc=$?
    check "a stale index exits 3" test $rc = 3
    check "and names the remedy" has "$tmp/err" "clip-index --ann"
    "$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/b.tsv" --image-out "$tmp/ann.clipfeat" --append 2> "$tmp/err"
    rc=$?
    check "--append refuses to extend a stale index" test $rc = 3
    check "the store was left as it was" test "$("$BIN/clip-query" -q --exact --index "$tmp/ann.clipfeat" -t "$Q" -k 100 | grep -c '"rank"')" = 4
    # --merge carries the first store's index over (the other store's rows added to it, no training).
    "$BIN/clip-index" -q --merge "$tmp/a.clipfeat" "$tmp/missing.clipfeat" --image-out "$tmp/x.clipfeat" 2> "$tmp/err"
    check "--merge of a file that is not a store exits 2" test $? = 2
    "$BIN/clip-index" -q "${MODEL[@]}" --images "$tmp/a.tsv" --image-out "$tmp/p.clipfeat" --dtype f16 --ann HNSW8
    "$BIN/clip-index" -v --merge "$tmp/p.clipfeat" "$tmp/b.clipfeat" --image-out "$tmp/m.clipfeat" 2> "$tmp/log"
    check "--merge carries the first store's index over" has "$tmp/log" "added 3 rows to $tmp/m.clipfeat.ann"
    "$BIN/clip-query" -q --index "$tmp/m.clipfeat" -t "$Q" -k 7 --ef 64 > "$tmp/m.jsonl"
    check "the merged store's index answers as exact search" cmp -s "$tmp/all.jsonl" "$tmp/m.jsonl"
    "$BIN/clip-index" -q --merge "$tmp/a.clipfeat" "$tmp/b.clipfeat" --image-out "$tmp/m2.clipfeat"
    check "--merge of stores without an index makes none" test ! -f "$tmp/m2.clipfeat.ann"
    "$BIN/clip-index" -v --merge "$tmp/m.clipfeat" "$tmp/b.clipfeat" --image-out "$tmp/m3.clipfeat" --replace 2> "$tmp/log"
    check "--merge --replace of indexed rows rebuilds the index" test -f "$tmp/m3.clipfeat.ann"
    check "and says why" has "$tmp/log" "rows of the first store were replaced"
    "$BIN/clip-index" -v --merge "$tmp/p.clipfeat" "$tmp/b.clipfeat" --image-out "$tmp/p.clipfeat" 2> "$tmp/log"
    check "--merge into the first store extends its own index" has "$tmp/log" "added 3 rows to $tmp/p.clipfeat.ann"
  fi
fi
exit $fails
