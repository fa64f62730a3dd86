#include "clip/cli/cli.h"

#include <csignal>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/base/runtime.h"
#include "clip/cli/early_start.h"
#include "clip/retrieval/query.h"

namespace clip {

namespace {
bool g_stdout_closed = false;
}

void out(const std::string& s) {
  if (g_stdout_closed) return;
  if (!s.empty() && std::fwrite(s.data(), 1, s.size(), stdout) != s.size()) {
    if (errno == EPIPE) {
      g_stdout_closed = true;
      return;
    }
    throw IoError(std::string("cannot write to stdout: ") + std::strerror(errno));
  }
}

namespace {

int run_body(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body) {
  maybe_reexec_for_blas(argc, argv);
  std::signal(SIGPIPE, SIG_IGN);  // writes to a closed pipe then fail with EPIPE, handled in out()
  int rc = kExitInternal;
  try {
    rc = body(argc, argv);
  } catch (const Error& e) {
    log_error("{}: {}: {}", tool, e.kind(), e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    log_error("{}: out of memory (try a smaller --batch-size)", tool);
    return kExitInternal;
  } catch (const std::exception& e) {
    log_error("{}: internal error: {}", tool, e.what());
    return kExitInternal;
  }
  if (std::fflush(stdout) != 0 && errno != EPIPE && !g_stdout_closed) {
    log_error("{}: cannot write to stdout: {}", tool, std::strerror(errno));
    return kExitIo;
  }
  return rc;
}

}  // namespace

int run_main(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body) {
  const int rc = run_body(tool, argc, argv, body);
  std::fflush(stdout);
  std::fflush(stderr);
  // Every output is written and renamed by now: a detached start's parent exits with rc at once
  // (early_start.h), while this process goes on to its end (the GPU context's teardown) alone.
  early_report_exit(rc);
  if (quick_exit_requested()) std::_Exit(rc);  // skips the GPU context's teardown (runtime.h)
  return rc;
}

OutFormat parse_out_format(const std::string& s) {
  if (s == "jsonl" || s == "json") return OutFormat::jsonl;
  if (s == "tsv") return OutFormat::tsv;
  if (s == "cnclip") return OutFormat::cnclip;
  throw UsageError("unknown --format '" + s + "' (expected jsonl, tsv or cnclip)");
}

}  // namespace clip
