// c10d process groups for clip-finetune (see dist.h), and the local launcher.
#include "clip/train/dist.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "clip/base/error.h"
#include "clip/base/log.h"
#include "clip/train/dist_compat.h"

extern char** environ;

namespace clip {

namespace {

int env_int(const char* name, int fallback, bool* present = nullptr) {
  const char* v = std::getenv(name);
  if (present) *present = v && *v;
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1000000)
    throw UsageError(fmt::format("environment variable {}='{}' is not a non-negative integer", name, v));
  return static_cast<int>(x);
}

constexpr size_t kBucketBytes = 25u << 20;

// Tensors grouped into buckets of one dtype and device, each at most kBucketBytes (a larger tensor
// is a bucket of its own).
std::vector<std::vector<at::Tensor>> buckets_of(const std::vector<at::Tensor>& ts) {
  std::vector<std::vector<at::Tensor>> out;
  size_t bytes = 0;
  for (const auto& t : ts) {
    if (!t.defined()) continue;
    size_t b = t.numel() * t.element_size();
    if (out.empty() || bytes + b > kBucketBytes || out.back().front().scalar_type() != t.scalar_type() ||
        out.back().front().device() != t.device()) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += b;
  }
  return out;
}

at::Tensor flatten(const std::vector<at::Tensor>& b) {
  std::vector<at::Tensor> flat;
  for (const auto& t : b) flat.push_back(t.reshape({-1}));
  return at::cat(flat).contiguous();
}

void unflatten_into(const at::Tensor& flat, const std::vector<at::Tensor>& b) {
  int64_t off = 0;
  for (const auto& t : b) {
    t.copy_(flat.narrow(0, off, t.numel()).view_as(t));
    off += t.numel();
  }
}

}  // namespace

std::optional<DistEnv> dist_env_from_environment() {
  bool has_world = false, has_rank = false;
  DistEnv e;
  e.world_size = env_int("WORLD_SIZE", 1, &has_world);
  e.rank = env_int("RANK", 0, &has_rank);
  if (!has_world && !has_rank) return std::nullopt;
  if (!has_world || !has_rank)
    throw UsageError("set both WORLD_SIZE and RANK (torchrun's variables) to join a distributed run, or neither");
  if (e.world_size < 1 || e.rank >= e.world_size)
    throw UsageError(fmt::format("RANK={} does not fit WORLD_SIZE={}", e.rank, e.world_size));
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  if (e.master_port < 1 || e.master_port > 65535)
    throw UsageError(fmt::format("MASTER_PORT={} is not a TCP port", e.master_port));
  return e;
}

std::vector<std::string> dist_backends_available() {
  std::vector<std::string> b;
#ifdef CLIP_HAVE_GLOO
  b.push_back("gloo");
#endif
#ifdef CLIP_HAVE_NCCL
  b.push_back("nccl");
#endif
  return b;
}

struct DistGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::DistBackend> pg;
};

DistGroup::DistGroup(DistEnv env, std::string backend)
    : env_(std::move(env)), backend_(std::move(backend)), impl_(std::make_unique<Impl>()) {}
DistGroup::~DistGroup() = default;

std::unique_ptr<DistGroup> DistGroup::join(const DistEnv& env, const std::string& backend, int timeout_s) {
  auto avail = dist_backends_available();
  if (std::find(avail.begin(), avail.end(), backend) == avail.end())
    throw UsageError(fmt::format("--dist-backend {}: this build has {}", backend,
                                 avail.empty() ? std::string("no distributed backend (rebuild with libgloo-dev)")
                                               : fmt::format("only {}", fmt::join(avail, ", "))));
  std::unique_ptr<DistGroup> g(new DistGroup(env, backend));
  const auto timeout = std::chrono::milliseconds(int64_t(timeout_s) * 1000);
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  // Rendezvous. Rank 0 serves the store; the others connect (retrying until the timeout).
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.waitWorkers = false;
    so.timeout = timeout;
    g->impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    throw TrainingError(fmt::format(
        "rank {}: {} the rendezvous at {} within {} s: {}. {}", env.rank,
        env.rank == 0 ? "could not serve" : "could not reach", where, timeout_s, e.what(),
        env.rank == 0 ? "Is the port in use? Choose another MASTER_PORT"
                      : "Check that rank 0 runs and that MASTER_ADDR/MASTER_PORT point at it"));
  }
  auto& store = g->impl_->store;
  // Every rank registers, then waits for all: the error names the ranks that never came.
  std::vector<std::string> keys;
  for (int r = 0; r < env.world_size; ++r) keys.push_back(fmt::format("clip/joined/{}", r));
  try {
    store->set(keys[env.rank], std::vector<uint8_t>{'1'});
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!store->check(keys)) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::vector<int> missing;
        for (int r = 0; r < env.world_size; ++r)
          if (!store->check({keys[r]})) missing.push_back(r);
        throw TrainingError(fmt::format("rank {}: rank{} {} did not join the run at {} within {} s (--dist-timeout); "
                                        "start every rank with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT",
                                        env.rank, missing.size() > 1 ? "s" : "", fmt::join(missing, ", "), where,
                                        timeout_s));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  } catch (const TrainingError&) {
    throw;
  } catch (const std::exception& e) {
    throw TrainingError(fmt::format("rank {}: rendezvous at {} failed: {} (did rank 0 stop?)", env.rank, where, e.what()));
  }
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("clip_pg", store);
  try {
    if (backend == "gloo") {
#ifdef CLIP_HAVE_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost")
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      g->impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, env.rank, env.world_size, opts);
#endif
    } else {
#ifdef CLIP_HAVE_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      g->impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, env.rank, env.world_size, opts);
#endif
    }
  } catch (const std::exception& e) {
    throw TrainingError(fmt::format("rank {}: could not set up the {} process group: {}", env.rank, backend, e.what()));
  }
  return g;
}

void DistGroup::run(const char* what, const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find("\nException raised from"); nl != std::string::npos) msg.resize(nl);
    throw TrainingError(fmt::format("rank {}: {} across the {} ranks failed: {} (another worker stopped or failed; "
                                    "its own error comes first)",
                                    env_.rank, what, env_.world_size, msg));
  }
}

at::Tensor DistGroup::all_gather_rows(const at::Tensor& local) {
  if (env_.world_size == 1) return local;
  at::Tensor src = local.detach().contiguous();
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < env_.world_size; ++r) out[0].push_back(at::empty_like(src));
  std::vector<at::Tensor> in{src};
  run("gathering features", [&] { impl_->pg->allgather(out, in)->wait(); });
  out[0][env_.rank] = local;
  return at::cat(out[0]);
}

void DistGroup::all_reduce_sum(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard ng;
  for (const auto& b : buckets_of(tensors)) {
    std::vector<at::Tensor> flat{flatten(b)};
    run("summing gradients", [&] { impl_->pg->allreduce(flat)->wait(); });
    unflatten_into(flat[0], b);
  }
}

void DistGroup::broadcast_from_rank0(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard ng;
  for (const auto& b : buckets_of(tensors)) {
    std::vector<at::Tensor> flat{flatten(b)};
    run("broadcasting rank 0's weights", [&] { impl_->pg->broadcast(flat)->wait(); });
    unflatten_into(flat[0], b);
  }
}

bool DistGroup::any(bool flag) {
  at::Device dev = backend_ == "nccl" ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env_.local_rank)) : at::Device(at::kCPU);
  std::vector<at::Tensor> t{at::full({1}, flag ? 1.0f : 0.0f, at::TensorOptions(at::kFloat).device(dev))};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  run("agreeing on stopping", [&] { impl_->pg->allreduce(t, o)->wait(); });
  return t[0].item<float>() > 0;
}

void DistGroup::barrier() {
  run("waiting for every rank", [&] { impl_->pg->barrier()->wait(); });
}

// ---------------------------------------------------------------------------------------------
// Local launcher.

namespace {

std::atomic<int> g_launch_signal{0};
extern "C" void on_launch_signal(int sig) { g_launch_signal = sig; }

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 29500;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = 29500;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    int s = WTERMSIG(status);
    return fmt::format("was killed by signal {} ({})", s, strsignal(s));
  }
  return fmt::format("exited with code {}", WEXITSTATUS(status));
}

}  // namespace

int launch_local_workers(int nproc, char** argv, int grace_s) {
  if (nproc < 1) throw UsageError("--nproc-per-node must be at least 1");
  std::string addr = "127.0.0.1";
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) addr = a;
  int port = env_int("MASTER_PORT", 0);
  if (port == 0) port = free_port();
  // The environment of each worker, built before fork (the child only calls execve).
  std::vector<std::vector<std::string>> envs(nproc);
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    std::string k = kv.substr(0, kv.find('='));
    if (k == "WORLD_SIZE" || k == "RANK" || k == "LOCAL_RANK" || k == "LOCAL_WORLD_SIZE" || k == "MASTER_ADDR" ||
        k == "MASTER_PORT")
      continue;
    for (auto& v : envs) v.push_back(kv);
  }
  for (int r = 0; r < nproc; ++r) {
    envs[r].push_back(fmt::format("WORLD_SIZE={}", nproc));
    envs[r].push_back(fmt::format("RANK={}", r));
    envs[r].push_back(fmt::format("LOCAL_RANK={}", r));
    envs[r].push_back(fmt::format("LOCAL_WORLD_SIZE={}", nproc));
    envs[r].push_back("MASTER_ADDR=" + addr);
    envs[r].push_back(fmt::format("MASTER_PORT={}", port));
  }
  std::vector<std::vector<char*>> envp(nproc);
  for (int r = 0; r < nproc; ++r) {
    for (auto& s : envs[r]) envp[r].push_back(s.data());
    envp[r].push_back(nullptr);
  }
  log_info("starting {} workers (ranks 0-{}, rendezvous {}:{})", nproc, nproc - 1, addr, port);

  // Signals: the workers get their own process group, so a terminal's Ctrl-C reaches this process
  // only; it is forwarded once to each worker (a second Ctrl-C forwards again, which kills them).
  g_launch_signal = 0;
  struct sigaction sa {}, old_int {}, old_term {};
  sa.sa_handler = on_launch_signal;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  const pid_t parent = getpid();
  std::vector<pid_t> pids(nproc, -1);
  std::vector<int> status(nproc, 0);
  std::vector<bool> done(nproc, false);
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    if (pid < 0) {
      for (int k = 0; k < r; ++k) kill(pids[k], SIGKILL);
      throw_io_error("fork a worker", "clip-finetune");
    }
    if (pid == 0) {
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the launcher
      if (getppid() != parent) _exit(127);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      execve("/proc/self/exe", argv, envp[r].data());
      _exit(127);
    }
    pids[r] = pid;
  }
  int failed = -1, alive = nproc, forwarded = 0;
  bool interrupted = false;
  std::chrono::steady_clock::time_point kill_at{};
  bool stopping = false;
  while (alive > 0) {
    if (int sig = g_launch_signal.exchange(0)) {
      interrupted = true;
      ++forwarded;
      for (int r = 0; r < nproc; ++r)
        if (!done[r]) kill(pids[r], sig);
      log_info("{}: forwarded to the {} workers{}", strsignal(sig), alive,
               forwarded == 1 ? " (they finish the step and save a resumable checkpoint; again to kill them)" : "");
    }
    // Reap every worker that has ended; a signal-killed worker is the likeliest cause of the others' errors.
    std::vector<int> ended;
    for (int r = 0; r < nproc; ++r) {
      if (done[r]) continue;
      int st = 0;
      pid_t p = waitpid(pids[r], &st, WNOHANG);
      if (p == pids[r]) {
        done[r] = true;
        status[r] = st;
        --alive;
        ended.push_back(r);
      }
    }
    auto bad = [&](int r) {
      int st = status[r];
      if (WIFEXITED(st)) return WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != kExitInterrupted;
      return !(interrupted && (WTERMSIG(st) == SIGINT || WTERMSIG(st) == SIGTERM));
    };
    if (failed < 0) {
      for (int r : ended)
        if (bad(r) && WIFSIGNALED(status[r])) { failed = r; break; }
      if (failed < 0)
        for (int r : ended)
          if (bad(r)) { failed = r; break; }
      if (failed >= 0 && alive > 0) {
        log_error("worker rank {} (pid {}) {}: stopping the other workers", failed, pids[failed], describe_status(status[failed]));
        for (int r = 0; r < nproc; ++r)
          if (!done[r]) kill(pids[r], SIGTERM);
        stopping = true;
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(grace_s);
      }
    }
    if (stopping && alive > 0 && std::chrono::steady_clock::now() > kill_at) {
      for (int r = 0; r < nproc; ++r)
        if (!done[r]) kill(pids[r], SIGKILL);
      stopping = false;
    }
    if (alive > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (failed >= 0 && WIFEXITED(status[failed])) {
    // The worker printed its own error (a usage, data or model error keeps its exit code).
    log_error("worker rank {} (pid {}) {}; the run was stopped on all {} ranks", failed, pids[failed],
              describe_status(status[failed]), nproc);
    return WEXITSTATUS(status[failed]);
  }
  if (failed >= 0)
    throw TrainingError(fmt::format("worker rank {} (pid {}) {}; the run was stopped on all {} ranks{}", failed,
                                    pids[failed], describe_status(status[failed]), nproc,
                                    " (continue from the last checkpoint with --resume)"));
  bool any_interrupted = interrupted;
  for (int r = 0; r < nproc; ++r)
    if (WIFEXITED(status[r]) && WEXITSTATUS(status[r]) == kExitInterrupted) any_interrupted = true;
  return any_interrupted ? kExitInterrupted : kExitOk;
}

}  // namespace clip
