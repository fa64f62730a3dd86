#include "clip/cli/early_start.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "clip/base/error.h"
#include "clip/base/timing.h"

namespace clip {

namespace {

// Constant-initialised only: written before any static initialisation runs.
int g_report_fd = -1;              // the child: the pipe's write end to the waiting parent
volatile sig_atomic_t g_child = 0;  // the parent: the child's pid
int g_parent = 0;                   // the child: the waiting parent's pid
int g_prestart_device = -1;
pthread_t g_prestart_thread;
bool g_prestart_started = false;

// "fd:parent pid" of a detached child, for the same child after it re-executes itself (the BLAS
// core's one re-exec, runtime.h): it keeps reporting to the same parent instead of forking again.
constexpr const char* kReportEnv = "CLIP_EARLY_REPORT";

// The environment as the loader passed it: the C library's getenv and setenv work only after its
// own initialisation, which runs after the pre-initialisation functions.
char** g_envp = nullptr;

const char* env_value(const char* name) {
  const size_t n = std::strlen(name);
  for (char** e = g_envp; e && *e; ++e)
    if (std::strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  return nullptr;
}

// -1 unset or empty, 0 for "0", 1 for anything else.
int env_switch(const char* name) {
  const char* v = env_value(name);
  if (!v || !*v) return -1;
  return std::strcmp(v, "0") == 0 ? 0 : 1;
}

// The ordinal of the last --device cuda / cuda:N / --device=... on the command line; -1 for none
// or another device. The encoder reads the same value later (parse_device, model/tensor_torch.h); this
// reading cannot use it (std::string, before static initialisation) and only decides what starts early.
int cuda_device_arg(int argc, char** argv) {
  int dev = -1;
  for (int i = 1; i < argc && argv[i]; ++i) {
    const char* v = nullptr;
    if (std::strcmp(argv[i], "--") == 0) break;
    if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) v = argv[++i];
    else if (std::strncmp(argv[i], "--device=", 9) == 0) v = argv[i] + 9;
    if (!v) continue;
    if (std::strcmp(v, "cuda") == 0) dev = 0;
    else if (std::strncmp(v, "cuda:", 5) == 0 && v[5] >= '0' && v[5] <= '9') dev = std::atoi(v + 5);
    else dev = -1;
  }
  return dev;
}

// The driver's start and the device's primary context, the one LibTorch's runtime then uses; the
// context is kept (released with the process). Any failure leaves it to LibTorch, which reports it.
void* prestart_context(void*) {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return nullptr;
  using InitFn = int (*)(unsigned);
  using GetFn = int (*)(int*, int);
  using RetainFn = int (*)(void**, int);
  auto init = reinterpret_cast<InitFn>(dlsym(h, "cuInit"));
  auto get = reinterpret_cast<GetFn>(dlsym(h, "cuDeviceGet"));
  auto retain = reinterpret_cast<RetainFn>(dlsym(h, "cuDevicePrimaryCtxRetain"));
  int dev = 0;
  void* ctx = nullptr;
  if (init && get && retain && init(0) == 0 && get(&dev, g_prestart_device) == 0) retain(&ctx, dev);
  return nullptr;
}

// Registered before any other at-exit handler, so it runs after them: a process leaving through
// exit() (a usage error, --help) does not unload the driver under the thread still starting it.
void join_prestart() {
  if (g_prestart_started) pthread_join(g_prestart_thread, nullptr);
  g_prestart_started = false;
}

void start_context_thread(int device) {
  g_prestart_device = device;
  if (pthread_create(&g_prestart_thread, nullptr, prestart_context, nullptr) != 0) return;
  g_prestart_started = true;
  std::atexit(join_prestart);
}

void forward_signal(int sig) {
  const pid_t c = g_child;
  if (c > 0) kill(c, sig);
}

// The parent of a detached start: exits with the status the child reports, or, when the pipe closes
// without one (an exit that did not pass run_main's end, a crash), with the child's own status.
[[noreturn]] void wait_for_child(int rfd, pid_t child) {
  unsigned char buf[4];
  size_t got = 0;
  for (;;) {
    const ssize_t n = read(rfd, buf + got, sizeof buf - got);
    if (n > 0) {
      got += static_cast<size_t>(n);
      if (got == sizeof buf) {
        int32_t rc;
        std::memcpy(&rc, buf, sizeof rc);
        _exit(rc & 0xff);
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  int st = 0;
  while (waitpid(child, &st, 0) < 0) {
    if (errno != EINTR) _exit(kExitInternal);
  }
  if (WIFEXITED(st)) _exit(WEXITSTATUS(st));
  const int sig = WIFSIGNALED(st) ? WTERMSIG(st) : SIGKILL;
  // Die of the child's signal, as the shell expects, without a core file of this waiting process.
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
  raise(sig);
  _exit(128 + sig);
}

// Adopts the report pipe of an earlier image of this same child (see kReportEnv); false when there
// is none or it belongs to another process (an ancestor's environment).
bool adopt_report_pipe() {
  const char* v = env_value(kReportEnv);
  if (!v) return false;
  int fd = -1, parent = -1;
  struct stat s;
  if (std::sscanf(v, "%d:%d", &fd, &parent) != 2 || fd <= 2 || parent != static_cast<int>(getppid()) ||
      fstat(fd, &s) != 0 || !S_ISFIFO(s.st_mode))
    return false;  // an ancestor's: the static initialiser below replaces or removes it
  g_report_fd = fd;
  g_parent = parent;
  set_process_origin(parent);
  return true;
}

void detach() {
  int fds[2];
  if (pipe(fds) != 0) return;
  if (fds[0] <= STDERR_FILENO || fds[1] <= STDERR_FILENO) {  // started with stdin, stdout or stderr closed
    close(fds[0]);
    close(fds[1]);
    return;
  }
  fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return;
  }
  if (pid > 0) {
    close(fds[1]);
    g_child = pid;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) {
      struct sigaction old;
      // A signal the shell set to be ignored (a background job's SIGINT) stays ignored.
      if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(sig, &sa, nullptr);
    }
    wait_for_child(fds[0], pid);
  }
  close(fds[0]);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(kExitInterrupted);  // the parent died before the line above
  g_report_fd = fds[1];
  g_parent = parent;
  set_process_origin(parent);  // timing lines count from the start of the process the shell started
}

// Once the C library is initialised (this program's static initialisation): the report pipe in
// the environment for the child's re-exec (kReportEnv), or an inherited entry removed.
const bool g_report_env = [] {
  if (g_report_fd < 0) {
    unsetenv(kReportEnv);
  } else {
    char v[48];
    std::snprintf(v, sizeof v, "%d:%d", g_report_fd, g_parent);
    setenv(kReportEnv, v, 1);
  }
  return true;
}();

}  // namespace

void early_start(int argc, char** argv, char** envp, EarlyStart what) {
  g_envp = envp;
  const int device = cuda_device_arg(argc, argv);
  if (what == EarlyStart::cuda_detach && !adopt_report_pipe()) {
    const int sw = env_switch("CLIP_DETACH");
    if (sw == 1 || (sw == -1 && device >= 0)) detach();
  }
  if (device >= 0 && env_switch("CLIP_CUDA_PRESTART") != 0) start_context_thread(device);
}

void early_report_exit(int rc) {
  if (g_report_fd < 0) return;
  std::fflush(stdout);
  std::fflush(stderr);
  // Whoever reads this process's stdout or stderr sees their end now, not after the teardown;
  // anything written later goes nowhere.
  const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null >= 0) {
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    close(null);
  }
  const int fd = g_report_fd;
  g_report_fd = -1;
  const int32_t v = rc;
  ssize_t n;
  do {
    n = write(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  close(fd);
}

}  // namespace clip
