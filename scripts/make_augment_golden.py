#!/usr/bin/python3
"""Reference outputs for the training augmentation (lib/clip/augment.*), computed with Pillow.

Run with Debian's /usr/bin/python3 (Pillow 9.4, numpy):
    /usr/bin/python3 scripts/make_augment_golden.py tests/data/augment

Writes small PNGs and cases.json into the output folder:
  src_*.png    synthetic source images (RGB, L, P, RGBA; 28..48 px)
  op_*.png     one AutoAugment operation applied by Pillow to a source image
  pipe_*.png   the whole training transform for one (seed, epoch, index)

The pipeline is cn_clip's `--use-augment` transform (timm create_transform with scale (0.9, 1.0),
auto_augment 'original', bicubic): RandomResizedCrop -> horizontal flip -> convert('RGB') ->
AutoAugment.  Its random draws come from the same counter-based generator as the C++ code
(AugmentRng), re-implemented below, so that both sides make the same decisions; every pixel
operation is done by Pillow itself.
"""
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
FILL = (123, 117, 104)  # round(255 * CLIP mean)


def mix64(z):
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class Rng:
    """Mirror of clip::AugmentRng (splitmix64 stream keyed by seed, epoch and sample index)."""

    def __init__(self, seed, epoch, index):
        k = mix64(seed + 0x6A09E667F3BCC909)
        k = mix64(k + epoch + 0xBB67AE8584CAA73B)
        k = mix64(k + index + 0x3C6EF372FE94F82B)
        self.state = k

    def next_u64(self):
        self.state = (self.state + GOLDEN) & MASK64
        return mix64(self.state)

    def uniform01(self):
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def uniform(self, a, b):
        return a + (b - a) * self.uniform01()

    def randint(self, lo, hi):  # inclusive, like random.randint
        n = hi - lo + 1
        return lo + ((self.next_u64() * n) >> 64)


# (name, probability, magnitude) pairs of AutoAugment's ImageNet policy ('original' in timm).
POLICY = [
    [('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)],
    [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)],
    [('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)],
    [('Equalize', 0.4, 4), ('Rotate', 0.8, 8)],
    [('Solarize', 0.6, 3), ('Equalize', 0.6, 7)],
    [('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)],
    [('Rotate', 0.2, 3), ('Solarize', 0.6, 8)],
    [('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)],
    [('Rotate', 0.8, 8), ('Color', 0.4, 0)],
    [('Rotate', 0.4, 9), ('Equalize', 0.6, 2)],
    [('Equalize', 0.0, 7), ('Equalize', 0.8, 8)],
    [('Invert', 0.6, 4), ('Equalize', 1.0, 8)],
    [('Color', 0.6, 4), ('Contrast', 1.0, 8)],
    [('Rotate', 0.8, 8), ('Color', 1.0, 2)],
    [('Color', 0.8, 8), ('Solarize', 0.8, 7)],
    [('Sharpness', 0.4, 7), ('Invert', 0.6, 8)],
    [('ShearX', 0.6, 5), ('Equalize', 1.0, 9)],
    [('Color', 0.4, 0), ('Equalize', 0.6, 3)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)],
    [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Invert', 0.6, 4), ('Equalize', 1.0, 8)],
    [('Color', 0.6, 4), ('Contrast', 1.0, 8)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)],
]


def level_arg(name, m, rng):
    """timm's magnitude -> argument mapping (level in 0..10); rotate and shear draw a random sign."""
    m = max(0.0, min(float(m), 10.0))
    if name == 'Rotate':
        v = (m / 10.0) * 30.0
        return -v if rng.uniform01() > 0.5 else v
    if name == 'ShearX':
        v = (m / 10.0) * 0.3
        return -v if rng.uniform01() > 0.5 else v
    if name == 'PosterizeOriginal':
        return int((m / 10.0) * 4) + 4
    if name == 'Solarize':
        return int((m / 10.0) * 256)
    if name in ('Color', 'Contrast', 'Sharpness'):
        return (m / 10.0) * 1.8 + 0.1
    return 0.0


def apply_op(img, name, arg):
    if name == 'Rotate':
        return img.rotate(arg, resample=Image.BICUBIC, fillcolor=FILL)
    if name == 'ShearX':
        return img.transform(img.size, Image.AFFINE, (1, arg, 0, 0, 1, 0), resample=Image.BICUBIC, fillcolor=FILL)
    if name == 'PosterizeOriginal':
        return img if arg >= 8 else ImageOps.posterize(img, arg)
    if name == 'Solarize':
        return ImageOps.solarize(img, arg)
    if name == 'AutoContrast':
        return ImageOps.autocontrast(img)
    if name == 'Equalize':
        return ImageOps.equalize(img)
    if name == 'Invert':
        return ImageOps.invert(img)
    if name == 'Color':
        return ImageEnhance.Color(img).enhance(arg)
    if name == 'Contrast':
        return ImageEnhance.Contrast(img).enhance(arg)
    if name == 'Sharpness':
        return ImageEnhance.Sharpness(img).enhance(arg)
    raise ValueError(name)


def plan(width, height, seed, epoch, index, scale=(0.9, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5):
    """Draws every random decision of the transform, in timm's order, without touching pixels."""
    rng = Rng(seed, epoch, index)
    area = width * height
    box = None
    for _ in range(10):
        target_area = rng.uniform(scale[0], scale[1]) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            y = rng.randint(0, height - h)
            x = rng.randint(0, width - w)
            box = (x, y, w, h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w = width
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = height
            w = int(round(h * max(ratio)))
        else:
            w, h = width, height
        box = ((width - w) // 2, (height - h) // 2, w, h)
    flip = rng.uniform01() < hflip
    sub = rng.randint(0, len(POLICY) - 1)
    steps = []
    for name, prob, mag in POLICY[sub]:
        if prob < 1.0 and rng.uniform01() > prob:
            continue
        steps.append((name, level_arg(name, mag, rng)))
    return {'crop': list(box), 'flip': flip, 'sub_policy': sub, 'steps': [[n, a] for n, a in steps]}


def run_pipeline(img, p, resolution):
    x, y, w, h = p['crop']
    out = img.crop((x, y, x + w, y + h)).resize((resolution, resolution), Image.BICUBIC)
    if p['flip']:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    out = out.convert('RGB')
    for name, arg in p['steps']:
        out = apply_op(out, name, arg)
    return out


def synthetic_rgb(w, h, seed, lo=0, hi=255):
    """Smooth gradients, a few hard edges and mild noise: exercises interpolation and histograms."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 0.5 + 0.5 * np.sin(xx / w * 5.0 + seed)
    g = 0.5 + 0.5 * np.cos(yy / h * 4.0 - seed * 0.5)
    b = ((xx + 2 * yy) / (w + 2 * h))
    img = np.stack([r, g, b], axis=-1)
    cx, cy = rs.uniform(0.3, 0.7) * w, rs.uniform(0.3, 0.7) * h
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.2 * min(w, h)) ** 2
    img[disk] = rs.uniform(0, 1, 3)
    img[: h // 6, :] = img[: h // 6, :] * 0.3
    img = img + rs.normal(0, 0.04, img.shape)
    img = np.clip(img, 0, 1) * (hi - lo) + lo
    return Image.fromarray(np.round(img).astype(np.uint8), 'RGB')


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else 'tests/data/augment'
    os.makedirs(out_dir, exist_ok=True)

    sources = {
        'rgb32': synthetic_rgb(32, 32, 1),
        'low32': synthetic_rgb(32, 32, 2, lo=70, hi=170),   # low contrast: autocontrast/equalize matter
        'rgb48x36': synthetic_rgb(48, 36, 3),
        'rgb30x44': synthetic_rgb(30, 44, 4),
        'gray40': synthetic_rgb(40, 40, 5).convert('L'),
        'pal36x28': synthetic_rgb(36, 28, 6).quantize(colors=24),
        'rgba28x40': Image.merge('RGBA', list(synthetic_rgb(28, 40, 7).split()) +
                                 [synthetic_rgb(28, 40, 8).convert('L')]),
        'wide64x20': synthetic_rgb(64, 20, 9),  # aspect 3.2: RandomResizedCrop falls back to a centre crop
    }
    for name, im in sources.items():
        im.save(os.path.join(out_dir, f'src_{name}.png'), optimize=True)

    # Every argument the 'original' policy can produce, plus a few beyond it.
    op_cases = []
    for src in ('rgb32', 'low32'):
        args = {
            'PosterizeOriginal': [4, 6, 7],
            'Solarize': [76, 102, 128, 179, 204],
            'AutoContrast': [0],
            'Equalize': [0],
            'Invert': [0],
            'Color': [0.1, 0.46, 0.82, 1.54],
            'Contrast': [0.1, 1.54],
            'Sharpness': [0.1, 1.36, 1.9],
            'Rotate': [27.0, -27.0, 24.0, -24.0, 9.0, -9.0],
            'ShearX': [0.15, -0.15],
        }
        if src == 'low32':  # the low-contrast source only for the histogram and enhance ops
            args = {k: v for k, v in args.items() if k in ('AutoContrast', 'Equalize', 'Contrast', 'Color')}
        for name, vals in args.items():
            for v in vals:
                fn = f'op_{src}_{name}_{v}.png'.replace('-', 'm')
                apply_op(sources[src], name, v).save(os.path.join(out_dir, fn), optimize=True)
                op_cases.append({'source': f'src_{src}.png', 'op': name, 'arg': v, 'expected': fn})
    # Rotation on a non-square image (centre at a half pixel), shear on a tall one.
    for src, name, v in (('rgb48x36', 'Rotate', 24.0), ('rgb30x44', 'Rotate', -27.0), ('rgb30x44', 'ShearX', 0.15)):
        fn = f'op_{src}_{name}_{v}.png'.replace('-', 'm')
        apply_op(sources[src], name, v).save(os.path.join(out_dir, fn), optimize=True)
        op_cases.append({'source': f'src_{src}.png', 'op': name, 'arg': v, 'expected': fn})

    # Whole pipeline: for each of the 25 sub-policies, the first sample index that picks it with both of its
    # ops applied (or as many as its probabilities allow), rotating through the source images.
    resolution = 32
    seed, epoch = 20240, 3
    pipe_sources = ['rgb48x36', 'rgb30x44', 'gray40', 'pal36x28', 'rgba28x40', 'wide64x20', 'rgb32']
    pipe_cases = []
    for sub in range(len(POLICY)):
        want = sum(1 for _, prob, _ in POLICY[sub] if prob > 0.0)
        src = pipe_sources[sub % len(pipe_sources)]
        im = sources[src]
        for index in range(100000):
            p = plan(im.width, im.height, seed, epoch, index)
            if p['sub_policy'] == sub and len(p['steps']) == want:
                break
        else:
            raise RuntimeError(f'no index found for sub-policy {sub}')
        fn = f'pipe_{sub:02d}.png'
        run_pipeline(im, p, resolution).save(os.path.join(out_dir, fn), optimize=True)
        pipe_cases.append({'source': f'src_{src}.png', 'seed': seed, 'epoch': epoch, 'index': index,
                           'plan': p, 'expected': fn})
    # Plans only (no pixels): pins the random stream, crop sampling and the fallback.
    plan_cases = []
    for (w, h) in ((224, 224), (640, 480), (50, 300), (300, 50)):
        for index in range(6):
            plan_cases.append({'width': w, 'height': h, 'seed': 1, 'epoch': 0, 'index': index,
                               'plan': plan(w, h, 1, 0, index)})
    rng = Rng(1, 2, 3)
    stream = [str(rng.next_u64()) for _ in range(4)]

    meta = {
        'pillow': Image.__version__,
        'resolution': resolution,
        'fill': list(FILL),
        'rng_stream_1_2_3': stream,
        'ops': op_cases,
        'pipeline': pipe_cases,
        'plans': plan_cases,
    }
    with open(os.path.join(out_dir, 'cases.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f'{len(op_cases)} op cases, {len(pipe_cases)} pipeline cases, {len(plan_cases)} plans, '
          f'{len(os.listdir(out_dir))} files, {total} bytes in {out_dir}')


if __name__ == '__main__':
    main()
