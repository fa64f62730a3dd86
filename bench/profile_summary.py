#!/usr/bin/env python3
"""Sums the GPU time of a Chrome trace written by LibTorch's profiler (bench_train --profile, or
torch.profiler's export_chrome_trace) by kind of kernel.

    bench/profile_summary.py TRACE.json [--steps N] [--top 15]

Prints the span of the recorded kernels, the time the GPU was busy (union of kernel intervals), the
share of that time per kind (matrix products, attention, element-wise, normalisation, softmax/loss,
optimizer, copies), the kernels per step, the longest kernels, and one machine-readable line:
    profile span_ms=.. busy_ms=.. busy_share=.. matmul_share=.. attention_share=.. kernels_per_step=..
Kinds are told by kernel names (cuBLAS/cuBLASLt/CUTLASS GEMMs, flash/cuDNN attention, ...).
"""
import argparse
import json
import re
from collections import defaultdict

KINDS = [
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|xmma|nvjet|sm\d+_.*(?:h|s|bf16)\d*gemm|cublas|splitKreduce|Kernel2", re.I)),
    ("optimizer", re.compile(r"multi_tensor_apply|fused_adam|FusedAdam|adamw", re.I)),
    ("normalisation", re.compile(r"layer_norm|LayerNorm|norm_kernel|RowwiseMoments|GammaBeta", re.I)),
    ("softmax/loss", re.compile(r"softmax|nll_loss|cross_entropy", re.I)),
    ("reduction", re.compile(r"reduce_kernel|Reduce", re.I)),
    ("dropout/random", re.compile(r"fused_dropout|philox|bernoulli|dropout", re.I)),
    ("element-wise", re.compile(r"elementwise|vectorized|unrolled|CatArrayBatched|index|copy|fill", re.I)),
]


def kind_of(name):
    for k, rx in KINDS:
        if rx.search(name):
            return k
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=0, help="steps recorded (for kernels per step)")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not gpu:
        raise SystemExit(f"{a.trace}: no GPU kernels in the trace (was it recorded with CUDA activities?)")
    by_kind = defaultdict(float)
    by_name = defaultdict(lambda: [0.0, 0])
    spans = []
    for e in gpu:
        d = float(e.get("dur", 0))
        k = "copies" if e["cat"] != "kernel" else kind_of(e["name"])
        by_kind[k] += d
        by_name[e["name"]][0] += d
        by_name[e["name"]][1] += 1
        spans.append((float(e["ts"]), float(e["ts"]) + d))
    spans.sort()
    busy, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = spans[-1][1] - spans[0][0]
    total = sum(by_kind.values())
    kernels = sum(1 for e in gpu if e["cat"] == "kernel")
    print(f"GPU span {span / 1e3:.1f} ms, busy {busy / 1e3:.1f} ms ({100 * busy / span:.1f} %), "
          f"{kernels} kernels" + (f", {kernels / a.steps:.0f} per step" if a.steps else ""))
    print("\n| kind | ms | share of kernel time |\n|---|---:|---:|")
    for k, d in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {d / 1e3:.1f} | {100 * d / total:.1f} % |")
    print(f"\nlongest kernels (total over the trace):\n| ms | calls | kernel |\n|---:|---:|---|")
    for name, (d, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        short = name if len(name) <= 110 else name[:107] + "..."
        print(f"| {d / 1e3:.2f} | {n} | `{short}` |")
    print(f"\nprofile span_ms={span / 1e3:.2f} busy_ms={busy / 1e3:.2f} busy_share={busy / span:.3f} "
          f"matmul_share={by_kind['matmul'] / total:.3f} attention_share={by_kind['attention'] / total:.3f} "
          f"kernels_per_step={kernels / a.steps if a.steps else kernels:.0f}")


if __name__ == "__main__":
    main()
