// Typed errors of the core library. The library throws these and never exits; each tool's main()
// catches once (clip::run_tool in cli.h) and maps them to the documented exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace clip {

// Exit codes, the same in every tool (docs/exit-codes.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitNoResults = 1,   // clip-query: no hit passed --threshold
  kExitUsage = 2,       // bad command line, unknown model name, conflicting flags
  kExitData = 3,        // bad input data: image, TSV/JSONL line, feature file, store
  kExitModel = 4,       // checkpoint / config / vocab: unreadable, wrong shape, missing key
  kExitIo = 5,          // cannot open, read or write a file
  kExitTraining = 6,    // training stopped: NaN/inf loss, refused to overwrite a run folder
  kExitInternal = 70,   // a bug: an unexpected exception
  kExitInterrupted = 130,
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual int exit_code() const { return kExitInternal; }
  virtual const char* kind() const { return "error"; }
};

#define CLIP_DEFINE_ERROR(Name, code, label)                                  \
  class Name : public Error {                                                 \
   public:                                                                    \
    explicit Name(const std::string& what) : Error(what) {}                   \
    int exit_code() const override { return code; }                           \
    const char* kind() const override { return label; }                       \
  };

CLIP_DEFINE_ERROR(UsageError, kExitUsage, "usage error")
CLIP_DEFINE_ERROR(DataError, kExitData, "data error")
CLIP_DEFINE_ERROR(ModelError, kExitModel, "model error")
CLIP_DEFINE_ERROR(IoError, kExitIo, "I/O error")
CLIP_DEFINE_ERROR(TrainingError, kExitTraining, "training error")
#undef CLIP_DEFINE_ERROR

// Throws IoError naming the path and strerror(errno).
[[noreturn]] void throw_io_error(const std::string& action, const std::string& path);

}  // namespace clip
