# Sourced by the tests/cli/*.sh scripts: a scratch folder removed on exit ($tmp), and the check helpers.
#   source "$(dirname "$0")/checks.bash" NAME      (the scratch folder is /tmp/clipNAMEXXXXXX)
tmp=$(mktemp -d "/tmp/clip${1:-test}XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
check() {  # check DESCRIPTION COMMAND...: report and count a failure
  local what=$1; shift
  if "$@"; then echo "ok: $what"; else echo "FAIL: $what" >&2; fails=$((fails + 1)); fi
}
has() { grep -qF -- "$2" "$1"; }  # has FILE TEXT
# fixture_model FIXTURE_DIR [FLAG...]: MODEL = the flags of the tiny reference model (ViT-Tiny-P32 +
# RBT-Tiny-H64-L2 in FIXTURE_DIR, shared/fixtures/cnclip-tiny), followed by FLAG...
fixture_model() {
  local f=$1; shift
  MODEL=(-c "$f/checkpoints/vit_bert.pt" --vision-model "$f/configs/ViT-Tiny-P32.json"
         --text-model "$f/configs/RBT-Tiny-H64-L2.json" --vocab "$f/vocab.txt" "$@")
}
code() { "$@" > "$tmp/out" 2> "$tmp/err"; echo $?; }  # exit status; stdout/stderr kept in $tmp/out, $tmp/err
# demo_slice DEMO_DIR OUT_DIR: the first 12 training and 6 validation images of data/shapes-zh with
# their captions and the vocab, a small dataset for training runs.
demo_slice() {
  local demo=$1 out=$2 split name n ids
  mkdir -p "$out"
  for split in train:12 valid:6; do
    name=${split%%:*} n=${split##*:}
    head -n "$n" "$demo/${name}_imgs.tsv" >"$out/${name}_imgs.tsv"
    ids=$(cut -f1 "$out/${name}_imgs.tsv" | paste -sd'|')
    grep -E "\"image_ids\": \[($ids)\]" "$demo/${name}_texts.jsonl" >"$out/${name}_texts.jsonl"
  done
  cp "$demo/vocab.txt" "$out/"
}
