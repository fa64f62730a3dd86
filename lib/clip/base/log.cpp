#include "clip/base/log.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#include "clip/base/error.h"

namespace clip {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
std::mutex g_log_mutex;

// Seconds since this process was started (exec), from /proc/self/stat's start time (clock ticks since
// boot, 10 ms resolution); 0 where /proc is not there.
double seconds_since_exec() {
  static const double start = [] {
    FILE* f = std::fopen("/proc/self/stat", "r");
    if (!f) return -1.0;
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    const char* p = std::strrchr(buf, ')');  // the command name may hold spaces
    for (int field = 2; p && field < 22; ++field) p = std::strchr(p + 1, ' ');
    return p ? std::strtod(p + 1, nullptr) / static_cast<double>(sysconf(_SC_CLK_TCK)) : -1.0;
  }();
  if (start < 0) return 0;
  timespec now{};
  clock_gettime(CLOCK_BOOTTIME, &now);
  return now.tv_sec + now.tv_nsec * 1e-9 - start;
}
}  // namespace

void throw_io_error(const std::string& action, const std::string& path) {
  throw IoError(fmt::format("cannot {} '{}': {}", action, path, std::strerror(errno)));
}

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_write(LogLevel level, const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  std::fflush(stdout);
  const char* prefix = "";
  switch (level) {
    case LogLevel::error: prefix = "error: "; break;
    case LogLevel::warn: prefix = "warning: "; break;
    case LogLevel::debug: prefix = "debug: "; break;
    default: break;
  }
  if (level == LogLevel::debug) {
    // Where a process spends its start-up: seconds since exec (wall) and CPU seconds of all threads.
    timespec cpu{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
    // Resident memory: anonymous and file-backed (mapped checkpoints, libraries) pages, from /proc.
    long anon_kb = 0, file_kb = 0, peak_kb = 0;
    if (FILE* f = std::fopen("/proc/self/status", "r")) {
      char line[256];
      while (std::fgets(line, sizeof line, f)) {
        if (std::strncmp(line, "VmHWM:", 6) == 0) peak_kb = std::strtol(line + 6, nullptr, 10);
        if (std::strncmp(line, "RssAnon:", 8) == 0) anon_kb = std::strtol(line + 8, nullptr, 10);
        if (std::strncmp(line, "RssFile:", 8) == 0) file_kb = std::strtol(line + 8, nullptr, 10);
      }
      std::fclose(f);
    }
    std::fprintf(stderr, "debug [%.3f s, cpu %.3f s, rss %.0f MiB = anon %.0f + file %.0f, peak %.0f]: %s\n",
                 seconds_since_exec(), cpu.tv_sec + cpu.tv_nsec * 1e-9, (anon_kb + file_kb) / 1024.0, anon_kb / 1024.0,
                 file_kb / 1024.0, peak_kb / 1024.0, msg.c_str());
    std::fflush(stderr);
    return;
  }
  std::fprintf(stderr, "%s%s\n", prefix, msg.c_str());
  std::fflush(stderr);
}

bool stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

Progress::Progress(std::string task, int64_t total, std::string unit)
    : task_(std::move(task)), unit_(std::move(unit)), total_(total), tty_(stderr_is_tty()) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::add(int64_t n) { set(done_ + n); }

void Progress::set(int64_t done) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  // Terminal: redraw at most 10 times a second. Pipe/file: one line per update (per batch/step).
  if (tty_ && std::chrono::duration<double>(now - last_draw_).count() < 0.1 && done_ < total_) return;
  last_draw_ = now;
  draw(false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (log_level() < LogLevel::info) return;
  if (!tty_ && drawn_ == done_) return;  // the last line already says it
  draw(true);
}

void Progress::draw(bool final) {
  if (log_level() < LogLevel::info) return;
  drawn_ = done_;
  double el = elapsed_s();
  double rate = el > 0 ? done_ / el : 0.0;
  double eta = (rate > 0 && total_ > done_) ? (total_ - done_) / rate : 0.0;
  std::lock_guard<std::mutex> lock(g_log_mutex);
  if (tty_) {
    const int width = 30;
    double frac = total_ > 0 ? std::min(1.0, double(done_) / total_) : 0.0;
    int fill = static_cast<int>(frac * width);
    std::string bar(fill, '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %.1f %s/s  ETA %.0fs %s\x1b[K", task_.c_str(), bar.c_str(),
                 (long long)done_, (long long)total_, unit_.c_str(), rate, unit_.c_str(), eta, extra_.c_str());
    if (final) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "progress task=%s done=%lld total=%lld elapsed_s=%.2f rate=%.2f eta_s=%.1f%s%s\n",
                 task_.c_str(), (long long)done_, (long long)total_, el, rate, eta, extra_.empty() ? "" : " ",
                 extra_.c_str());
  }
  std::fflush(stderr);
}

}  // namespace clip
