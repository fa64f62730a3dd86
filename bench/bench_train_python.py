#!/usr/bin/env python3
"""Training throughput of Python cn_clip's optimizer step, the baseline of bench_train (C++).

Builds cn_clip's own CLIP module (cn_clip/clip/model.py) from its model_configs JSON, and runs the
step of cn_clip/training/train.py on random data already on the GPU: forward of both towers,
symmetric InfoNCE (logit_scale * image @ text^T, cross-entropy both ways, averaged), backward,
torch.optim.AdamW with main.py's two groups, logit_scale clamped to [0, ln 100].

cn_clip is imported from a checkout given by --cnclip (never installed, never committed). Its
package __init__ pulls torchvision for image transforms; when that import fails, only model.py and
the BERT modules it needs are loaded.

Precisions: fp32; amp-bf16 (torch.autocast bfloat16, what clip-finetune's --precision amp does);
amp-fp16 (cn_clip's own --precision amp: float16 autocast with a GradScaler).

Prints one line in bench_train's format:
  bench impl=python device=cuda precision=amp-bf16 batch=128 steps=20 samples_per_s=.. step_ms=.. peak_alloc_mib=..
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import types

import torch
import torch.nn.functional as F


def import_cnclip_model(root):
    sys.path.insert(0, root)
    try:
        import cn_clip.clip.model as m  # noqa: F401
        return m
    except ImportError:
        pass
    # Load cn_clip.clip.{bert_tokenizer,configuration_bert,modeling_bert,model} without the package __init__s.
    for name in ["cn_clip", "cn_clip.clip"]:
        sys.modules.pop(name, None)
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = pkg

    def load(mod):
        spec = importlib.util.spec_from_file_location(
            "cn_clip.clip." + mod, os.path.join(root, "cn_clip", "clip", mod + ".py"))
        m = importlib.util.module_from_spec(spec)
        sys.modules["cn_clip.clip." + mod] = m
        spec.loader.exec_module(m)
        return m

    # CLIP() only reads its tokenizer's vocab (the [PAD] id); bert_tokenizer.py would also need `six`.
    with open(os.path.join(root, "cn_clip", "clip", "vocab.txt"), encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    sys.modules["cn_clip.clip"]._tokenizer = types.SimpleNamespace(vocab=vocab)
    load("configuration_bert")
    load("modeling_bert")
    return load("model")


def bench_ids(n, ctx, vocab):
    ids = torch.zeros(n, ctx, dtype=torch.long)
    lo = 672 if vocab > 1000 else 103
    for i in range(n):
        length = min(12 + (7 * i) % 30, ctx - 2)
        ids[i, 0] = 101
        for j in range(1, length + 1):
            ids[i, j] = lo + (i * 131 + j * 17) % (vocab - lo)
        ids[i, length + 1] = 102
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cnclip", required=True, help="root of an OFA-Sys/Chinese-CLIP checkout")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "amp-bf16", "amp-fp16"])
    ap.add_argument("--vision-model", default="ViT-B-16")
    ap.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    ap.add_argument("--context-length", type=int, default=52)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--fused-adamw", action="store_true",
                    help="torch.optim.AdamW(fused=True): one multi-tensor kernel per step (what a user adds first)")
    a = ap.parse_args()

    model_mod = import_cnclip_model(os.path.abspath(a.cnclip))
    cfg_dir = os.path.join(a.cnclip, "cn_clip", "clip", "model_configs")
    with open(os.path.join(cfg_dir, a.vision_model + ".json")) as f:
        info = json.load(f)
    if isinstance(info["vision_layers"], str):
        info["vision_layers"] = eval(info["vision_layers"])
    with open(os.path.join(cfg_dir, a.text_model + ".json")) as f:
        info.update(json.load(f))
    info["use_flash_attention"] = False
    torch.manual_seed(0)
    model = model_mod.CLIP(**info).float().to(a.device)
    model.train()
    if a.grad_checkpointing:
        model.set_grad_checkpointing()

    # main.py's parameter groups and the ViT defaults of params.py.
    exclude = lambda n: "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n) and p.requires_grad], "weight_decay": 0.001}],
        lr=5e-5, betas=(0.9, 0.98), eps=1e-6, **({"fused": True} if a.fused_adamw else {}))
    scaler = torch.cuda.amp.GradScaler() if a.precision == "amp-fp16" else None
    R = info["image_resolution"]
    images = torch.randn(a.batch, 3, R, R).to(a.device)
    texts = bench_ids(a.batch, a.context_length, info["vocab_size"]).to(a.device)
    labels = torch.arange(a.batch, device=a.device)

    def step():
        optimizer.zero_grad()
        if a.precision == "fp32":
            ctx = torch.autocast(device_type="cuda", enabled=False)
        else:
            ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16 if a.precision == "amp-bf16" else torch.float16)
        with ctx:
            img, txt, scale = model(images, texts)
            logits_per_image = scale.mean() * img @ txt.t()
            logits_per_text = logits_per_image.t()
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        model.logit_scale.data = torch.clamp(model.logit_scale.data, 0, 4.6052)
        return loss.item()  # cn_clip logs the loss each step: a device sync there as well

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = 0.0
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    s = time.perf_counter() - t0
    print(f"bench impl=python{'-fused-adamw' if a.fused_adamw else ''} device={a.device} precision={a.precision} "
          f"batch={a.batch} steps={a.steps} "
          f"grad_ckpt={int(a.grad_checkpointing)} samples_per_s={a.batch * a.steps / s:.1f} step_ms={1000 * s / a.steps:.1f} "
          f"last_loss={loss:.4f} peak_alloc_mib={torch.cuda.max_memory_allocated() >> 20} "
          f"peak_reserved_mib={torch.cuda.max_memory_reserved() >> 20}", flush=True)


if __name__ == "__main__":
    main()
