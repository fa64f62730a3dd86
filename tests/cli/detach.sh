#!/usr/bin/env bash
# The detached end of a batch tool (lib/clip/cli/early_start.h), turned on here without CUDA by
# CLIP_DETACH=1: the process the shell starts forks before the libraries initialise and exits with
# the status its child reports once the outputs are written. Checked: the two processes exist (and
# not with CLIP_DETACH=0), the same outputs and exit statuses as without it, stdout complete through
# a pipe, signals to the parent reach the child, and the child dies with the parent.
# Usage: detach.sh BIN_DIR SOURCE_DIR SHARED_DIR
set -u
bin=$1 src=$2 shared=$3
F=$shared/fixtures/cnclip-tiny
source "$(dirname "$0")/checks.bash" detach
fixture_model "$F"

# Same stores, same status, with and without.
for d in 0 1; do
  CLIP_DETACH=$d "$bin/clip-index" "${MODEL[@]}" -q --images "$F/images.tsv" --texts "$F/texts.jsonl" -b 4 \
    --image-out "$tmp/img$d.clipfeat" --text-out "$tmp/txt$d.jsonl" >"$tmp/out$d" 2>"$tmp/err$d"
  echo $? >"$tmp/rc$d"
done
check "clip-index exits 0 both ways" test "$(cat "$tmp/rc0") $(cat "$tmp/rc1")" = "0 0"
check "the same image store" cmp -s "$tmp/img0.clipfeat" "$tmp/img1.clipfeat"
check "the same text features" cmp -s "$tmp/txt0.jsonl" "$tmp/txt1.jsonl"
check "nothing on stderr with -q" test ! -s "$tmp/err1"

# Exit statuses: usage (2), data (3), as without.
check "usage error: 2" test "$(CLIP_DETACH=1 code "$bin/clip-index" --bogus-flag)" -eq 2
check "the usage message still reaches stderr" has "$tmp/err" "usage error"
check "data error: 3" test "$(CLIP_DETACH=1 code "$bin/clip-index" "${MODEL[@]}" --texts "$F/images.tsv" \
  --text-out "$tmp/bad.jsonl")" -eq 3
check "the data error names the file" has "$tmp/err" "images.tsv"

# --device cuda detaches by default; where this build or machine has no CUDA, the usage error's
# status comes through the parent.
rc=$(code "$bin/clip-index" "${MODEL[@]}" --device cuda --texts "$F/texts.jsonl" --text-out "$tmp/cuda.jsonl")
if grep -q "no CUDA support" "$tmp/err"; then
  check "--device cuda without CUDA: 2 through the detached parent" test "$rc" -eq 2
fi

# stdout through a pipe: every line arrives, and the pipe ends.
Q=$tmp/q.txt
printf '%s\n' '一只猫' '红色的汽车' '海边的日落' >"$Q"
CLIP_DETACH=0 "$bin/clip-query" -q --index "$tmp/img0.clipfeat" "${MODEL[@]}" -t "$Q" -k 3 >"$tmp/q0.jsonl"
CLIP_DETACH=1 "$bin/clip-query" -q --index "$tmp/img0.clipfeat" "${MODEL[@]}" -t "$Q" -k 3 | cat >"$tmp/q1.jsonl"
check "clip-query's results through a pipe are complete" test -s "$tmp/q0.jsonl"
check "the same results through the pipe" cmp -s "$tmp/q0.jsonl" "$tmp/q1.jsonl"

# A job that waits (reading texts from a FIFO nobody writes): the two processes, and signals.
mkfifo "$tmp/fifo"
gone() {  # gone PID: not running within 5 s (absent, or a zombie no one reaped yet)
  local i s
  for i in $(seq 50); do
    s=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
    [[ $s == Z* ]] && return 0
    sleep 0.1
  done
  return 1
}
start_waiting() {  # start_waiting DETACH: $parent and $child (empty when there is none)
  CLIP_DETACH=$1 "$bin/clip-index" "${MODEL[@]}" -q --texts "$tmp/fifo" --text-out "$tmp/never.jsonl" 2>/dev/null &
  parent=$!
  child=
  local i
  for i in $(seq 50); do
    child=$(pgrep -P "$parent" | head -1)
    [[ -n $child || $1 == 0 ]] && break
    sleep 0.1
  done
  sleep 0.3
}
start_waiting 0
check "CLIP_DETACH=0: one process" test -z "$child"
kill -TERM "$parent"
wait "$parent"
check "CLIP_DETACH=0: SIGTERM ends it (143)" test $? -eq 143

start_waiting 1
check "CLIP_DETACH=1: a child does the work" test -n "$child"
check "the child runs the same program" test "$(readlink "/proc/$child/exe")" = "$(readlink -f "$bin/clip-index")"
kill -TERM "$parent"
wait "$parent"
check "SIGTERM to the parent: it dies of SIGTERM (143)" test $? -eq 143
check "and the child is gone" gone "$child"

start_waiting 1
kill -KILL "$parent"
wait "$parent" 2>/dev/null
check "SIGKILL to the parent: the child dies with it" gone "$child"

exit $((fails > 0))
