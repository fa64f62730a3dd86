#!/usr/bin/python3
"""Start of a one-text query: clip-index against cn_clip in Python, wall time and peak memory.

  /usr/bin/python3 bench/bench_start.py --cnclip DIR [--build build] [--work DIR] [--runs 3]

DIR holds cn_clip's sources (the `cn_clip` package folder of OFA-Sys/Chinese-CLIP, e.g. unpacked
into the git-ignored .device/cnclip); they are imported read-only, never copied into this repository.
cn_clip's `cn_clip.clip` package imports torchvision (not in Debian) for its image transform, so
the script imports `cn_clip.clip.model` and the tokenizer under a stand-in package object: the
model and tokenizer code that runs is cn_clip's own.

1. Builds (once, cached in --work) a full-size ViT-B-16 + RoBERTa-wwm-ext-base-chinese checkpoint
   with cn_clip's own random initialisation, saved as cn_clip's training saves it:
   torch.save({"epoch", "step", "name", "state_dict" with "module." keys}) in float32 (753 MB),
   with cn_clip's vocab.txt beside it.
2. Runs, alternately and --runs times each after one untimed warm-up of each (so that both read
   the checkpoint from the page cache):
     C++:    clip-index -c vitb16.pt --texts one.jsonl --text-out t.jsonl
     Python: import cn_clip's model, torch.load, build CLIP, load_state_dict, encode the text
     (with --before B: also B/bin/clip-index, e.g. a build of the previous version)
   With --store, also the same one-text job writing a binary store, which records the checkpoint's
   weights hash (reading all 753 MB): once with the digest cache off (CLIP_NO_CACHE=1) and once with
   it on in a folder of its own (filled by the warm-up run; docs/store-format.md).
   and prints each run's wall time, CPU time (user + system) and peak RSS (GNU time), the
   medians, the
   ratio, and the text tower's size (text_projection + bert.*, float32) for the memory goal.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TEXT = "一只金毛犬在草地上奔跑"


def python_child(cnclip, ckpt):
    """The Python side, run in a fresh interpreter: everything a user's script does, timed from
    the interpreter's start by the parent."""
    import types
    sys.path.insert(0, cnclip)
    import torch  # noqa: F401  (part of the cost of the Python path)
    pkg = types.ModuleType("cn_clip.clip")
    pkg.__path__ = [os.path.join(cnclip, "cn_clip", "clip")]
    sys.modules["cn_clip.clip"] = pkg
    import cn_clip  # noqa: F401
    from cn_clip.clip.bert_tokenizer import FullTokenizer
    pkg._tokenizer = FullTokenizer()
    from cn_clip.clip import model as cm
    ck = torch.load(ckpt, map_location="cpu")
    info = {}
    for f in ("ViT-B-16.json", "RoBERTa-wwm-ext-base-chinese.json"):
        with open(os.path.join(cnclip, "cn_clip", "clip", "model_configs", f)) as fh:
            info.update(json.load(fh))
    model = cm.CLIP(**info)
    sd = {k[len("module."):]: v for k, v in ck["state_dict"].items() if "bert.pooler" not in k}
    model.load_state_dict(sd)
    model.eval()
    tok = pkg._tokenizer
    ids = [tok.vocab["[CLS]"]] + tok.convert_tokens_to_ids(tok.tokenize(TEXT))[:50] + [tok.vocab["[SEP]"]]
    x = torch.zeros(1, 52, dtype=torch.long)
    x[0, :len(ids)] = torch.tensor(ids)
    with torch.no_grad():
        f = model.encode_text(x)
        f = f / f.norm(dim=-1, keepdim=True)
    print(json.dumps({"feature_head": f[0, :4].tolist()}))


def build_checkpoint(cnclip, work):
    import types
    import torch
    ckpt = os.path.join(work, "vitb16.pt")
    vocab = os.path.join(work, "vocab.txt")
    if not os.path.exists(vocab):
        with open(os.path.join(cnclip, "cn_clip", "clip", "vocab.txt"), "rb") as a, open(vocab, "wb") as b:
            b.write(a.read())
    if os.path.exists(ckpt):
        return ckpt
    sys.path.insert(0, cnclip)
    pkg = types.ModuleType("cn_clip.clip")
    pkg.__path__ = [os.path.join(cnclip, "cn_clip", "clip")]
    sys.modules["cn_clip.clip"] = pkg
    from cn_clip.clip.bert_tokenizer import FullTokenizer
    pkg._tokenizer = FullTokenizer()
    from cn_clip.clip import model as cm
    info = {}
    for f in ("ViT-B-16.json", "RoBERTa-wwm-ext-base-chinese.json"):
        with open(os.path.join(cnclip, "cn_clip", "clip", "model_configs", f)) as fh:
            info.update(json.load(fh))
    torch.manual_seed(0)
    model = cm.CLIP(**info)  # cn_clip's initialize_parameters + BERT init
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    tmp = ckpt + ".tmp"
    torch.save({"epoch": 1, "step": 1, "name": "bench-random", "state_dict": sd}, tmp)
    os.replace(tmp, ckpt)
    return ckpt


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def run(cmd, env=None):
    """Runs cmd under GNU time (a small parent: the child's peak RSS is its own, not this
    interpreter's memory inherited through fork) and returns wall s, peak RSS MiB, stdout, CPU s."""
    import tempfile
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e, tempfile.NamedTemporaryFile("r") as t:
        p = subprocess.run(["/usr/bin/time", "-o", t.name, "-f", "%e %U %S %M"] + cmd, stdout=o, stderr=e,
                           env=dict(os.environ, **(env or {})))
        o.seek(0)
        e.seek(0)
        out, err = o.read().decode(), e.read().decode()
        wall, user, sys_s, rss_kb = t.read().split()[-4:]
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    return float(wall), int(rss_kb) / 1024.0, out, float(user) + float(sys_s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cnclip", default=".device/cnclip")
    ap.add_argument("--build", default="build")
    ap.add_argument("--work", default="/tmp/clip-bench-start")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", help="another build folder whose clip-index is timed alongside (e.g. main's)")
    ap.add_argument("--store", action="store_true", help="also time the job writing a store, weights hash cache off/on")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cnclip = os.path.abspath(a.cnclip)
    if a.child:
        python_child(cnclip, a.child)
        return
    if not os.path.isdir(os.path.join(cnclip, "cn_clip", "clip")):
        sys.exit(f"{cnclip}/cn_clip/clip not found: unpack OFA-Sys/Chinese-CLIP's cn_clip folder there")
    os.makedirs(a.work, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = build_checkpoint(cnclip, a.work)
    print(f"checkpoint {ckpt}: {os.path.getsize(ckpt) / 1e6:.0f} MB (made or reused in {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    import torch
    sd = torch.load(ckpt, map_location="cpu")["state_dict"]
    text_bytes = sum(v.numel() * v.element_size() for k, v in sd.items()
                     if (k.startswith("module.bert.") and ".pooler." not in k) or k == "module.text_projection")
    del sd
    one = os.path.join(a.work, "one.jsonl")
    with open(one, "w") as f:
        f.write(json.dumps({"text_id": 1, "text": TEXT, "image_ids": []}, ensure_ascii=False) + "\n")
    out = os.path.join(a.work, "t.jsonl")
    cpp = [os.path.join(a.build, "bin", "clip-index"), "-c", ckpt, "--texts", one, "--text-out", out, "--quiet"]
    py = [sys.executable, os.path.abspath(__file__), "--cnclip", cnclip, "--child", ckpt]
    sides = [("cpp", cpp, {"CLIP_NO_CACHE": "1"}), ("python", py, None)]
    if a.before:
        sides.insert(1, ("before", [os.path.join(a.before, "bin", "clip-index")] + cpp[1:], {"CLIP_NO_CACHE": "1"}))
    if a.store:
        store = cpp[:-2] + [os.path.join(a.work, "t.clipfeat"), "--quiet"]
        cache = os.path.join(a.work, "cache")
        subprocess.run(["rm", "-rf", cache])
        sides += [("store-nocache", store, {"CLIP_NO_CACHE": "1"}),
                  ("store-cache", store, {"CLIP_CACHE_DIR": cache, "CLIP_NO_CACHE": ""})]
    res = {name: [] for name, _, _ in sides}
    load_start = os.getloadavg()
    for i in range(a.runs + 1):
        for name, cmd, env in sides:
            wall, rss, _, cpu = run(cmd, env)
            tag = "warm-up" if i == 0 else f"run {i}"
            print(f"{name:6s} {tag:7s} wall {wall:6.3f} s  cpu {cpu:6.3f} s  peak RSS {rss:7.1f} MiB", file=sys.stderr)
            if i > 0:
                res[name].append((wall, rss, cpu))
    with open(out) as f:
        cpp_feat = json.loads(f.readline())["feature"][:4]
    py_feat = json.loads(run(py)[2])["feature_head"]
    med = {k: tuple(statistics.median(x[j] for x in v) for j in range(3)) for k, v in res.items()}
    tt = text_bytes / 2**20
    print(json.dumps({
        "cpp_wall_s": round(med["cpp"][0], 3), "python_wall_s": round(med["python"][0], 3),
        "speedup": round(med["python"][0] / med["cpp"][0], 2),
        "cpp_cpu_s": round(med["cpp"][2], 3), "python_cpu_s": round(med["python"][2], 3),
        "cpu_ratio": round(med["python"][2] / med["cpp"][2], 2),
        "cpp_peak_rss_mib": round(med["cpp"][1], 1), "python_peak_rss_mib": round(med["python"][1], 1),
        "text_tower_mib": round(tt, 1), "cpp_rss_over_text_tower": round(med["cpp"][1] / tt, 3),
        "cpp_feature_head": cpp_feat, "python_feature_head": py_feat,
        **({"before_wall_s": round(med["before"][0], 3), "before_cpu_s": round(med["before"][2], 3),
            "before_peak_rss_mib": round(med["before"][1], 1)} if a.before else {}),
        **({"store_nocache_wall_s": round(med["store-nocache"][0], 3), "store_cache_wall_s": round(med["store-cache"][0], 3),
            "store_nocache_cpu_s": round(med["store-nocache"][2], 3), "store_cache_cpu_s": round(med["store-cache"][2], 3)}
           if a.store else {}),
        "runs": a.runs, "load_average_start": load_start, "load_average": os.getloadavg(), "cores": os.cpu_count(),
        "cpu": cpu_model(),
    }))


if __name__ == "__main__":
    main()
