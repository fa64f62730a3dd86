#!/usr/bin/env python3
"""Checks our tools against Hugging Face transformers (a machine with torch + transformers, e.g. the GPU one).

1. Builds ChineseCLIPModel in transformers for several configs (non-default head counts, MLP widths that
   are and are not 4 x hidden, a ViT-B/16-sized one), saves model + BertTokenizer (over cn_clip's vocab)
   with save_pretrained, removes any vocab.txt (transformers 5 writes tokenizer.json), runs our clip-index
   on the folder and compares the L2-normalised features with transformers' get_image_features /
   get_text_features on the same pixels and token ids (limit: max abs <= 1e-6, fp32, CPU).
2. Converts each folder with `clip-export --format hf`, loads the result with ChineseCLIPModel.from_pretrained
   (weights must equal the original's) and ChineseCLIPProcessor.from_pretrained (fast tokenizer), and
   compares its token ids on the fixture texts with cn_clip's (expected/tokens.jsonl, which ours equal).
3. A config our towers cannot compute (vision hidden_act gelu) must be refused naming that field.

usage: scripts/check_transformers.py --bin build-gpu/bin --fixtures DIR [--work DIR] [--out report.json]
  DIR holds cn_clip's vocab.txt, texts.jsonl and tokens.jsonl (../shared/fixtures/cnclip-tiny has them,
  tokens.jsonl under expected/). Exit status 0 when every check passes.
"""
import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

import transformers
from transformers import ChineseCLIPConfig, ChineseCLIPModel, ChineseCLIPProcessor

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CONTEXT = 52
LIMIT = 1e-6

# name -> (text_config, vision_config, projection_dim)
SMALL_TEXT = dict(vocab_size=21128, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384,
                  max_position_embeddings=64)
SMALL_VISION = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384, image_size=64,
                    patch_size=16)
CONFIGS = {
    "small-heads": (SMALL_TEXT, SMALL_VISION, 48),
    "small-mlp": (dict(SMALL_TEXT, intermediate_size=200), dict(SMALL_VISION, intermediate_size=160), 48),
    "base": (dict(vocab_size=21128), dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, image_size=224, patch_size=16), 512),
    "base-mlp": (dict(vocab_size=21128, intermediate_size=2048),
                 dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2000,
                      image_size=224, patch_size=16), 512),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr, time.time() - t


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def make_tokenizer(vocab_path, work):
    """A BertTokenizer over cn_clip's vocab, built the way a user would; checked to hold the whole vocab."""
    from transformers import BertTokenizer
    n = sum(1 for _ in open(vocab_path, encoding="utf-8"))
    tried = []
    src = os.path.join(work, "vocab-src")
    os.makedirs(src, exist_ok=True)
    shutil.copy(vocab_path, os.path.join(src, "vocab.txt"))
    attempts = [("from_pretrained(folder with vocab.txt)", lambda: BertTokenizer.from_pretrained(src)),
                ("BertTokenizer(vocab_file=...)", lambda: BertTokenizer(vocab_file=vocab_path)),
                ("BertTokenizer(vocab=...)", lambda: BertTokenizer(vocab=vocab_path))]
    for name, make in attempts:
        try:
            tok = make()
            if len(tok.get_vocab()) >= n - 1:
                return tok, name
            tried.append(f"{name}: {len(tok.get_vocab())} tokens")
        except Exception as e:  # noqa: BLE001 - report every way that failed
            tried.append(f"{name}: {type(e).__name__}: {e}")
    raise RuntimeError("cannot build a BertTokenizer over " + vocab_path + ": " + "; ".join(tried))


def images_tsv(path, resolution, count=6, seed=0):
    """Random RGB images of exactly R x R (no resize on either side), as an images TSV, and their pixels."""
    rng = np.random.RandomState(seed + resolution)
    rows, pix = [], []
    for i in range(count):
        a = rng.randint(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
        if i % 2:  # smoother content too
            a = np.repeat(np.repeat(a[::8, ::8], 8, 0), 8, 1)[:resolution, :resolution]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
        rows.append(f"{1000 + i}\t{base64.b64encode(buf.getvalue()).decode()}")
        x = (a.astype(np.float32) / np.float32(255.0) - MEAN) / STD  # ToTensor + Normalize in float32, as ours
        pix.append(x.transpose(2, 0, 1))
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return [1000 + i for i in range(count)], torch.from_numpy(np.stack(pix))


def features_of(out):
    if isinstance(out, torch.Tensor):
        return out
    for k in ("image_embeds", "text_embeds", "pooler_output"):
        if getattr(out, k, None) is not None:
            return getattr(out, k)
    return out[0]


@torch.no_grad()
def hf_features(model, pixels, ids):
    model.eval()
    ids = torch.tensor(ids, dtype=torch.long)
    mask = (ids != 0).long()
    img = model.get_image_features(pixel_values=pixels)
    txt = model.get_text_features(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    # The projection by hand, in case get_*_features returns an output object in this version.
    v = model.vision_model(pixel_values=pixels)
    img_manual = model.visual_projection(v.pooler_output)
    t = model.text_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    txt_manual = model.text_projection(t.last_hidden_state[:, 0, :])
    img, txt = features_of(img), features_of(txt)
    if img.shape != img_manual.shape:
        img = img_manual
    if txt.shape != txt_manual.shape:
        txt = txt_manual
    return (torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1),
            float((img - img_manual).abs().max()), float((txt - txt_manual).abs().max()))


def read_features(path, key):
    rows = read_jsonl(path)
    return {r[key]: np.array(r["feature"], dtype=np.float64) for r in rows}


def check_model(name, args, texts, tokens, tokens_pre, report):
    tcfg, vcfg, proj = CONFIGS[name]
    work = os.path.join(args.work, name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.manual_seed(0)
    cfg = ChineseCLIPConfig(text_config=tcfg, vision_config=vcfg, projection_dim=proj)
    model = ChineseCLIPModel(cfg).eval()
    folder = os.path.join(work, "hf")
    model.save_pretrained(folder)
    tok, how = make_tokenizer(args.vocab, work)
    tok.save_pretrained(folder)
    saved = sorted(os.listdir(folder))
    removed_vocab = False
    if "vocab.txt" in saved:  # make sure tokenizer.json is what our tools read
        os.remove(os.path.join(folder, "vocab.txt"))
        removed_vocab = True
    r = {"config": {"text": tcfg, "vision": vcfg, "projection_dim": proj}, "saved_files": saved,
         "removed_vocab_txt": removed_vocab, "tokenizer": f"{type(tok).__name__} via {how}"}

    res = vcfg.get("image_size", 224)
    img_ids, pixels = images_tsv(os.path.join(work, "imgs.tsv"), res)
    text_rows = [{"text_id": t["text_id"], "text": t["text"], "image_ids": []} for t in texts]
    with open(os.path.join(work, "texts.jsonl"), "w", encoding="utf-8") as f:
        for t in text_rows:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    # clip-index tokenises as cn_clip's extract_features (dataset preprocessing first): those ids for the features.
    ids = [tokens_pre[t["text_id"]] for t in texts]
    hf_img, hf_txt, d_img_manual, d_txt_manual = hf_features(model, pixels, ids)
    r["hf_get_features_vs_manual_projection"] = [d_img_manual, d_txt_manual]
    # Our clip-index on the folder, on the CPU in fp32.
    rc, out, err, secs = run([os.path.join(args.bin, "clip-index"), "-c", folder, "--images", os.path.join(work, "imgs.tsv"),
                              "--texts", os.path.join(work, "texts.jsonl"), "--image-out", os.path.join(work, "img.jsonl"),
                              "--text-out", os.path.join(work, "txt.jsonl"), "--device", "cpu", "--precision", "fp32"])
    r["clip_index"] = {"rc": rc, "seconds": round(secs, 2), "stderr_tail": err[-1500:]}
    ok = rc == 0
    if ok:
        ours_i = read_features(os.path.join(work, "img.jsonl"), "image_id")
        ours_t = read_features(os.path.join(work, "txt.jsonl"), "text_id")
        di = max(float(np.abs(ours_i[i] - hf_img[k].double().numpy()).max()) for k, i in enumerate(img_ids))
        dt = max(float(np.abs(ours_t[t["text_id"]] - hf_txt[k].double().numpy()).max()) for k, t in enumerate(texts))
        r["max_abs_image"], r["max_abs_text"] = di, dt
        ok = di <= LIMIT and dt <= LIMIT

    # Our export of that folder, read back by transformers.
    exp = os.path.join(work, "export")
    rc2, out2, err2, _ = run([os.path.join(args.bin, "clip-export"), "-c", folder, "--format", "hf", "--output", exp])
    r["clip_export"] = {"rc": rc2, "stderr_tail": err2[-1500:]}
    if rc2 != 0:
        ok = False
    else:
        r["export_files"] = sorted(os.listdir(exp))
        back = ChineseCLIPModel.from_pretrained(exp).eval()
        sd0, sd1 = model.state_dict(), back.state_dict()
        missing = sorted(set(sd0) ^ set(sd1))
        wdiff = max(float((sd0[k].float() - sd1[k].float()).abs().max()) for k in sd0 if k in sd1)
        r["export_weights_max_abs"], r["export_key_mismatch"] = wdiff, missing[:10]
        b_img, b_txt, _, _ = hf_features(back, pixels, ids)
        r["export_features_max_abs"] = [float((b_img - hf_img).abs().max()), float((b_txt - hf_txt).abs().max())]
        proc = ChineseCLIPProcessor.from_pretrained(exp)
        ptok = proc.tokenizer
        enc = ptok([t["text"] for t in texts], padding="max_length", max_length=CONTEXT, truncation=True)
        same = [list(enc["input_ids"][k]) == tokens[t["text_id"]] for k, t in enumerate(texts)]
        r["processor"] = {"tokenizer": type(ptok).__name__, "is_fast": bool(getattr(ptok, "is_fast", False)),
                          "texts": len(texts), "token_ids_equal": sum(same)}
        r["processor"]["image_processor"] = type(proc.image_processor).__name__
        if not all(same):
            k = same.index(False)
            r["processor"]["first_difference"] = {"text": texts[k]["text"], "hf": list(enc["input_ids"][k]),
                                                  "cn_clip": tokens[texts[k]["text_id"]]}
        ok = ok and not missing and wdiff == 0.0 and all(same)
    r["ok"] = ok
    report["models"][name] = r
    log(f"{name}: ok={ok} image {r.get('max_abs_image')} text {r.get('max_abs_text')} "
        f"export weights {r.get('export_weights_max_abs')} tokens {r.get('processor', {}).get('token_ids_equal')}"
        f"/{len(texts)} ({r.get('processor', {}).get('tokenizer')}, fast={r.get('processor', {}).get('is_fast')})")
    return ok


def check_refusal(args, report):
    """A vision activation our ViT does not have: clip-index must refuse, naming the field."""
    work = os.path.join(args.work, "refuse")
    shutil.rmtree(work, ignore_errors=True)
    cfg = ChineseCLIPConfig(text_config=SMALL_TEXT, vision_config=dict(SMALL_VISION, hidden_act="gelu"), projection_dim=48)
    ChineseCLIPModel(cfg).save_pretrained(work)
    shutil.copy(args.vocab, os.path.join(work, "vocab.txt"))
    with open(os.path.join(work, "t.jsonl"), "w") as f:
        f.write(json.dumps({"text_id": 1, "text": "x", "image_ids": []}) + "\n")
    rc, _, err, _ = run([os.path.join(args.bin, "clip-index"), "-c", work, "--texts", os.path.join(work, "t.jsonl"),
                         "--text-out", os.path.join(work, "o.jsonl")])
    ok = rc != 0 and "vision_config.hidden_act" in err
    report["refusal"] = {"rc": rc, "stderr_tail": err[-600:], "ok": ok}
    log(f"refusal of vision hidden_act=gelu: ok={ok} (rc {rc})")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="folder with clip-index and clip-export")
    ap.add_argument("--fixtures", required=True, help="folder with vocab.txt, texts.jsonl, tokens.jsonl")
    ap.add_argument("--work", default="/tmp/check_transformers")
    ap.add_argument("--out", default="", help="JSON report")
    ap.add_argument("--models", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    args = ap.parse_args()
    args.vocab = os.path.join(args.fixtures, "vocab.txt")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.work, exist_ok=True)
    texts = read_jsonl(os.path.join(args.fixtures, "texts.jsonl"))
    token_rows = read_jsonl(os.path.join(args.fixtures, "tokens.jsonl"))
    tokens = {r["text_id"]: r["input_ids"] for r in token_rows}  # cn_clip.clip.tokenize(text)
    tokens_pre = {r["text_id"]: r["input_ids_preprocessed"] for r in token_rows}
    report = {"transformers": transformers.__version__, "torch": torch.__version__, "limit": LIMIT, "models": {}}
    try:
        import tokenizers
        report["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    ok = True
    for name in args.models.split(","):
        try:
            ok = check_model(name, args, texts, tokens, tokens_pre, report) and ok
        except Exception as e:  # noqa: BLE001 - one failing model must not hide the others
            import traceback
            report["models"][name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
            log(f"{name}: FAILED {type(e).__name__}: {e}")
            ok = False
    try:
        ok = check_refusal(args, report) and ok
    except Exception as e:  # noqa: BLE001
        report["refusal"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ok = False
    report["ok"] = ok
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
