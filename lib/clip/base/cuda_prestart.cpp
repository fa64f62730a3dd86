// libclip_cuda_prestart.so: creates CUDA's primary context on a thread of its own while LibTorch's
// libraries initialise (about 0.2 s of CUDA's start against 0.25-0.3 s of their static constructors on
// the GPU machine; docs/gpu.md), so that a tool with --device cuda finds it ready.
//
// Linked into the tools that take --device, after LibTorch's libraries: the dynamic loader runs a
// program's direct dependencies' constructors last-listed first, once their own dependencies (the C
// library among them) are initialised, so this one runs before LibTorch's. It uses nothing but the C
// library and, through dlopen, the driver's libcuda: no LibTorch, no CUDA runtime, no C++ runtime.
// The primary context is the one the CUDA runtime (and so LibTorch) uses: retaining it first only
// moves its creation earlier. Nothing is done without a --device cuda[:N] argument, when
// CLIP_NO_CUDA_PRESTART is set, or under a launcher that assigns devices (torchrun's LOCAL_RANK); a
// machine without the driver or a GPU only costs the failed dlopen or cuInit.
#include <dlfcn.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>

namespace {

int g_device = -1;
pthread_t g_thread;
bool g_started = false;

void* create_context(void*) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return nullptr;
  using Init = int (*)(unsigned);
  using DeviceGet = int (*)(int*, int);
  using Retain = int (*)(void**, int);
  auto init = reinterpret_cast<Init>(dlsym(lib, "cuInit"));
  auto get = reinterpret_cast<DeviceGet>(dlsym(lib, "cuDeviceGet"));
  auto retain = reinterpret_cast<Retain>(dlsym(lib, "cuDevicePrimaryCtxRetain"));
  int dev = 0;
  void* ctx = nullptr;
  if (init != nullptr && get != nullptr && retain != nullptr && init(0) == 0 && get(&dev, g_device) == 0)
    retain(&ctx, dev);  // kept for the process's lifetime, as the runtime keeps it
  return nullptr;       // the library stays loaded: the runtime opens it again anyway
}

// The device index of a --device cuda or cuda:N argument (either "--device X" or "--device=X"), else -1.
int requested_device(int argc, char** argv) {
  int dev = -1;
  for (int i = 1; i < argc && argv != nullptr && argv[i] != nullptr; ++i) {
    const char* v = nullptr;
    if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) v = argv[i + 1];
    else if (std::strncmp(argv[i], "--device=", 9) == 0) v = argv[i] + 9;
    if (v == nullptr) continue;
    if (std::strcmp(v, "cuda") == 0) dev = 0;
    else if (std::strncmp(v, "cuda:", 5) == 0 && v[5] >= '0' && v[5] <= '9') dev = std::atoi(v + 5);
    else dev = -1;  // the last --device wins, as in the option parser
  }
  return dev;
}

// glibc passes a shared object's constructors the program's arguments.
__attribute__((constructor)) void prestart(int argc, char** argv, char**) {
  if (std::getenv("CLIP_NO_CUDA_PRESTART") != nullptr || std::getenv("LOCAL_RANK") != nullptr) return;
  g_device = requested_device(argc, argv);
  if (g_device < 0) return;
  g_started = pthread_create(&g_thread, nullptr, create_context, nullptr) == 0;
  // A program that exits normally before the context is made (--help, a usage error) waits for it
  // here, before the libraries' destructors run, libcuda's among them.
  if (g_started) std::atexit([] { pthread_join(g_thread, nullptr); });
}

}  // namespace

// Referenced by the tools (run_main), so that the linker keeps this library among their dependencies.
extern "C" int clip_cuda_prestart_linked() { return g_device; }
