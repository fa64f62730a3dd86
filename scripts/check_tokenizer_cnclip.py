#!/usr/bin/env python3
"""Checks our BERT Chinese tokenizer against cn_clip's own (cn_clip/clip/bert_tokenizer.py) on random text.

Draws texts from a fixed seed out of many kinds of characters (CJK and its extensions, compatibility
ideographs, ASCII, whitespace and control characters, zero-width and byte-order marks, Chinese and general
punctuation, accented Latin, combining marks, full-width forms, Greek, Cyrillic, kana, Hangul, emoji, Arabic,
Devanagari, private use, any code point, vocabulary words in both cases, 100-250 character runs), some of them
Unicode-normalised, and compares for each text: the wordpieces, the 52 input ids cn_clip's `tokenize` gives,
and cn_clip's text preprocessing (lower case, curly double quotes). Our side runs in `clip_tests` (the
"[.tokenize-file]" case of tests/test_tokenizer.cpp). Exit status 0 when every text agrees.

usage: scripts/check_tokenizer_cnclip.py --cnclip DIR [--bin build/bin] [--vocab vocab.txt] [--texts 20000] [--seed 1]
  DIR: a checkout of OFA-Sys/Chinese-CLIP (only its cn_clip/clip/bert_tokenizer.py is used; it needs `six`).
  --vocab: default ../shared/fixtures/cnclip-tiny/vocab.txt (cn_clip's 21,128-entry vocab).
"""
import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata


def texts(n, seed, vocab_words):
    rng = random.Random(seed)
    r = lambda a, b: (lambda: chr(rng.randint(a, b)))
    pick = lambda s: (lambda: rng.choice(s))
    pools = [
        r(0x4E00, 0x9FFF), r(0x3400, 0x4DBF), r(0x20000, 0x2A6DF), r(0xF900, 0xFAFF),
        pick("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        pick(" \t\n\r\x0b\x0c\u00a0\u3000\u2028\u200b\u200d\ufeff\x00\x7f\x85\ufffd"),
        pick("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~，。！？；：“”‘’（）【】《》、…—·～"),
        r(0xC0, 0x24F), r(0x300, 0x36F), r(0xFF01, 0xFF5E), r(0x370, 0x4FF), r(0x3040, 0x30FF),
        r(0xAC00, 0xD7A3), r(0x1F300, 0x1FAFF), pick("İıßẞﬁﬀŉǅǈΣςÅÅΩΩK℃№™①⑩㈠㊀ⅷ"), r(0x80, 0x9F),
        r(0xE000, 0xE0FF), r(0x600, 0x6FF), r(0x900, 0x97F), r(0x2000, 0x206F), r(0x2E80, 0x2FDF),
        r(0x1, 0x10FFFF), pick(vocab_words), lambda: rng.choice(vocab_words).upper(),
    ]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 60)):
            p = rng.choice(pools)()
            if rng.random() < 0.02:
                p = p * rng.randint(100, 250)  # past the 200-character word limit ([UNK])
            parts.append(p)
        t = "".join(c for c in "".join(parts) if not 0xD800 <= ord(c) <= 0xDFFF)
        if rng.random() < 0.2:
            t = unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), t)
        yield t


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cnclip", required=True)
    ap.add_argument("--bin", default=os.path.join(here, "..", "build", "bin"))
    ap.add_argument("--vocab", default=os.path.join(here, "..", "..", "shared", "fixtures", "cnclip-tiny", "vocab.txt"))
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    spec = importlib.util.spec_from_file_location("bert_tokenizer", os.path.join(a.cnclip, "cn_clip", "clip", "bert_tokenizer.py"))
    bt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bt)
    ref_tok = bt.FullTokenizer(vocab_file=a.vocab, do_lower_case=True)
    cls, sep = ref_tok.vocab["[CLS]"], ref_tok.vocab["[SEP]"]
    words = [w for w in ref_tok.vocab if not w.startswith("[")]

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "texts.jsonl")
        refs, all_texts = [], []
        with open(path, "w", encoding="utf-8") as f:
            for t in texts(a.texts, a.seed, words):
                pieces = ref_tok.tokenize(t)
                ids = [cls] + ref_tok.convert_tokens_to_ids(pieces)[:50] + [sep]  # cn_clip's tokenize(), 52
                refs.append({"pieces": pieces, "ids": ids + [0] * (52 - len(ids)),
                             "preprocessed": t.lower().replace("“", "\"").replace("”", "\"")})
                all_texts.append(t)
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        env = dict(os.environ, CLIP_TOKENIZE_IN=path, CLIP_TOKENIZE_VOCAB=a.vocab)
        subprocess.run([os.path.join(a.bin, "clip_tests"), "[.tokenize-file]"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        ours = [json.loads(l) for l in open(path + ".out", encoding="utf-8")]
    if len(ours) != len(refs):
        print(f"FAIL: {len(ours)} results for {len(refs)} texts")
        return 1
    bad = 0
    for t, r, o in zip(all_texts, refs, ours):
        for k in ("pieces", "ids", "preprocessed"):
            if r[k] != o[k]:
                bad += 1
                if bad <= 10:
                    print(f"differs ({k}): {t!r}\n  cn_clip: {r[k]}\n  ours:    {o[k]}")
    pieces = sum(len(r["pieces"]) for r in refs)
    unk = sum(r["pieces"].count("[UNK]") for r in refs)
    print(f"texts={len(refs)} seed={a.seed} wordpieces={pieces} unk={unk} differences={bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
