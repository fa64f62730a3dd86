#!/usr/bin/python3
"""Writes the seed corpus of the fuzz harnesses (tests/fuzz/corpus/<target>/): one small valid input
per format the harness reads. Run from the repository root:  python3 tests/fuzz/make_seeds.py
Inputs that the fuzzers once found are kept beside these, never rewritten here
(image/bmp-tall-truncated.bmp, image/png_cut_crc_reread.png: docs/reliability.md)."""
import base64, io, json, os, pickle, shutil, struct, sys, zipfile

import torch

root = os.path.join("tests", "fuzz", "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# torch.save archives (zip + pickle) as cn_clip writes them, and a plain state dict.
for name, obj in [("ckpt.pt", {"epoch": 1, "step": 2, "name": "x",
                               "state_dict": {"module.logit_scale": torch.tensor(4.6), "module.w": torch.zeros(2, 3)}}),
                  ("state.pt", {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.ones(1)})]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    put("zip_pickle", name, buf.getvalue())
    # The pickle inside, for the raw unpickler.
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        put("pickle", name + ".pkl", z.read([n for n in z.namelist() if n.endswith("data.pkl")][0]))
put("pickle", "plain.pkl", pickle.dumps({"a": [1, 2.5, "x", None, True, (1, 2)], "b": {"c": b"\x00"}}, protocol=2))
# Integers at and beyond the 64-bit edge (LONG1 of 8 and 9 bytes): the latter is refused as unsupported.
put("pickle", "bigint.pkl", pickle.dumps({"max": 2**63 - 1, "min": -2**63, "big": 2**63, "huge": 2**80}, protocol=2))

# safetensors: 8-byte little-endian header length, JSON header, data.
def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for k, (dtype, shape, raw) in tensors.items():
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
put("safetensors", "two.safetensors", safetensors({"a": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                                                   "b": ("F16", [3], b"\x00\x3c" * 3)}))
put("safetensors", "empty.safetensors", safetensors({}))

# Images: the decoder test cases.
for f in sorted(os.listdir("tests/data/image")):
    if f.split(".")[-1] in ("jpg", "png", "bmp", "ppm", "webp", "gif"):
        put("image", f, open(os.path.join("tests/data/image", f), "rb").read())

png = open("tests/data/image/png_p8.png", "rb").read()
put("base64", "png.b64", base64.b64encode(png))
put("base64", "urlsafe.b64", base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 5))
put("base64", "junk.b64", "QUJD\nRA==trailing")

# Flickr30k-CN lines: an images TSV and a texts JSONL (the harness reads each file both ways).
jpg = base64.b64encode(open("tests/data/image/jpeg_gray.jpg", "rb").read()).decode()
put("dataset", "imgs.tsv", f"1\t{jpg}\n2\t{jpg}\n")
put("dataset", "texts.jsonl", '{"text_id": 7, "text": "一只猫", "image_ids": [1]}\n'
                              '{"text_id": 8, "text": "两只“狗”", "image_ids": [1, 2]}\n')
# Valid syntax the parser cannot hold (out_of_range, not parse_error: a fuzzing finding).
put("dataset", "number-overflow.jsonl", '{"text_id": 7, "text": "x", "image_ids": [1E11111111111111111111111]}\n')

# Tokenizer inputs.
for i, t in enumerate(["一只金毛犬在草地上奔跑", "Hello, WORLD! 123", "café naïve ＡＢＣ", "\u3000\t混合 text！？"]):
    put("tokenizer", f"t{i}.txt", t)

# Feature files: cn_clip's JSONL and a binary store made by clip-index's writer from it.
feats = open("tests/data/eval/float/imgs.img_feat.jsonl").read().splitlines()[:4]
put("store", "feats.jsonl", "\n".join(feats) + "\n")
# A binary store (docs/store-format.md, version 1): 3 unit rows of dim 4, float32 and float16.
def store(dtype):
    meta = json.dumps({"kind": "image", "model_name": "m", "weights_hash": "h", "preprocess": {},
                       "sources": [], "extra": {}}).encode()
    count, dim, elem = 3, 4, 4 if dtype == 0 else 2
    ids_off = (64 + len(meta) + 7) // 8 * 8
    data_off = (ids_off + 8 * count + 63) // 64 * 64
    size = data_off + count * dim * elem
    out = b"CLIPFEAT" + struct.pack("<IIQIIIIQQQ", 1, 64, count, dim, dtype, 1, len(meta), ids_off, data_off, size)
    out += meta + b"\0" * (ids_off - 64 - len(meta)) + struct.pack("<3q", 5, 6, 7)
    out += b"\0" * (data_off - len(out))
    rows = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.6, 0.8]]
    for r in rows:
        out += struct.pack("<4f", *r) if dtype == 0 else struct.pack("<4e", *r)
    assert len(out) == size
    return out
put("store", "f32.clipfeat", store(0))
put("store", "f16.clipfeat", store(1))
print("seeds in", root)
