// Data-parallel fine-tuning (train/dist.h) on the CPU with Gloo: two ranks with batch 8 train like
// one process with batch 16 (loss at every step, final weights), with --nproc-per-node and with two
// processes started by hand with torchrun's variables; --accum-freq; a rank that never joins.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "clip/base/fileio.h"
#include "clip/io/checkpoint.h"
#include "clip/model/tensor_torch.h"
#include "clip/train/dist.h"
#include "util.h"

using testutil::TempDir;

namespace {

const std::string kBin = std::string(CLIP_BIN_DIR) + "/clip-finetune";
const std::string kDemo = std::string(CLIP_SOURCE_DIR) + "/data/shapes-zh";

// 12 training images of data/shapes-zh (60 captions) and the demo towers, the text tower without
// dropout (dropout masks are drawn per rank, so only a dropout-free model can match exactly).
struct DistData {
  TempDir dir{"dist"};
  std::string data, common;
  DistData() {
    data = dir / "data";
    std::string cmd = "set -e; mkdir -p '" + data + "'; head -n 12 '" + kDemo + "/train_imgs.tsv' > '" + data +
                      "/train_imgs.tsv'; ids=$(cut -f1 '" + data + "/train_imgs.tsv' | paste -sd'|'); grep -E " +
                      "\"\\\"image_ids\\\": \\[($ids)\\]\" '" + kDemo + "/train_texts.jsonl' > '" + data +
                      "/train_texts.jsonl'; cp '" + kDemo + "/vocab.txt' '" + data + "/'";
    REQUIRE(std::system(cmd.c_str()) == 0);
    nlohmann::json text = nlohmann::json::parse(clip::read_file(kDemo + "/RBT-Demo.json"));
    text["text_attention_probs_dropout_prob"] = 0.0;
    text["text_hidden_dropout_prob"] = 0.0;
    std::string text_cfg = dir.write("RBT-Demo.json", text.dump(2));
    common = "'" + kBin + "' --data '" + data + "' --vision-model '" + kDemo + "/ViT-Demo.json' --text-model '" +
             text_cfg + "' --log-interval 1 --lr 1e-3 --warmup 2 --max-epochs 2 --no-validation --threads 1";
  }
};

int run(const std::string& cmd) {
  int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::vector<double> losses(const std::string& run_dir) {
  std::vector<double> out;
  std::ifstream f(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("type", "") == "train") out.push_back(j["loss"].get<double>());
  }
  return out;
}

void expect_same_training(const std::string& one, const std::string& two) {
  std::vector<double> a = losses(one), b = losses(two);
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("step " << i + 1 << ": " << a[i] << " vs " << b[i]);
    CHECK(std::abs(a[i] - b[i]) <= 1e-5 * std::abs(a[i]));
  }
  clip::Checkpoint ca = clip::load_checkpoint(one + "/checkpoints/epoch_latest.pt");
  clip::Checkpoint cb = clip::load_checkpoint(two + "/checkpoints/epoch_latest.pt");
  REQUIRE(ca.state_dict.keys == cb.state_dict.keys);
  double worst = 0;
  std::string worst_key;
  for (const auto& k : ca.state_dict.keys) {
    at::Tensor x = clip::to_tensor(ca.state_dict.at(k), at::kDouble), y = clip::to_tensor(cb.state_dict.at(k), at::kDouble);
    double d = (x - y).abs().max().item<double>();
    if (d > worst) worst = d, worst_key = k;
  }
  INFO("largest difference " << worst << " in " << worst_key);
  CHECK(worst <= 1e-4);
  // The runs did change the weights (a comparison of two untouched models would prove nothing).
  CHECK(std::abs(a.front() - a.back()) > 1e-3);
}

}  // namespace

TEST_CASE("the environment's group: torchrun's variables", "[dist]") {
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
  CHECK_FALSE(clip::dist_env_from_environment().has_value());
  setenv("WORLD_SIZE", "2", 1);
  CHECK_THROWS(clip::dist_env_from_environment());  // RANK missing
  setenv("RANK", "2", 1);
  CHECK_THROWS(clip::dist_env_from_environment());  // RANK outside the world
  setenv("RANK", "1", 1);
  setenv("MASTER_PORT", "4242", 1);
  auto e = clip::dist_env_from_environment();
  REQUIRE(e.has_value());
  CHECK(e->world_size == 2);
  CHECK(e->rank == 1);
  CHECK(e->local_rank == 1);
  CHECK(e->master_port == 4242);
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
  unsetenv("MASTER_PORT");
}

TEST_CASE("2 ranks x batch 8 train like 1 process x batch 16", "[dist]") {
  DistData d;
  REQUIRE(run(d.common + " -b 16 -q -o '" + (d.dir / "one") + "'") == 0);
  SECTION("--nproc-per-node 2") {
    REQUIRE(run(d.common + " -b 8 -q --nproc-per-node 2 -o '" + (d.dir / "two") + "'") == 0);
    std::string params = clip::read_file(d.dir / "two/params.json");
    CHECK(params.find("\"world_size\": 2") != std::string::npos);
    CHECK(params.find("\"global_batch\": 16") != std::string::npos);
    expect_same_training(d.dir / "one", d.dir / "two");
  }
  SECTION("two processes started with torchrun's variables") {
    int port = 20000 + static_cast<int>(getpid() % 20000);
    std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
    std::string cmd = "cd '" + d.dir.path + "' && (" + env + " RANK=0 LOCAL_RANK=0 " + d.common + " -b 8 -q -o two & " +
                      env + " RANK=1 LOCAL_RANK=1 " + d.common + " -b 8 -q -o two & " +
                      "wait %1; a=$?; wait %2; b=$?; test $a -eq 0 && test $b -eq 0)";
    REQUIRE(run(cmd) == 0);
    expect_same_training(d.dir / "one", d.dir / "two");
  }
}

TEST_CASE("2 ranks with --accum-freq 2 train like 1 process", "[dist]") {
  DistData d;
  REQUIRE(run(d.common + " -b 8 --accum-freq 2 -q -o '" + (d.dir / "one") + "'") == 0);
  REQUIRE(run(d.common + " -b 4 --accum-freq 2 -q --nproc-per-node 2 -o '" + (d.dir / "two") + "'") == 0);
  expect_same_training(d.dir / "one", d.dir / "two");
}

TEST_CASE("a rank that never joins ends the run with an error naming it", "[dist]") {
  DistData d;
  int port = 20000 + static_cast<int>((getpid() + 7) % 20000);
  auto t0 = std::chrono::steady_clock::now();
  std::string err = d.dir / "err.txt";
  int rc = run("WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + d.common +
               " -b 8 --dist-timeout 3 -o '" + (d.dir / "lonely") + "' 2>'" + err + "'");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string text = clip::read_file(err);
  INFO(text);
  CHECK(rc == 6);
  CHECK(text.find("rank 1 did not join") != std::string::npos);
  CHECK(secs < 30);
}
