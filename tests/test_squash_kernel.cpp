// The CUDA squash's kernels (lib/clip/model/cuda/squash_kernels.cuh) run on the CPU, one emulated thread
// at a time, against the image layer's exact resize: the arithmetic and indexing that
// `clip-index --decode device` runs on the GPU, checked by every build (the GPU build's bench_kernels
// checks the launched kernels themselves).
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "clip/image/image.h"

// Stand-ins for what nvcc provides: no qualifiers, and the thread's coordinates set by run_grid.
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
namespace {
struct Coord {
  unsigned x = 0;
};
Coord blockIdx, threadIdx;
}  // namespace
#include "clip/model/cuda/squash_kernels.cuh"

namespace {

// Runs `kernel` once for every thread index below n, as a grid of kThreads-thread blocks would.
template <typename F>
void run_grid(int64_t n, F kernel) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  for (int64_t b = 0; b < blocks; ++b)
    for (int t = 0; t < kThreads; ++t) {
      blockIdx.x = static_cast<unsigned>(b);
      threadIdx.x = static_cast<unsigned>(t);
      kernel();
    }
}

// One pass's taps as the model layer uploads them (BicubicTaps::packed).
std::vector<int32_t> packed_taps(int in_size, int out_size, int& ksize) {
  const clip::BicubicTaps t = clip::bicubic_taps(in_size, out_size);
  ksize = t.ksize;
  return t.packed();
}

}  // namespace

TEST_CASE("the device squash's kernels give the exact resize's bytes", "[squash]") {
  std::mt19937 rng(7);
  // Down, up, one side kept, very thin, square; a batch of three images each (random and smooth).
  const std::vector<std::pair<int, int>> sizes = {{500, 375}, {375, 500}, {100, 80}, {1000, 100},
                                                  {224, 500}, {37, 1200}, {224, 224}, {300, 225}};
  for (const int r : {224, 64}) {
    for (const auto& [w, h] : sizes) {
      CAPTURE(w, h, r);
      const int g = 3;
      std::vector<uint8_t> in(static_cast<size_t>(g) * h * w * 3);
      for (size_t i = 0; i < in.size(); ++i)
        in[i] = i < in.size() / 3 * 2 ? static_cast<uint8_t>(rng() & 255)
                                      : static_cast<uint8_t>((i / 3 % static_cast<size_t>(w)) * 255 / w);
      int kx = 0, ky = 0;
      const std::vector<int32_t> tx = packed_taps(w, r, kx), ty = packed_taps(h, r, ky);
      std::vector<uint8_t> tmp(static_cast<size_t>(g) * h * r * 3), out(static_cast<size_t>(g) * 3 * r * r, 0);
      const int64_t rows = static_cast<int64_t>(g) * h;
      run_grid(rows * r, [&] { squash_horizontal(in.data(), rows, w, tx.data(), kx, r, tmp.data()); });
      run_grid(static_cast<int64_t>(g) * r * r, [&] { squash_vertical(tmp.data(), g, h, r, ty.data(), ky, r, out.data()); });
      for (int n = 0; n < g; ++n) {
        clip::Image im;
        im.width = w;
        im.height = h;
        im.mode = clip::PixelMode::RGB;
        im.pixels.assign(in.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(n) * h * w * 3),
                         in.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(n + 1) * h * w * 3));
        const clip::Image want = clip::resize_bicubic(im, r, r);
        int64_t differ = 0;
        for (int c = 0; c < 3; ++c)
          for (int y = 0; y < r; ++y)
            for (int x = 0; x < r; ++x)
              differ += out[((static_cast<size_t>(n) * 3 + c) * r + y) * r + x] !=
                        want.pixels[(static_cast<size_t>(y) * r + x) * 3 + c];
        CHECK(differ == 0);
      }
    }
  }
}
