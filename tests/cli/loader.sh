#!/usr/bin/env bash
# The one model loader: a fine-tune started from a Hugging Face folder, or from a checkpoint that
# carries its own config, builds the model the folder/checkpoint describes (here 2 text heads and
# dropout 0.0, which shape inference would guess as 1 head and 0.1), and its starting weights give
# cn_clip's own features.
# Usage: loader.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
fx=$shared/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" loader
model=(-c "$fx/checkpoints/vit_bert.pt" --vision-model "$fx/configs/ViT-Tiny-P32.json"
       --text-model "$fx/configs/RBT-Tiny-H64-L2.json" --vocab "$fx/vocab.txt" -q)

# Compares clip-index text features with cn_clip's (expected/text_features.jsonl, model "vit").
same_as_cnclip() {
  /usr/bin/python3 - "$1" "$fx/expected/text_features.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
ref = {r["text_id"]: r["feature"] for r in map(json.loads, open(sys.argv[2])) if r["model"] == "vit"}
assert len(ours) == len(ref) > 0, (len(ours), len(ref))
worst_abs = max(max(abs(a - b) for a, b in zip(r["feature"], ref[r["text_id"]])) for r in ours)
worst_cos = min(sum(a * b for a, b in zip(r["feature"], ref[r["text_id"]])) for r in ours)
print(f"max abs {worst_abs:.3g}, min cosine {worst_cos:.9f}")
sys.exit(0 if worst_abs <= 1e-4 and worst_cos >= 0.9999 else 1)
PY
}
# The fine-tune's recorded text config: heads and dropout as the source says.
text_config_is() {  # text_config_is RUN HEADS DROPOUT
  /usr/bin/python3 -c "
import json, sys
t = json.load(open(sys.argv[1] + '/params.json'))['resolved']['text_config']
ok = t['text_num_attention_heads'] == int(sys.argv[2]) and t['text_hidden_dropout_prob'] == float(sys.argv[3]) \
     and t['text_attention_probs_dropout_prob'] == float(sys.argv[3])
sys.exit(0 if ok else 1)" "$1" "$2" "$3"
}
finetune_from() {  # finetune_from SOURCE RUN: one step, starting weights saved as epoch0.pt
  "$bin/clip-finetune" -c "$1" --data "$src/data/shapes-zh" --max-steps 1 -b 8 --save-init --no-validation -j 2 -q -o "$2"
}

"$bin/clip-export" "${model[@]}" --format hf --output "$tmp/hf"
check "hf export" test -s "$tmp/hf/config.json"
"$bin/clip-export" "${model[@]}" --format cnclip --output "$tmp/own.pt"
check "cnclip export (carries model_config)" test -s "$tmp/own.pt"

for source in "$tmp/hf" "$tmp/own.pt"; do
  name=$(basename "$source")
  finetune_from "$source" "$tmp/run-$name"
  check "fine-tune from $name: exit 0" test $? -eq 0
  check "fine-tune from $name: 2 text heads, dropout 0.0 as the source says" text_config_is "$tmp/run-$name" 2 0.0
  "$bin/clip-index" -q -c "$tmp/run-$name/checkpoints/epoch0.pt" --vocab "$fx/vocab.txt" --texts "$fx/texts.jsonl" \
    --text-out "$tmp/$name.t.jsonl"
  check "fine-tune from $name: starting weights give cn_clip's features" same_as_cnclip "$tmp/$name.t.jsonl"
done
# Explicit flags still win over the carried config.
"$bin/clip-finetune" -c "$tmp/hf" --text-model "$src/data/shapes-zh/RBT-Demo.json" --data "$src/data/shapes-zh" \
  --max-steps 1 -b 8 --no-validation -q -o "$tmp/run-flag" 2>"$tmp/flag.err"
check "an explicit --text-model that does not fit the weights is refused" test $? -eq 4

echo "loader: $fails failure(s)"
exit $((fails > 0))
