// clip-finetune: cn_clip's fine-tuning recipe (symmetric InfoNCE, AdamW with cn_clip's weight-decay
// groups, warmup + cosine schedule, logit_scale clamp) from a checkpoint or from scratch, on data in
// the Flickr30k-CN layout. Writes a run folder: params.json, metrics.jsonl, curves.svg, checkpoints/.
#include <unistd.h>

#include <cstdlib>

#include "clip/base/log.h"
#include "clip/cli/cli.h"
#include "clip/train/dist.h"
#include "clip/train/train.h"

namespace {

int body(int argc, char** argv) {
  clip::TrainOptions opts;
  CLI::App app{"Fine-tune Chinese-CLIP (cn_clip's recipe) on image-text pairs.\n\n"
               "  clip-finetune --data data/shapes-zh --vision-model data/shapes-zh/ViT-Demo.json \\\n"
               "      --text-model data/shapes-zh/RBT-Demo.json --lr 1e-3 --max-epochs 8 -o runs/demo\n"
               "  clip-finetune --checkpoint clip_cn_vit-b-16.pt --data Flickr30k-CN --lr 5e-5 --wd 1e-3 --warmup 100 \\\n"
               "      --max-epochs 3 --use-augment --precision amp --device cuda\n"
               "  clip-finetune --resume runs/demo            # continue an interrupted run exactly\n"
               "  clip-finetune --nproc-per-node 8 --device cuda -b 128 ...   # data-parallel, global batch 1024",
               "clip-finetune"};
  clip::add_version_flag(app);
  clip::add_train_options(app, opts);
  CLIP_PARSE(app, argc, argv);
  if (!opts.resume.empty()) {
    // Resuming: the run's own settings, overridden by any flag given now.
    clip::TrainOptions stored = clip::TrainOptions::stored_for_resume(opts.resume);
    CLI::App again{"", "clip-finetune"};
    clip::add_train_options(again, stored);
    CLIP_PARSE(again, argc, argv);
    opts = stored;
  }
  // --nproc-per-node N: this process only starts and watches the workers (which re-read argv and
  // join through torchrun's variables); a process that has those variables is a worker.
  if (opts.nproc_per_node > 0 && !clip::dist_env_from_environment()) {
    if (opts.runtime.quiet) clip::set_log_level(clip::LogLevel::error);
    return clip::launch_local_workers(opts.nproc_per_node, argv);
  }
  clip::TrainSummary s = clip::run_finetune(opts);
  if (s.interrupted) return clip::kExitInterrupted;
  return clip::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  // libgomp's threads spin between parallel regions by default; next to the decoding threads (and on a
  // busy machine) that spinning took 3x the wall time of a training step. The policy is read only when
  // libgomp loads, hence the one re-exec; a value already set is kept.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // on failure simply continue
  }
  return clip::run_main("clip-finetune", argc, argv, body);
}
