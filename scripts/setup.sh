#!/usr/bin/env bash
# Installs everything the project needs from Debian's packages (and the npm registry for the test
# drivers), then configures and builds. Idempotent: a second run only rebuilds what changed.
#   scripts/setup.sh            install + build (Release) into build/
#   CLIP_SKIP_APT=1 scripts/setup.sh   build only
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas0-openmp libgloo-dev   # libgloo-dev: the Gloo backend of distributed fine-tuning
  libcli11-dev libfmt-dev catch2 libstb-dev nlohmann-json3-dev
  libjpeg62-turbo-dev libpng-dev zlib1g-dev libicu-dev
  python3-torch python3-numpy python3-pil   # test cross-checks only: torch.load of our checkpoints, Pillow references
  libonnx-dev libprotobuf-dev protobuf-compiler   # clip-export builds ONNX graphs with ONNX's protobuf definitions
  python3-onnx nodejs                             # tests: ONNX's Python checker; onnxruntime-node runs the exported graphs
  libcpp-httplib-dev                              # clip-serve
  libfaiss-dev                                    # approximate search (clip-index --ann); optional at build time
  chromium fonts-wqy-microhei                     # clip-serve's browser test and its screenshots (CJK font); montage labels
  clang libclang-rt-14-dev                        # tests: libFuzzer harnesses with ASan + UBSan (scripts/fuzz.sh)
  libwebp-dev libgif-dev                          # WebP and GIF photos (folders given to --images)
  liblmdb-dev python3-lmdb                        # cn_clip's LMDB datasets; python3-lmdb: the test that builds one
  libfreetype-dev                                 # contact sheets draw query texts (any script) with FreeType
)

if [[ -z "${CLIP_SKIP_APT:-}" ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

# onnxruntime-node for the ONNX tests (tests/node). Its install script would download GPU binaries;
# the CPU runtime ships inside the package, so skip that step. Skipped when already installed.
if [[ -z "${CLIP_SKIP_NPM:-}" && ! -d tests/node/node_modules/onnxruntime-node ]]; then
  if ! command -v npm >/dev/null; then  # Debian's nodejs comes without npm (NodeSource's includes it)
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >&2
  fi
  echo "setup: npm install onnxruntime-node into tests/node" >&2
  (cd tests/node && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund >&2)
fi
# The browser test's driver, from the npm registry (Chromium itself is Debian's: no browser download).
if [[ -z "${CLIP_SKIP_NPM:-}" && ! -d tests/e2e/node_modules/playwright-core ]] && command -v npm >/dev/null; then
  echo "setup: npm install in tests/e2e" >&2
  (cd tests/e2e && npm install --no-audit --no-fund >&2)
fi

# OpenBLAS 0.3.21 misdetects some recent Xeons; pick a kernel only when none is set (the tools also
# do this themselves at start-up).
if [[ -z "${OPENBLAS_CORETYPE:-}" ]] && grep -q avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX; fi

BUILD_DIR=${BUILD_DIR:-build}
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$BUILD_DIR" -j"$(nproc)" >&2
