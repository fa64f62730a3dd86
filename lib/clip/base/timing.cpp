#include "clip/base/timing.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace clip {

namespace {

const SteadyClock::time_point g_static_init = SteadyClock::now();
int g_origin_pid = 0;  // constant-initialised: set_process_origin runs before static initialisation

// The process's age from its start time in /proc/self/stat (or the origin's: set_process_origin;
// field 22, clock ticks after boot) and CLOCK_BOOTTIME, the clock that start time is measured on;
// < 0 when unavailable.
double age_from_proc() {
  char path[40] = "/proc/self/stat";
  if (g_origin_pid > 0) std::snprintf(path, sizeof path, "/proc/%d/stat", g_origin_pid);
  std::FILE* f = std::fopen(path, "r");
  if (!f) return -1;
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // Field 2 is the command name in parentheses and may hold spaces: count from the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p) return -1;
  unsigned long long start_ticks = 0;
  int field = 2;
  for (const char* q = p + 1; *q && field < 22; ++q) {
    if (*q == ' ') {
      ++field;
      if (field == 22 && std::sscanf(q + 1, "%llu", &start_ticks) != 1) return -1;
    }
  }
  if (field != 22) return -1;
  const long tck = ::sysconf(_SC_CLK_TCK);
  struct timespec now;
  if (tck <= 0 || ::clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
  const double age = double(now.tv_sec) + double(now.tv_nsec) * 1e-9 - double(start_ticks) / double(tck);
  return age;
}

}  // namespace

void set_process_origin(int pid) { g_origin_pid = pid; }

double process_seconds() {
  // The offset of the kernel's start time before our static initialisation, read once.
  static const double before_init = [] {
    const double age = age_from_proc(), since_init = seconds_since(g_static_init);
    // Clock ticks are coarse (10 ms); an implausible value (another clock, a time namespace
    // quirk) falls back to the static initialisation alone.
    return age >= since_init - 0.02 && age < since_init + 3600 ? std::max(0.0, age - since_init) : 0.0;
  }();
  return before_init + seconds_since(g_static_init);
}

}  // namespace clip
