// Shared command-line plumbing: every tool's main() is `return clip::run_main("tool", argc, argv, body)`;
// the option groups shared by the tools are in cli/options.h.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include "clip/base/error.h"
#include "clip/cli/early_start.h"
#include "clip/cli/options.h"
#include "clip/retrieval/query.h"

namespace clip {

// Parse inside a tool: help/version print to stdout and return 0; a parse error becomes a UsageError,
// so run_main prints it like every other error ("<tool>: usage error: ...") and exits kExitUsage.
#define CLIP_PARSE(app, argc, argv)                                                                    \
  try {                                                                                                \
    (app).parse((argc), (argv));                                                                       \
  } catch (const CLI::ParseError& e) {                                                                 \
    if (e.get_exit_code() == 0) return (app).exit(e) == 0 ? ::clip::kExitOk : ::clip::kExitUsage;      \
    throw ::clip::UsageError(std::string(e.what()) + " (run with --help for the options)");            \
  }

// Runs a tool: BLAS set-up, SIGPIPE handling, one catch mapping errors to exit codes, and a final
// check that stdout was written completely (a closed pipe counts as success, a full disk does not).
int run_main(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body);

// --format jsonl|tsv|cnclip of clip-query.
OutFormat parse_out_format(const std::string& s);

// Write to stdout (data only). Throws IoError on a write error other than a closed pipe.
void out(const std::string& s);

}  // namespace clip
