#!/usr/bin/env bash
# clip-export end to end: ONNX files with the original's names, checked by ONNX's Python checker and
# run in onnxruntime-node; cnclip and hf conversions read back by clip-index with the same features.
# Usage: export.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
fx=$shared/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" export
model=(-c "$fx/checkpoints/vit_bert.pt" --vision-model "$fx/configs/ViT-Tiny-P32.json"
       --text-model "$fx/configs/RBT-Tiny-H64-L2.json" --vocab "$fx/vocab.txt" -q)

"$bin/clip-export" "${model[@]}" --format onnx --output "$tmp/tiny" --check
check "onnx exit 0" test $? -eq 0
check "text graph named as the original" test -s "$tmp/tiny.txt.fp32.onnx"
check "image graph named as the original" test -s "$tmp/tiny.img.fp32.onnx"
"$bin/clip-export" "${model[@]}" --format onnx --output "$tmp/tiny" --fp16 --tower text
check "fp16 text only" test -s "$tmp/tiny.txt.fp16.onnx" -a ! -e "$tmp/tiny.img.fp16.onnx"
check "python checker" /usr/bin/python3 -c "import onnx,sys; [onnx.checker.check_model(p, full_check=True) for p in sys.argv[1:]]" \
  "$tmp/tiny.txt.fp32.onnx" "$tmp/tiny.img.fp32.onnx" "$tmp/tiny.txt.fp16.onnx"
# What a consumer needs to preprocess travels in the graph's metadata.
vocab_sha=$(sha256sum "$fx/vocab.txt" | cut -d' ' -f1)
check "metadata: resolution, context length, vocab hash, source" /usr/bin/python3 -c "
import onnx, sys
m = {p.key: p.value for p in onnx.load(sys.argv[1]).metadata_props}
assert m['resolution'] == '224' and m['context_length'] == '52', m
assert m['vocab_sha256'] == sys.argv[2] and m['source_checkpoint'].endswith('vit_bert.pt'), m
assert m['interpolation'].startswith('bicubic') and m['mean'].startswith('[0.481'), m" "$tmp/tiny.img.fp32.onnx" "$vocab_sha"

# ORT on 3 all-[CLS][SEP]-like id rows: runs and gives [3, 32].
/usr/bin/python3 -c "import numpy as n; a=n.zeros((3,52),n.int64); a[:,0]=101; a[:,1]=102; a[1,1:3]=[3300,102]; a.tofile('$tmp/ids.bin')"
if [[ -d "$src/tests/node/node_modules/onnxruntime-node" ]]; then
  out=$(node "$src/tests/node/run_onnx.js" "$tmp/tiny.txt.fp32.onnx" "$tmp/o.bin" "text=$tmp/ids.bin:int64:3x52")
  check "onnxruntime-node runs the text graph" grep -qF '"dims":[3,32]' <<<"$out"
else
  echo "FAIL: tests/node/node_modules missing (scripts/setup.sh installs onnxruntime-node)" >&2; fails=$((fails + 1))
fi

# Conversions: clip-index on each gives the same text features as on the source checkpoint.
"$bin/clip-export" "${model[@]}" --format cnclip --output "$tmp/re.pt"
check "cnclip exit 0" test $? -eq 0
"$bin/clip-export" "${model[@]}" --format hf --output "$tmp/hf"
check "hf exit 0" test $? -eq 0
check "hf files" test -s "$tmp/hf/config.json" -a -s "$tmp/hf/model.safetensors" -a -s "$tmp/hf/vocab.txt" -a -s "$tmp/hf/preprocessor_config.json"
"$bin/clip-index" "${model[@]}" --texts "$fx/texts.jsonl" --text-out "$tmp/a.jsonl"
"$bin/clip-index" -c "$tmp/re.pt" --vocab "$fx/vocab.txt" -q --texts "$fx/texts.jsonl" --text-out "$tmp/b.jsonl"
"$bin/clip-index" -c "$tmp/hf" -q --texts "$fx/texts.jsonl" --text-out "$tmp/c.jsonl"
check "features written" test -s "$tmp/a.jsonl"
check "cnclip round trip: same features" cmp -s "$tmp/a.jsonl" "$tmp/b.jsonl"
check "hf round trip: same features" cmp -s "$tmp/a.jsonl" "$tmp/c.jsonl"
# As transformers 5 saves a folder: no vocab.txt, the tokenizer in tokenizer.json.
check "hf tokenizer.json written" test -s "$tmp/hf/tokenizer.json"
rm "$tmp/hf/vocab.txt"
"$bin/clip-index" -c "$tmp/hf" -q --texts "$fx/texts.jsonl" --text-out "$tmp/d.jsonl"
check "hf folder without vocab.txt: same features from tokenizer.json" cmp -s "$tmp/a.jsonl" "$tmp/d.jsonl"
/usr/bin/python3 -c "
import json, sys; j = json.load(open(sys.argv[1])); j['normalizer']['lowercase'] = False; json.dump(j, open(sys.argv[1], 'w'))" \
  "$tmp/hf/tokenizer.json"
"$bin/clip-index" -c "$tmp/hf" -q --texts "$fx/texts.jsonl" --text-out "$tmp/e.jsonl" 2>"$tmp/err.txt"
check "tokenizer.json that does not lower-case is a model error" test $? -eq 4
check "the error names the file and the field" grep -q "hf/tokenizer.json: normalizer.lowercase" "$tmp/err.txt"

# ModifiedResNet cannot be a Hugging Face model: usage error (exit 2), nothing written.
"$bin/clip-export" -c "$fx/checkpoints/rn_bert.pt" --vision-model "$fx/configs/RN-Tiny.json" \
  --text-model "$fx/configs/RBT-Tiny-H64-L2.json" --vocab "$fx/vocab.txt" -q --format hf --output "$tmp/rnhf" 2>"$tmp/err.txt"
check "RN to hf is a usage error" test $? -eq 2
check "RN error names the cause" grep -q "ModifiedResNet" "$tmp/err.txt"
check "RN hf folder not written" test ! -e "$tmp/rnhf/model.safetensors"

echo "$fails failure(s)"
exit $((fails > 0))
