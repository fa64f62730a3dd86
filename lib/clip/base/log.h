// Logging and progress. stdout is for data only: everything here writes to stderr.
#pragma once
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace clip {

enum class LogLevel { quiet = 0, error = 1, warn = 2, info = 3, debug = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_write(LogLevel level, const std::string& msg);  // flushes stdout first, like samtools

template <typename... Args>
void log_info(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() >= LogLevel::info) log_write(LogLevel::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_warn(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() >= LogLevel::warn) log_write(LogLevel::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_error(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() >= LogLevel::error) log_write(LogLevel::error, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... args) {
  if (log_level() >= LogLevel::debug) log_write(LogLevel::debug, fmt::format(f, std::forward<Args>(args)...));
}

// Progress of a long job on stderr: a redrawn bar with rate and ETA when stderr is a terminal,
// otherwise one parseable line per update:
//   progress task=<task> done=<n> total=<n> elapsed_s=<x> rate=<x>/s eta_s=<x>
class Progress {
 public:
  Progress(std::string task, int64_t total, std::string unit = "items");
  ~Progress();
  void add(int64_t n);  // n more items done
  void set(int64_t done);
  void finish();        // final line; called by the destructor if not yet
  void set_extra(std::string extra) { extra_ = std::move(extra); }  // appended to each line, e.g. "loss=0.52"
  double elapsed_s() const;

 private:
  void draw(bool final);
  std::string task_, unit_, extra_;
  int64_t total_, done_ = 0, drawn_ = -1;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

bool stderr_is_tty();

}  // namespace clip
