// SHA-256 throughput (the checkpoint fingerprint a feature store records, lib/clip/base/sha256.h):
// the portable rounds against the CPU's SHA instructions (SHA-NI) where it has them, on the same
// buffer, alternated, best of --reps. Prints one line per path:
//   bench sha256 path=portable|sha-ni mb=M ms=T mb_per_s=R
//   bench_hash [--mb 512] [--reps 5]
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "clip/base/sha256.h"

int main(int argc, char** argv) {
  CLI::App app{"SHA-256 throughput: portable against SHA-NI", "bench_hash"};
  int64_t mb = 512;
  int reps = 5;
  app.add_option("--mb", mb, "Buffer size in MB")->capture_default_str();
  app.add_option("--reps", reps, "Repetitions (best reported)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::vector<unsigned char> buf(static_cast<size_t>(mb) << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>(i * 2654435761u >> 13);
  double best[2] = {1e30, 1e30};
  std::string digest[2];
  clip::set_sha256_hardware(true);
  const bool have = clip::sha256_hardware();
  for (int r = 0; r < reps; ++r)
    for (int path = 0; path < (have ? 2 : 1); ++path) {
      clip::set_sha256_hardware(path == 1);
      auto t0 = std::chrono::steady_clock::now();
      digest[path] = clip::sha256_hex(buf.data(), buf.size());
      best[path] = std::min(best[path], std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  for (int path = 0; path < (have ? 2 : 1); ++path)
    std::printf("bench sha256 path=%s mb=%lld ms=%.1f mb_per_s=%.0f\n", path ? "sha-ni" : "portable", (long long)mb,
                best[path], buf.size() / 1e6 / (best[path] / 1e3));
  if (!have) std::printf("(no SHA instructions on this CPU)\n");
  if (have && digest[0] != digest[1]) {
    std::fprintf(stderr, "digests differ: %s vs %s\n", digest[0].c_str(), digest[1].c_str());
    return 1;
  }
  return 0;
}
