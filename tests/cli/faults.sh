#!/usr/bin/env bash
# Faults through the real binaries: a kill -9 in the middle of clip-index rewriting a store and of
# clip-finetune between checkpoints, a full disk, and a fine-tuning run that failed before its first
# checkpoint started again in the same folder.
# Arguments: BIN_DIR SOURCE_DIR SHARED_DIR. Exit 77 (CTest's skip code) only when no way to make a
# disk full works here (neither a tmpfs mount nor RLIMIT_FSIZE); every other check still runs first.
set -uo pipefail
BIN=$1; SRC=$2; SHARED=$3
F=$SHARED/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" faults
T=$tmp
fixture_model "$F"
temps() { compgen -G "$1.tmp.*"; }                 # temps PATH: the temporary files of an output, if any

# A preload library that freezes a tool at the worst moment for a kill: its output complete in the
# temporary file, just before the rename onto the final name (FAULT_STOP_BEFORE_RENAME_TO, a suffix of
# that name). It creates FAULT_MARK, then waits to be killed.
cat > "$T/stop.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int rename(const char* from, const char* to) {
  const char* want = getenv("FAULT_STOP_BEFORE_RENAME_TO");
  const char* mark = getenv("FAULT_MARK");
  size_t n = strlen(to), m = want ? strlen(want) : 0;
  if (want && mark && n >= m && strcmp(to + n - m, want) == 0) {
    int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
  }
  int (*real)(const char*, const char*) = (int (*)(const char*, const char*))dlsym(RTLD_NEXT, "rename");
  return real(from, to);
}
C
cc -shared -fPIC -o "$T/stop.so" "$T/stop.c" -ldl || { echo "FAIL: cannot build the preload library (cc)" >&2; exit 1; }
# stopped PID MARK: waits (up to 300 s) until the process froze at its rename; false if it ended first.
stopped() {
  local i
  for ((i = 0; i < 3000; i++)); do
    [ -e "$2" ] && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
kill9() { kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

# 1. kill -9 of clip-index rewriting an existing store.
S=$T/store.clipfeat
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" || check "clip-index writes the first store" false
cp "$S" "$T/store.orig"
# (a) frozen with the new store complete in its temporary file, then killed before the rename.
FAULT_STOP_BEFORE_RENAME_TO=/store.clipfeat FAULT_MARK=$T/mark1 LD_PRELOAD=$T/stop.so \
  "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" --dtype f16 2>"$T/err1" &
pid=$!
check "clip-index reached the rename of the rewritten store" stopped $pid "$T/mark1"
left=$(temps "$S")
check "... its complete temporary file is there ($left)" test -s "$left"
kill9 $pid
check "after kill -9 before the rename: the previous store is intact, byte for byte" cmp -s "$S" "$T/store.orig"
check "... the temporary file stays behind (no process can remove it at kill -9)" test -e "$left"
rc=$(code "$BIN/clip-query" -q --index "$S" -t "猫" -k 1)
check "... and the store under the final name reads ($rc)" [ "$rc" -eq 0 ]
# (b) killed at other moments (loading, encoding, writing): never a partial file under the final name.
for delay in 0.3 1 2; do
  "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" --dtype f16 2>/dev/null &
  pid=$!
  sleep $delay
  kill9 $pid
  check "kill -9 after ${delay}s: the store is the old one or a complete new one" \
    bash -c "cmp -s '$S' '$T/store.orig' || '$BIN/clip-query' -q --index '$S' -t '猫' -k 1 >/dev/null 2>&1"
done
# (c) The next run for the same output removes the stale temporary files (older than 2 s, not locked by
# a live writer); one that a live writer holds is kept.
touch -d '1 minute ago' "$left"
FAULT_STOP_BEFORE_RENAME_TO=/store.clipfeat FAULT_MARK=$T/mark2 LD_PRELOAD=$T/stop.so \
  "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" --dtype f16 2>/dev/null &
pid=$!
check "a second writer froze before its rename (alive, holding its temporary file)" stopped $pid "$T/mark2"
check "... and already removed the stale temporary file of the killed run" test ! -e "$left"
held=$(ls -t $(temps "$S") | head -n 1)  # the newest: the live writer's
touch -d '1 minute ago' "$held"
rc=$(code "$BIN/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" --dtype f16)
check "a third writer completes ($rc)" [ "$rc" -eq 0 ]
check "... without touching the live writer's temporary file" test -e "$held"
kill9 $pid
check "... and its store is the rewritten one (f16: smaller than the f32 original)" \
  test "$(stat -c %s "$S")" -lt "$(stat -c %s "$T/store.orig")"
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$S" --dtype f16 2>/dev/null
check "the next run cleans up the last one too: no temporary file left" test -z "$(temps "$S")"

# 2. clip-finetune: killed after a checkpoint was written, then --resume ends with exactly the weights
# of an uninterrupted run. 12 training images (60 captions) of the demo data, 4 steps per epoch.
demo=$SRC/data/shapes-zh
data=$T/data
demo_slice "$demo" "$data"
MODEL_DEMO=(--vision-model "$demo/ViT-Demo.json" --text-model "$demo/RBT-Demo.json" --batch-size 16 --log-interval 1
            --threads 2 --lr 1e-3 --warmup 2 --max-steps 8)
TRAIN=(--data "$data" "${MODEL_DEMO[@]}" --save-step-frequency 2)
# Checkpoints hold the run's name (its folder's name): every run below is called "run".
mkdir -p "$T/ref" "$T/k1" "$T/k2" "$T/s0"
"$BIN/clip-finetune" "${TRAIN[@]}" -q -o "$T/ref/run" 2>"$T/ref.err"
check "the uninterrupted run finishes" test -e "$T/ref/run/DONE"
weights() {  # weights FILE: a digest of the state dict (the bytes clip-export writes from it)
  "$BIN/clip-export" -q -c "$1" --vision-model "$demo/ViT-Demo.json" --text-model "$demo/RBT-Demo.json" \
    --vocab "$demo/vocab.txt" --format cnclip --output "$T/export.pt" && sha256sum < "$T/export.pt"
}
ref=$(weights "$T/ref/run/checkpoints/epoch_latest.pt")
check "the reference weights export" test -n "$ref"
# (a) frozen with the step-6 checkpoint complete but not yet renamed, then killed.
FAULT_STOP_BEFORE_RENAME_TO=/epoch_2_6.pt FAULT_MARK=$T/mark3 LD_PRELOAD=$T/stop.so \
  "$BIN/clip-finetune" "${TRAIN[@]}" -q -o "$T/k1/run" 2>/dev/null &
pid=$!
check "clip-finetune froze before renaming its step-6 checkpoint" stopped $pid "$T/mark3"
kill9 $pid
left=$(temps "$T/k1/run/checkpoints/epoch_2_6.pt")
check "... leaving the complete step-6 checkpoint in its temporary file" test -s "$left"
touch -d '1 minute ago' "$left"  # stale for certain, however fast this machine resumes
check "... killed: checkpoints of steps 2 and 4 there, none of step 6, not done" \
  bash -c "test -s '$T/k1/run/checkpoints/epoch_1_2.pt' && test -s '$T/k1/run/checkpoints/epoch_1_4.pt' && test ! -e '$T/k1/run/checkpoints/epoch_2_6.pt' && test ! -e '$T/k1/run/DONE'"
rc=$(code "$BIN/clip-finetune" --resume "$T/k1/run" -q)
check "--resume after the kill finishes ($rc)" bash -c "[ $rc -eq 0 ] && test -e '$T/k1/run/DONE'"
check "... with exactly the uninterrupted run's weights" test "$(weights "$T/k1/run/checkpoints/epoch_latest.pt")" = "$ref"
check "... and the killed run's temporary checkpoint was cleaned up by the rewrite" \
  test -z "$(temps "$T/k1/run/checkpoints/epoch_2_6.pt")"
# (b) killed as soon as the first checkpoint appeared (wherever the run was then).
"$BIN/clip-finetune" "${TRAIN[@]}" -q -o "$T/k2/run" 2>/dev/null &
pid=$!
for ((i = 0; i < 3000; i++)); do [ -e "$T/k2/run/checkpoints/epoch_1_2.pt" ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.05; done
kill9 $pid
check "killed after its first checkpoint, before the end" bash -c "test -s '$T/k2/run/checkpoints/epoch_1_2.pt' && test ! -e '$T/k2/run/DONE'"
"$BIN/clip-finetune" --resume "$T/k2/run" -q 2>/dev/null
check "... --resume gives exactly the uninterrupted run's weights" test "$(weights "$T/k2/run/checkpoints/epoch_latest.pt")" = "$ref"

# 3. A run that failed at step 0 (an undecodable training image) leaves a folder without checkpoint:
# the corrected command runs in the same --output-dir; a folder holding checkpoints is still refused.
cp -r "$data" "$T/bad"
{ printf '%s\t%s\n' "$(head -n1 "$data/train_imgs.tsv" | cut -f1)" "$(printf 'not an image at all' | base64 -w0)"; tail -n +2 "$data/train_imgs.tsv"; } >"$T/bad/train_imgs.tsv"
# (no step checkpoints: the broken image's batch may come late in the first epoch)
rc=$(code "$BIN/clip-finetune" --data "$T/bad" "${MODEL_DEMO[@]}" -o "$T/s0/run")
pts=$(ls "$T/s0/run/checkpoints" 2>/dev/null | grep -c '\.pt$')
check "a broken training image stops the run at step 0 ($rc), leaving a run folder without checkpoint ($pts)" \
  bash -c "[ $rc -eq 3 ] && [ $pts -eq 0 ] && test -e '$T/s0/run/params.json'"
rc=$(code "$BIN/clip-finetune" "${TRAIN[@]}" -o "$T/s0/run")
check "the corrected command runs in the same folder ($rc)" bash -c "[ $rc -eq 0 ] && test -e '$T/s0/run/DONE'"
check "... saying that it starts afresh" has "$T/err" "holds no checkpoint"
check "... with its own metrics only (8 steps)" test "$(grep -c '"type":"train"' "$T/s0/run/metrics.jsonl")" -eq 8
check "... and the same weights as any run" test "$(weights "$T/s0/run/checkpoints/epoch_latest.pt")" = "$ref"
rc=$(code "$BIN/clip-finetune" "${TRAIN[@]}" -o "$T/s0/run")
check "a folder holding checkpoints is still refused (exit 6: $rc), naming --resume" bash -c "[ $rc -eq 6 ] && grep -q -- '--resume' '$T/err'"

# 4. A full disk while rewriting a store: exit 5 naming the output, the earlier store intact, no
# temporary file left. A 2 MiB tmpfs where mounting is allowed (root); else RLIMIT_FSIZE (ulimit -f,
# with SIGXFSZ ignored, so that the write fails with EFBIG instead of killing the tool).
disk_full_tested=0
small=$T/small
mkdir -p "$small"
if mount -t tmpfs -o size=2m tmpfs "$small" 2>/dev/null; then
  trap 'umount "$small" 2>/dev/null; rm -rf "$tmp"' EXIT
  "$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$small/store.clipfeat" --dtype f16 ||
    check "clip-index on the tmpfs" false
  cp "$small/store.clipfeat" "$T/small.orig"
  dd if=/dev/zero of="$small/fill" bs=4k 2>/dev/null  # until the tmpfs is full
  check "the tmpfs is full" test "$(df --output=avail "$small" | tail -1)" -eq 0
  rc=$(code "$BIN/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$small/store.clipfeat")
  check "full disk (tmpfs): exit 5 ($rc)" [ "$rc" -eq 5 ]
  check "... naming the output and the cause" has "$T/err" "cannot write '$small/store.clipfeat': No space left on device"
  check "... the earlier store intact" cmp -s "$small/store.clipfeat" "$T/small.orig"
  check "... no temporary file left" test -z "$(temps "$small/store.clipfeat")"
  umount "$small" && disk_full_tested=1
fi
# RLIMIT_FSIZE: also where the mount worked, as it is the fallback elsewhere.
"$BIN/clip-index" -q "${MODEL[@]}" --images "$F/images.tsv" --image-out "$T/limit.clipfeat" --dtype f16 || check "clip-index" false
cp "$T/limit.clipfeat" "$T/limit.orig"
limit_kb=$(( $(stat -c %s "$T/limit.orig") / 1024 ))  # the f32 store is about twice as large: it cannot fit
( trap '' XFSZ; ulimit -f "$limit_kb" && exec "$BIN/clip-index" "${MODEL[@]}" --images "$F/images.tsv" --image-out "$T/limit.clipfeat" ) 2>&1 | cat >"$T/err"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] && grep -q "File too large" "$T/err"; then
  check "file size limit: exit 5 ($rc)" [ "$rc" -eq 5 ]
  check "... naming the output and the cause" has "$T/err" "cannot write '$T/limit.clipfeat': File too large"
  check "... the earlier store intact" cmp -s "$T/limit.clipfeat" "$T/limit.orig"
  check "... no temporary file left" test -z "$(temps "$T/limit.clipfeat")"
  disk_full_tested=1
else
  echo "note: RLIMIT_FSIZE did not make the write fail here (exit $rc)"
fi

[ "$fails" -eq 0 ] || { echo "$fails check(s) failed" >&2; exit 1; }
if [ "$disk_full_tested" -eq 0 ]; then echo "skip: no way to fill a disk here (no tmpfs mount, no RLIMIT_FSIZE)"; exit 77; fi
echo "faults: all checks passed"
