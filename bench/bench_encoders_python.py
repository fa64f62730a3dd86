#!/usr/bin/python3
"""Encoder throughput of ViT-B-16 + RoBERTa-wwm-ext-base-chinese in plain PyTorch.

The same architecture and the same operations as the C++ model (lib/clip/model*.cpp), written
directly against torch so that bench_encoders (C++) and this script measure identical work:
pre-LN ViT with QuickGELU and float32 LayerNorms, post-LN BERT with erf GELU and an additive
padding mask, [CLS] pooling. Random weights. Needs Debian's python3-torch (/usr/bin/python3).

Prints lines in bench_encoders' format:
  bench impl=python tower=image dtype=fp32 batch=8 iters=3 median_ms=.. min_ms=.. items_per_s=..
"""
import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    def __init__(self, n, eps, fp32_math):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.n, self.eps, self.fp32_math = n, eps, fp32_math

    def forward(self, x):
        if self.fp32_math or x.dtype != self.weight.dtype:
            y = F.layer_norm(x.float(), (self.n,), self.weight.float(), self.bias.float(), self.eps)
            return y.to(x.dtype)
        return F.layer_norm(x, (self.n,), self.weight, self.bias, self.eps)


def attention(q, k, v, mask):
    # The 1.13 path of clip::compat::attention.
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    return torch.matmul(torch.softmax(scores, -1), v)


class Block(nn.Module):
    def __init__(self, w, heads):
        super().__init__()
        self.w, self.heads = w, heads
        self.in_proj_weight = nn.Parameter(torch.randn(3 * w, w) * w ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * w))
        self.out_proj = nn.Linear(w, w)
        self.ln_1 = LayerNorm(w, 1e-5, True)
        self.c_fc = nn.Linear(w, 4 * w)
        self.c_proj = nn.Linear(4 * w, w)
        self.ln_2 = LayerNorm(w, 1e-5, True)

    def forward(self, x):
        b, l, _ = x.shape
        d = self.w // self.heads
        qkv = F.linear(self.ln_1(x), self.in_proj_weight, self.in_proj_bias).view(b, l, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        ctx = attention(qkv[0], qkv[1], qkv[2], None)
        x = x + self.out_proj(ctx.transpose(1, 2).reshape(b, l, self.w))
        h = self.c_fc(self.ln_2(x))
        return x + self.c_proj(h * torch.sigmoid(h * 1.702))


class VisualTransformer(nn.Module):
    def __init__(self, res=224, patch=16, width=768, layers=12, heads=12, embed=512):
        super().__init__()
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((res // patch) ** 2 + 1, width))
        self.proj = nn.Parameter(scale * torch.randn(width, embed))
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.ln_pre = LayerNorm(width, 1e-5, True)
        self.resblocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
        self.ln_post = LayerNorm(width, 1e-5, True)

    def forward(self, pixels):
        x = self.conv1(pixels.to(self.conv1.weight.dtype))
        b, w = x.shape[0], x.shape[1]
        x = x.reshape(b, w, -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype).view(1, 1, w).expand(b, 1, w)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for blk in self.resblocks:
            x = blk(x)
        x = self.ln_post(x[:, 0])
        return x @ self.proj.to(x.dtype)


class BertLayer(nn.Module):
    def __init__(self, h, heads, inter):
        super().__init__()
        self.h, self.heads = h, heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_dense = nn.Linear(h, h)
        self.attn_ln = LayerNorm(h, 1e-12, False)
        self.inter = nn.Linear(h, inter)
        self.out_dense = nn.Linear(inter, h)
        self.out_ln = LayerNorm(h, 1e-12, False)

    def forward(self, x, mask):
        b, l, h = x.shape
        d = h // self.heads

        def split(y):
            return y.view(b, l, self.heads, d).transpose(1, 2)

        ctx = attention(split(self.query(x)), split(self.key(x)), split(self.value(x)), mask)
        a = self.attn_ln(self.attn_dense(ctx.transpose(1, 2).reshape(b, l, h)) + x)
        i = F.gelu(self.inter(a))
        return self.out_ln(self.out_dense(i) + a)


class Bert(nn.Module):
    def __init__(self, vocab=21128, h=768, layers=12, heads=12, inter=3072, max_pos=512, types=2):
        super().__init__()
        self.word = nn.Embedding(vocab, h, padding_idx=0)
        self.pos = nn.Embedding(max_pos, h)
        self.token_type = nn.Embedding(types, h)
        self.ln = LayerNorm(h, 1e-12, False)
        self.layers = nn.ModuleList([BertLayer(h, heads, inter) for _ in range(layers)])

    def forward(self, ids):
        dtype = self.word.weight.dtype
        m = ids.ne(0).to(dtype).view(ids.size(0), 1, 1, ids.size(1))
        mask = (1.0 - m) * -10000.0
        pos = torch.arange(ids.size(1), dtype=torch.long)
        x = self.word(ids) + self.pos(pos).unsqueeze(0) + self.token_type(torch.zeros(1, 1, dtype=torch.long))
        x = self.ln(x)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.text_projection = nn.Parameter(torch.randn(768, 512) * 768 ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.visual = VisualTransformer()
        self.bert = Bert()

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, ids):
        cls = self.bert(ids)[:, 0]
        return cls @ self.text_projection.to(cls.dtype)

    def to_half(self, dtype):
        # Same float32 islands as ClipModelImpl::to (cn_clip's convert_weights).
        keep = ("logit_scale", "visual.class_embedding", "visual.positional_embedding")
        for name, p in self.named_parameters():
            vision_ln = name.startswith("visual.") and (".ln_" in name or name.startswith("visual.ln_"))
            p.data = p.data.float() if (name in keep or vision_ln) else p.data.to(dtype)
        return self


def bench_ids(n, ctx):
    ids = torch.zeros(n, ctx, dtype=torch.long)
    for i in range(n):
        length = 12 + (7 * i) % 30
        ids[i, 0] = 101
        for j in range(1, length + 1):
            ids[i, j] = 672 + (i * 131 + j * 17) % 20000
        ids[i, length + 1] = 102
    return ids


def time_it(warmup, iters, fn):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000.0)
    ms.sort()
    return ms[len(ms) // 2], ms[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-batch", type=int, default=8)
    ap.add_argument("--text-batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--towers", default="image,text")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"bench_encoders_python: torch {torch.__version__} threads={torch.get_num_threads()}", file=sys.stderr)
    model = Clip().eval()
    pixels = torch.randn(a.image_batch, 3, 224, 224)
    ids = bench_ids(a.text_batch, 52)
    towers = a.towers.split(",")
    for dt in a.dtypes.split(","):
        if dt == "bf16":
            model.to_half(torch.bfloat16)
        elif dt == "fp32":
            model.float()
        else:
            sys.exit(f"unknown dtype {dt} (fp32, bf16)")
        with torch.inference_mode():
            for tower, batch, fn in (("image", a.image_batch, lambda: model.encode_image(pixels)),
                                     ("text", a.text_batch, lambda: model.encode_text(ids))):
                if tower not in towers:
                    continue
                med, best = time_it(a.warmup, a.iters, fn)
                print(f"bench impl=python tower={tower} dtype={dt} batch={batch} iters={a.iters} threads={a.threads} "
                      f"median_ms={med:.1f} min_ms={best:.1f} items_per_s={batch * 1000.0 / med:.2f}", flush=True)


if __name__ == "__main__":
    main()
