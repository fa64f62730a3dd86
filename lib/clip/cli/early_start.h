// What a tool does before LibTorch's libraries initialise (docs/architecture.md, "Process start and
// end"). LibTorch's static initialisation takes about a quarter of a second; CUDA's start (the driver
// and the device's primary context) about 0.2 s more, and the context's teardown at exit 0.13 s.
// A tool whose file says CLIP_EARLY_START runs clip::early_start from its executable's ELF
// pre-initialisation array, before any shared library's initialiser, which for a run on CUDA
// (`--device cuda` or `cuda:N` on the command line):
//
//  * detaches the end (not with EarlyStart::cuda): the process forks once, before any thread exists;
//    the parent (the process the shell started) waits, and exits with the tool's exit status as soon
//    as run_main reports it, its outputs written and stdout and stderr closed; the child does the
//    work and then the teardown alone. The parent forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1
//    and SIGUSR2 to the child, exits with the child's status (or dies of its signal) when the child
//    ends without reporting, and the child dies with the parent (PR_SET_PDEATHSIG);
//  * starts CUDA's primary context on that device, through the driver library (dlopen), on a thread
//    of its own, while the libraries initialise: LibTorch then finds it made.
//
// CLIP_DETACH=0 turns the first off, CLIP_DETACH=1 turns it on also without CUDA (for tests);
// CLIP_CUDA_PRESTART=0 turns the second off. Nothing here may rely on a library's or this program's
// static initialisation (it runs before them): C library calls and constant-initialised data only.
#pragma once

namespace clip {

enum class EarlyStart {
  cuda,         // the CUDA context only (a server: its process must stay the one that was started)
  cuda_detach,  // the context and the detached end (a batch tool)
};

void early_start(int argc, char** argv, char** envp, EarlyStart what);

// In the child of a detached start: flushes and closes stdout and stderr and hands `rc` to the
// parent, which exits with it at once; later calls do nothing. Elsewhere nothing.
void early_report_exit(int rc);

}  // namespace clip

// In a tool's file (at namespace scope): the pre-initialisation entry that calls early_start.
#define CLIP_EARLY_START(what)                                                                          \
  namespace {                                                                                           \
  void clip_early_start_entry(int argc, char** argv, char** envp) { ::clip::early_start(argc, argv, envp, (what)); } \
  __attribute__((section(".preinit_array"), used)) void (*clip_early_start_ptr)(int, char**, char**) =  \
      clip_early_start_entry;                                                                           \
  }
