// The c10d differences between Debian's LibTorch 1.13 and the PyTorch 2.x LibTorch of the GPU
// machine, for dist.cpp only (the rest of the tree never includes c10d).
//  - 1.13: ProcessGroupGloo/ProcessGroupNCCL derive from c10d::ProcessGroup.
//  - 2.x: they derive from c10d::Backend (ProcessGroup became a dispatcher over backends); the
//    collective methods used here (allreduce, allgather, broadcast, barrier) keep their signatures.
//  - Gloo's headers come from libgloo-dev on Debian; a build without them (CLIP_HAVE_GLOO unset)
//    has NCCL only, and one without CUDA+NCCL (CLIP_HAVE_NCCL unset) has Gloo only.
#pragma once
#include <torch/version.h>

#if defined(CLIP_HAVE_GLOO) && !defined(USE_C10D_GLOO)
#define USE_C10D_GLOO 1
#endif
#if defined(CLIP_HAVE_NCCL) && !defined(USE_C10D_NCCL)
#define USE_C10D_NCCL 1
#endif

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#ifdef CLIP_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef CLIP_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace clip::compat {

#if TORCH_VERSION_MAJOR >= 2
using DistBackend = c10d::Backend;
#else
using DistBackend = c10d::ProcessGroup;
#endif

}  // namespace clip::compat
