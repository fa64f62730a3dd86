#!/usr/bin/env bash
# Builds the tools (scripts/gpu_build.sh) and checks them against transformers with
# scripts/check_transformers.py, on a machine whose python3 has torch and transformers.
#   scripts/check_transformers.sh FIXTURES_DIR [REPORT.json]
# FIXTURES_DIR: cn_clip's vocab.txt, texts.jsonl and tokens.jsonl (../shared/fixtures/cnclip-tiny, tokens.jsonl
# from its expected/). ICU_DEBS=DIR: a folder with Debian's libicu-dev and libicu72 .debs, unpacked to /tmp
# and used for the build and the run where the system has no ICU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ICU_DEBS:-}" ]; then
  icu=/tmp/icu-root
  for f in "$ICU_DEBS"/libicu*.deb; do dpkg -x "$f" "$icu"; done
  lib=$(dirname "$(find "$icu" -name 'libicuuc.so' | head -1)")
  export ICU_ROOT=$icu/usr CMAKE_LIBRARY_PATH=$lib LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
CLIP_TARGETS=${CLIP_TARGETS-clip-index clip-export} scripts/gpu_build.sh
exec python3 scripts/check_transformers.py --bin "${BUILD_DIR:-build-gpu}/bin" --fixtures "$1" ${2:+--out "$2"}
