#!/usr/bin/env python3
"""Helpers of bench/run_index_gpu.sh: the data, the checkpoint, cn_clip's extraction loop, comparisons.

  bench_index_python.py make-data --out DIR [--split bench] [--images 16384] [--texts 20000]
                                  [--width 500] [--height 375] [--quality 90] [--jobs N]
  bench_index_python.py make-checkpoint --cnclip CNCLIP_DIR --out FILE.pt [--vision ViT-B-16]
                                  [--text RoBERTa-wwm-ext-base-chinese]
  bench_index_python.py extract --cnclip CNCLIP_DIR --checkpoint FILE.pt (--images TSV | --texts JSONL)
                                  --out FILE.jsonl [--vision ..] [--text ..] [--device cuda] [--precision fp16]
                                  [--batch-size 64] [--workers 0] [--context-length 52]
  bench_index_python.py compare A B       (feature stores or JSONL: cosine of the rows with the same id)

make-data writes the Flickr30k-CN layout: {split}_imgs.tsv (image_id<TAB>urlsafe base64 of a JPEG) and
{split}_texts.jsonl, with photo-like synthetic images (smooth colour fields, hard-edged discs and
rectangles, fine noise; q90 of 500x375 is ~50 KB, the size of a Flickr30k photo) drawn with torch
and encoded by Pillow, and Chinese captions assembled from word lists.

make-checkpoint builds cn_clip's CLIP with its own random initialisation and saves it as cn_clip's
training does (torch.save {"epoch", "step", "name", "state_dict" with "module." keys}, float32), with
cn_clip's vocab.txt beside it.

extract is cn_clip's eval/extract_features.py loop: its model (cn_clip.clip.model.CLIP, weights
converted as its --precision says), its dataset logic (base64 -> Pillow -> Resize((R, R), BICUBIC) ->
convert('RGB') -> ToTensor -> Normalize; texts: _preprocess_text + tokenize), a DataLoader with its
settings (batch 64, num_workers 0, pin_memory, sequential), .cuda(non_blocking=True), the forward,
normalisation and one JSON line per feature. Two differences, both in cn_clip's favour or neutral:
the images come from the TSV through an offset index instead of cn_clip's LMDB (the same base64
strings), and torchvision is replaced by the same Pillow calls and tensor arithmetic when it is not
installed. cn_clip's sources are imported read-only from CNCLIP_DIR, never copied here.
Timing lines go to stderr: "python extract ... items=N loop_s=S items_per_s=R".
"""
import argparse
import base64
import io
import json
import os
import struct
import sys
import time


# ----------------------------------------------------------------------------------------- data

WORDS_A = ["一只", "两只", "一群", "一个", "几个", "一位", "三个", "一辆", "一条", "一座"]
WORDS_B = ["小狗", "小猫", "孩子", "男人", "女人", "老人", "学生", "骑手", "汽车", "小船", "鸟", "马", "工人", "厨师"]
WORDS_C = ["在草地上", "在海边", "在街道上", "在公园里", "在雪地里", "在厨房里", "在桥上", "在山顶", "在湖边", "在市场里"]
WORDS_D = ["奔跑", "玩耍", "休息", "散步", "看书", "吃东西", "骑自行车", "拍照", "聊天", "跳舞", "唱歌", "工作"]
WORDS_E = ["", "，阳光明媚", "，天色渐暗", "，周围有很多人", "，背景是蓝天白云", "，旁边停着一辆红色的车"]


def caption(i):
    h = (i * 2654435761) & 0xFFFFFFFF
    pick = lambda ws, k: ws[(h >> k) % len(ws)]
    return pick(WORDS_A, 0) + pick(WORDS_B, 4) + pick(WORDS_C, 9) + pick(WORDS_D, 14) + pick(WORDS_E, 19) + "。"


def photo(seed, w, h):
    """A photo-like RGB image as HxWx3 uint8 (torch): gradients, shapes, texture, noise."""
    import torch
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)
    y = torch.arange(h, dtype=torch.float32).view(h, 1, 1)
    x = torch.arange(w, dtype=torch.float32).view(1, w, 1)
    f = 0.004 + 0.02 * r(3)
    ph = 6.28 * r(3)
    img = 128 + 80 * torch.sin(x * f + y * f.flip(0) * 0.7 + ph)  # smooth colour fields
    img = img + 40 * torch.cos((x - y) * 0.011 + ph.flip(0))
    for _ in range(8):  # hard-edged shapes
        cx, cy, rad = float(r(1)) * w, float(r(1)) * h, 10 + float(r(1)) * 80
        col = 255 * r(3)
        if float(r(1)) < 0.5:
            m = ((x - cx) ** 2 + (y - cy) ** 2) < rad * rad
        else:
            m = ((x - cx).abs() < rad) & ((y - cy).abs() < rad * 0.6)
        img = torch.where(m, 0.25 * img + 0.75 * col, img)
    img = img + 10 * torch.sin(x * 0.9 + y * 0.35)  # texture
    img = img + torch.randn(h, w, 3, generator=g) * 5  # sensor noise
    return img.clamp(0, 255).to(torch.uint8)


def pixel_bytes(a):
    try:
        return a.contiguous().numpy().tobytes()
    except (RuntimeError, ImportError):  # torch without numpy
        return bytes(a.flatten().tolist())


def encode_photo(args):
    i, w, h, q = args
    import torch
    from PIL import Image
    torch.set_num_threads(1)  # one process per core already
    im = Image.frombytes("RGB", (w, h), pixel_bytes(photo(1000 + i, w, h)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def make_data(a):
    import multiprocessing as mp
    os.makedirs(a.out, exist_ok=True)
    tsv = os.path.join(a.out, f"{a.split}_imgs.tsv")
    texts = os.path.join(a.out, f"{a.split}_texts.jsonl")
    t0 = time.time()
    total = 0
    with mp.get_context("fork").Pool(a.jobs or os.cpu_count()) as pool, open(tsv + ".tmp", "w") as f:
        jobs = [(i, a.width, a.height, a.quality) for i in range(a.images)]
        for i, jpg in enumerate(pool.imap(encode_photo, jobs, chunksize=16)):
            total += len(jpg)
            f.write(f"{100000 + i}\t{base64.urlsafe_b64encode(jpg).decode()}\n")
    os.replace(tsv + ".tmp", tsv)
    with open(texts + ".tmp", "w") as f:
        for i in range(a.texts):
            f.write(json.dumps({"text_id": 500000 + i, "text": caption(i), "image_ids": [100000 + i % max(1, a.images)]},
                               ensure_ascii=False) + "\n")
    os.replace(texts + ".tmp", texts)
    print(f"make-data: {a.images} JPEGs of {a.width}x{a.height} q{a.quality} (mean {total / max(1, a.images) / 1024:.1f} KB) "
          f"-> {tsv}, {a.texts} texts -> {texts}, {time.time() - t0:.1f} s", file=sys.stderr)


# ----------------------------------------------------------------------------------------- cn_clip

def import_cnclip(cnclip):
    """cn_clip's model module and tokenizer, under a stand-in cn_clip.clip package (its __init__
    imports torchvision, which may be missing)."""
    import types
    sys.path.insert(0, cnclip)
    pkg = types.ModuleType("cn_clip.clip")
    pkg.__path__ = [os.path.join(cnclip, "cn_clip", "clip")]
    sys.modules["cn_clip.clip"] = pkg
    from cn_clip.clip.bert_tokenizer import FullTokenizer
    pkg._tokenizer = FullTokenizer()
    from cn_clip.clip import model as cm
    return cm, pkg._tokenizer


def model_info(cnclip, vision, text):
    info = {}
    for f in (vision, text):
        with open(os.path.join(cnclip, "cn_clip", "clip", "model_configs", f + ".json")) as fh:
            info.update(json.load(fh))
    return info


def make_checkpoint(a):
    import torch
    cm, _ = import_cnclip(a.cnclip)
    torch.manual_seed(0)
    model = cm.CLIP(**model_info(a.cnclip, a.vision, a.text))  # cn_clip's initialize_parameters + BERT init
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    torch.save({"epoch": 1, "step": 1, "name": f"bench-random-{a.vision}", "state_dict": sd}, a.out + ".tmp")
    os.replace(a.out + ".tmp", a.out)
    vocab = os.path.join(os.path.dirname(os.path.abspath(a.out)), "vocab.txt")
    with open(os.path.join(a.cnclip, "cn_clip", "clip", "vocab.txt"), "rb") as s, open(vocab, "wb") as d:
        d.write(s.read())
    print(f"make-checkpoint: {a.out} ({os.path.getsize(a.out) / 1e6:.0f} MB, {a.vision} + {a.text}, random weights)",
          file=sys.stderr)


class TsvImages:
    """cn_clip's EvalImgDataset over a TSV instead of its LMDB: (image_id, transformed image)."""

    def __init__(self, path, resolution):
        self.path = path
        self.offsets = []
        with open(path, "rb") as f:
            pos = 0
            for line in f:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)
        self.resolution = resolution
        self.f = None
        try:
            from torchvision.transforms import Compose, Resize, ToTensor, Normalize, InterpolationMode
            self.transform = Compose([Resize((resolution, resolution), interpolation=InterpolationMode.BICUBIC),
                                      lambda im: im.convert("RGB"), ToTensor(),
                                      Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
            self.via = "torchvision"
        except ImportError:
            self.transform = self.plain_transform
            self.via = "Pillow + torch (no torchvision)"

    def plain_transform(self, im):
        import torch
        from PIL import Image
        im = im.resize((self.resolution, self.resolution), Image.BICUBIC).convert("RGB")
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(self.resolution, self.resolution, 3)
        t = t.permute(2, 0, 1).float().div(255)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
        return (t - mean) / std

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, idx):
        from PIL import Image
        if self.f is None:
            self.f = open(self.path, "rb")
        self.f.seek(self.offsets[idx])
        img_id, b64 = self.f.readline().decode("utf8").rstrip("\n").split("\t")
        image = Image.open(io.BytesIO(base64.urlsafe_b64decode(b64)))
        return int(img_id), self.transform(image)


class JsonlTexts:
    """cn_clip's EvalTxtDataset: (text_id, token ids)."""

    def __init__(self, path, tokenizer, context_length):
        self.texts = [(o["text_id"], o["text"]) for o in map(json.loads, open(path, encoding="utf8")) if o]
        self.tok = tokenizer
        self.context_length = context_length

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, idx):
        import torch
        text_id, text = self.texts[idx]
        text = str(text).lower().replace("“", "\"").replace("”", "\"")  # cn_clip's _preprocess_text
        t = self.tok  # cn_clip.clip.utils.tokenize, for one text
        ids = [t.vocab["[CLS]"]] + t.convert_tokens_to_ids(t.tokenize(text))[: self.context_length - 2] + [t.vocab["[SEP]"]]
        out = torch.zeros(self.context_length, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids)
        return text_id, out


def extract(a):
    import torch
    t_start = time.time()
    cm, tok = import_cnclip(a.cnclip)
    dev = torch.device(a.device)
    model = cm.CLIP(**model_info(a.cnclip, a.vision, a.text))
    # extract_features.py: convert_weights, back to fp32 unless --precision fp16, .cuda(), convert again for fp16.
    if a.precision == "fp16":
        cm.convert_weights(model)
    model.to(dev)
    ck = torch.load(a.checkpoint, map_location="cpu")
    sd = ck["state_dict"]
    if next(iter(sd)).startswith("module"):
        sd = {k[len("module."):]: v for k, v in sd.items() if "bert.pooler" not in k}
    model.load_state_dict(sd)
    model.eval()
    if a.images:
        res = json.load(open(os.path.join(a.cnclip, "cn_clip", "clip", "model_configs", a.vision + ".json")))["image_resolution"]
        ds = TsvImages(a.images, res)
        kind = "image"
        print(f"python extract: image transform via {ds.via}", file=sys.stderr)
    else:
        ds = JsonlTexts(a.texts, tok, a.context_length)
        kind = "text"
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, pin_memory=dev.type == "cuda",
                                     sampler=torch.utils.data.SequentialSampler(ds), drop_last=False)
    n = 0
    t0 = time.time()
    with open(a.out, "w") as fout, torch.no_grad():
        for ids, x in dl:
            x = x.to(dev, non_blocking=True)
            f = model(x, None) if kind == "image" else model(None, x)
            f /= f.norm(dim=-1, keepdim=True)
            for i, feat in zip(ids.tolist(), f.tolist()):
                fout.write("{}\n".format(json.dumps({f"{kind}_id": i, "feature": feat})))
                n += 1
    loop = time.time() - t0
    print(f"python extract kind={kind} items={n} workers={a.workers} batch={a.batch_size} precision={a.precision} "
          f"setup_s={t0 - t_start:.2f} loop_s={loop:.2f} items_per_s={n / loop:.1f}", file=sys.stderr)


# ----------------------------------------------------------------------------------------- compare

def read_features(path):
    """{id: list of floats} from a clip-index store (docs/store-format.md) or a feature JSONL."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:8] == b"CLIPFEAT":
            import array
            count, dim, dtype = struct.unpack_from("<QII", head, 16)
            ids_off, data_off = struct.unpack_from("<QQ", head, 40)
            f.seek(ids_off)
            ids = struct.unpack(f"<{count}q", f.read(8 * count))
            f.seek(data_off)
            raw = f.read(count * dim * (4 if dtype == 0 else 2))
            vals = struct.unpack(f"<{count * dim}{'f' if dtype == 0 else 'e'}", raw)
            return {ids[r]: vals[r * dim:(r + 1) * dim] for r in range(count)}
    out = {}
    with open(path, encoding="utf8") as f:
        for line in f:
            o = json.loads(line)
            out[o.get("image_id", o.get("text_id"))] = o["feature"]
    return out


def compare(a):
    A, B = read_features(a.a), read_features(a.b)
    common = [i for i in A if i in B]
    if not common:
        sys.exit(f"compare: no common ids in {a.a} and {a.b}")
    import torch
    x = torch.tensor([list(A[i]) for i in common], dtype=torch.float64)
    y = torch.tensor([list(B[i]) for i in common], dtype=torch.float64)
    cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
    same = int((x == y).all(1).sum().item())
    print(f"compare a={a.a} b={a.b} rows={len(common)} cos_mean={cos.mean().item():.6f} cos_min={cos.min().item():.6f} "
          f"identical_rows={same} max_abs_diff={(x - y).abs().max().item():.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("make-data")
    d.add_argument("--out", required=True)
    d.add_argument("--split", default="bench")
    d.add_argument("--images", type=int, default=16384)
    d.add_argument("--texts", type=int, default=20000)
    d.add_argument("--width", type=int, default=500)
    d.add_argument("--height", type=int, default=375)
    d.add_argument("--quality", type=int, default=90)
    d.add_argument("--jobs", type=int, default=0)
    c = sub.add_parser("make-checkpoint")
    c.add_argument("--cnclip", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--vision", default="ViT-B-16")
    c.add_argument("--text", default="RoBERTa-wwm-ext-base-chinese")
    e = sub.add_parser("extract")
    e.add_argument("--cnclip", required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--images")
    e.add_argument("--texts")
    e.add_argument("--out", required=True)
    e.add_argument("--vision", default="ViT-B-16")
    e.add_argument("--text", default="RoBERTa-wwm-ext-base-chinese")
    e.add_argument("--device", default="cuda")
    e.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--context-length", type=int, default=52)
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    a = ap.parse_args()
    if a.cmd == "extract":
        a.cnclip = os.path.abspath(a.cnclip)
        if bool(a.images) == bool(a.texts):
            sys.exit("extract: give --images TSV or --texts JSONL")
    {"make-data": make_data, "make-checkpoint": make_checkpoint, "extract": extract, "compare": compare}[a.cmd](a)


if __name__ == "__main__":
    main()
