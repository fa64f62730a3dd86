// Wall-clock timing for the `timing ...` lines the tools log (steady_clock: a few tens of
// nanoseconds a reading, cheap enough per batch and per image).
#pragma once
#include <chrono>

namespace clip {

using SteadyClock = std::chrono::steady_clock;

inline double seconds_since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

// Seconds since this process started: from the kernel's record of its start (/proc/self/stat), so
// that loading the shared libraries (LibTorch, CUDA) and static initialisation count; where that
// cannot be read, since this library's static initialisation.
double process_seconds();

// The process whose start process_seconds() counts from, instead of this one: a detached start's
// child names its parent, the process the shell started (cli/early_start.h). It is called before
// static initialisation and must precede the first process_seconds().
void set_process_origin(int pid);

// Adds the seconds from its construction to its destruction to `acc`.
class ScopedTimer {
 public:
  explicit ScopedTimer(double& acc) : acc_(acc), t0_(SteadyClock::now()) {}
  ~ScopedTimer() { acc_ += seconds_since(t0_); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& acc_;
  SteadyClock::time_point t0_;
};

}  // namespace clip
