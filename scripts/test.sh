#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds and runs the whole test suite. This is what CI runs.
#   scripts/test.sh              the whole suite in build/
#   SANITIZE=1 scripts/test.sh   the Catch2 unit tests built with clang, AddressSanitizer and
#                                UndefinedBehaviorSanitizer in build-asan/ (LibTorch itself is not
#                                instrumented; tests/sanitizers/ holds the suppressions, each proven to
#                                come from inside LibTorch). A sanitizer report fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
if [[ -n "${SANITIZE:-}" ]]; then
  command -v clang++ >/dev/null || { echo "test: clang++ not found (scripts/setup.sh installs clang)" >&2; exit 2; }
  B=${SANITIZE_BUILD_DIR:-build-asan}
  if [[ ! -f "$B/build.ninja" ]]; then
    CC=clang CXX=clang++ cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLIP_SANITIZE=ON >&2
  fi
  cmake --build "$B" --target clip_tests clip-finetune -j"$(nproc)" >&2  # test_dist runs clip-finetune
  supp=$PWD/tests/sanitizers
  export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$supp/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp}
  # Only the Catch2 entries: the command-line tests and the fuzz run need the tools of build/.
  exec ctest --test-dir "$B" --output-on-failure -j1 -E '^(cli_|fuzz$)' "$@"
fi
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j1 "$@"
