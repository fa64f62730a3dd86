#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/, clang with ASan + UBSan, in build-fuzz/) and runs each
# for a bounded time over its committed seed corpus (tests/fuzz/corpus/<target>/). New inputs the
# fuzzer finds go to a scratch folder, never into the committed corpus; a finding (crash, sanitizer
# report, timeout, leak) is written to build-fuzz/findings/ and fails the script.
#   scripts/fuzz.sh                  every target, 10 s each, new inputs each time
#   scripts/fuzz.sh --seconds 600    every target, 10 minutes each
#   scripts/fuzz.sh --seconds 60 image pickle
#   scripts/fuzz.sh --runs 20000 --seed 1   the same inputs on every machine (the test suite runs this;
#                                           --seconds then only caps a slow machine's run)
# A fixed seed and run count make a finding reproducible by the same command; without them each run
# explores new inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10
runs=-1
seed=0
targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
((${#targets[@]})) || targets=(zip_pickle pickle safetensors image base64 dataset tokenizer store)
B=${FUZZ_BUILD_DIR:-build-fuzz}
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/setup.sh installs clang)" >&2; exit 2; }
if [[ ! -f "$B/build.ninja" ]]; then
  CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLIP_FUZZ=ON \
    -DCLIP_BUILD_TESTS=OFF >&2
fi
cmake --build "$B" --target $(printf 'fuzz_%s ' "${targets[@]}") -j"$(nproc)" >&2
vocab=${CLIP_SHARED_DIR:-../shared}/fixtures/cnclip-tiny/vocab.txt
[[ -f $vocab ]] || vocab=data/shapes-zh/vocab.txt
export CLIP_FUZZ_VOCAB=$vocab
# libtorch (linked by the base layer) is not built with ASan: its allocations at exit are not ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$B/findings"
scratch=$(mktemp -d /tmp/clip-fuzz-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$B/findings/$t.log"
  start=$SECONDS
  if "$B/bin/fuzz_$t" -max_total_time="$seconds" -runs="$runs" -seed="$seed" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
       -artifact_prefix="$B/findings/$t-" -print_final_stats=1 "$scratch/$t" "tests/fuzz/corpus/$t" > "$log" 2>&1; then
    ran=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "ok: fuzz $t: $ran inputs in $((SECONDS - start)) s$( ((seed)) && echo " (seed $seed)"), no finding"
  else
    echo "FAIL: fuzz $t: finding, see $log and $B/findings/$t-*" >&2
    tail -30 "$log" >&2
    failed=$((failed + 1))
  fi
done
echo "$((${#targets[@]} - failed)) passed, $failed failed"
exit $((failed > 0))
