#!/usr/bin/env bash
# Builds the tools against the PyTorch 2.x LibTorch that ships inside a CUDA-enabled Python torch
# wheel (the GPU machine). Tests are off there: they target Debian's Catch2 v2.
#   ICU_ROOT=/path/to/icu scripts/gpu_build.sh     (ICU headers + libs when the system has none)
#   CLIP_TARGETS="clip-index clip-export" scripts/gpu_build.sh   (only these tools)
#   CLIP_CMAKE_ARGS=-DCLIP_CUDA_KERNELS=OFF scripts/gpu_build.sh  (more CMake settings: here, no own kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
# nvcc for the project's own kernels (lib/clip/model/cuda): found on PATH or in /usr/local/cuda.
if [[ -z ${CUDACXX:-} ]] && ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
CUDA_ARCH=${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; c=torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}
cmake -S . -B "${BUILD_DIR:-build-gpu}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLIP_BUILD_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DTORCH_CUDA_ARCH_LIST="$CUDA_ARCH" ${ICU_ROOT:+-DICU_ROOT=$ICU_ROOT} ${CLIP_CMAKE_ARGS:-} >&2
cmake --build "${BUILD_DIR:-build-gpu}" -j"$(nproc)" ${CLIP_TARGETS:+--target $CLIP_TARGETS} >&2
