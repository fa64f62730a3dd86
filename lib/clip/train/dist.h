// Data-parallel training on LibTorch's own distributed engine (c10d): a TCPStore rendezvous with
// torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), ProcessGroupGloo
// on the CPU and ProcessGroupNCCL on GPUs. This header keeps c10d out of its includers; the
// 1.13/2.x differences are in dist_compat.h, included by dist.cpp only.
//
// What the trainer needs from the group: the features of every rank with the local slice keeping
// its autograd path (cn_clip's gather_features), a gradient sum, a broadcast of the starting weights
// and a vote ("does any rank want to stop?"). A failed collective or rendezvous throws TrainingError
// naming this rank; launch_local_workers() names the worker that died.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace clip {

// torchrun's variables. LOCAL_RANK defaults to RANK, LOCAL_WORLD_SIZE to WORLD_SIZE.
struct DistEnv {
  int world_size = 1, rank = 0, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};
// The environment's group, or nullopt when WORLD_SIZE and RANK are not both set. Throws UsageError
// for a malformed or inconsistent value (the variable is named).
std::optional<DistEnv> dist_env_from_environment();

// Backends this build can use ("gloo", "nccl").
std::vector<std::string> dist_backends_available();

class DistGroup {
 public:
  // Joins the group: rank 0 serves the TCPStore at MASTER_ADDR:MASTER_PORT, every rank registers,
  // and all wait until every rank has (ranks missing after `timeout_s` are named in the error).
  // backend "gloo" | "nccl"; `timeout_s` also bounds every collective.
  static std::unique_ptr<DistGroup> join(const DistEnv& env, const std::string& backend, int timeout_s);
  ~DistGroup();

  int rank() const { return env_.rank; }
  int size() const { return env_.world_size; }
  const DistEnv& env() const { return env_; }
  const std::string& backend() const { return backend_; }

  // [B, ...] on every rank (same B) -> [world*B, ...] in rank order; rows of this rank are `local`
  // itself (gradients flow back into it), the others are detached copies.
  at::Tensor all_gather_rows(const at::Tensor& local);
  // In-place sum over ranks of each tensor (flattened into buckets of ~25 MB, one all-reduce each).
  void all_reduce_sum(const std::vector<at::Tensor>& tensors);
  // In place: every rank gets rank 0's values (same bucketing).
  void broadcast_from_rank0(const std::vector<at::Tensor>& tensors);
  // True when `flag` is true on any rank.
  bool any(bool flag);
  void barrier();

 private:
  struct Impl;
  DistGroup(DistEnv env, std::string backend);
  void run(const char* what, const std::function<void()>& f);
  DistEnv env_;
  std::string backend_;
  std::unique_ptr<Impl> impl_;
};

// clip-finetune --nproc-per-node N: starts N copies of this program (/proc/self/exe with `argv`) with
// torchrun's variables (ranks 0..N-1 on 127.0.0.1, MASTER_PORT from the environment or a free
// port), forwards SIGINT/SIGTERM to them, and waits. When one exits with an error or is killed,
// the others get SIGTERM, then SIGKILL after `grace_s`. Returns 0 when all succeeded, 130 when the
// run was interrupted, the exit code of the first worker that failed (after an error line naming
// its rank); throws TrainingError naming the first worker killed by a signal.
int launch_local_workers(int nproc, char** argv, int grace_s = 10);

}  // namespace clip
