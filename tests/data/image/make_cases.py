#!/usr/bin/python3
"""Regenerates the small images in this folder and expected.tsv, the Pillow reference for them.

Run with a Python that has numpy and Pillow 9.4 (Debian's /usr/bin/python3):
    /usr/bin/python3 tests/data/image/make_cases.py tests/data/image
Each expected.tsv line: file, Pillow mode after Image.open, width, height, sha256 of the decoded
pixels (mode "1" as 0/255 bytes), then pairs "WxH=sha256" of
Image.resize((W, H), BICUBIC).convert('RGB').tobytes() - the cn_clip eval resize.
"""
import hashlib
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rng = np.random.RandomState(20240611)


def pattern(w, h, c):
    """Gradients, a hard edge and noise: exercises the filter's negative lobes and clipping."""
    y, x = np.mgrid[0:h, 0:w]
    chans = []
    for k in range(c):
        v = (x * 255 // max(w - 1, 1) + y * (37 + 11 * k)) % 256
        v = np.where((x // 5 + y // 7 + k) % 3 == 0, 255 - v, v)
        v = np.clip(v + rng.randint(-20, 21, (h, w)), 0, 255)
        chans.append(v)
    return np.stack(chans, -1).astype(np.uint8)


def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def raw_png(w, h, bit_depth, color_type, rows, plte=None, trns=None, interlace=False, pixels=None):
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 1 if interlace else 0)
    if interlace:  # Adam7 passes of whole-byte pixels (pixels: HxWxC uint8 array)
        data = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]:
            sub = pixels[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                data += b"".join(b"\0" + r.tobytes() for r in sub)
    else:
        data = b"".join(b"\0" + r for r in rows)
    s = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if plte is not None:
        s += chunk(b"PLTE", plte)
    if trns is not None:
        s += chunk(b"tRNS", trns)
    return s + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b"")


def pack_row(vals, bd):
    per = 8 // bd
    out = bytearray()
    for i in range(0, len(vals), per):
        b = 0
        for j in range(per):
            if i + j < len(vals):
                b |= int(vals[i + j]) << (8 - bd * (j + 1))
        out.append(b)
    return bytes(out)


def save(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


cases = {}
w, h = 45, 31
cases["jpeg_progressive.jpg"] = save(Image.fromarray(pattern(w, h, 3), "RGB"), "JPEG", quality=85, progressive=True)
cases["jpeg_422.jpg"] = save(Image.fromarray(pattern(38, 27, 3), "RGB"), "JPEG", quality=75, subsampling=1)
cases["jpeg_gray.jpg"] = save(Image.fromarray(pattern(29, 40, 1)[..., 0], "L"), "JPEG", quality=95)
cases["jpeg_cmyk.jpg"] = save(Image.fromarray(pattern(26, 22, 4), "CMYK"), "JPEG", quality=90)
la = pattern(37, 29, 2)
la[:8, :10, 1] = 0          # fully transparent block
la[-6:, :, 1] = 255         # opaque strip
cases["png_la.png"] = save(Image.fromarray(la, "LA"), "PNG")
rgba = pattern(33, 26, 4)
rgba[5:15, 5:20, 3] = 0
cases["png_rgba_interlaced.png"] = raw_png(33, 26, 8, 6, None, interlace=True, pixels=rgba)
bits = (pattern(33, 21, 1)[..., 0] > 127).astype(np.uint8)
cases["png_1bit.png"] = raw_png(33, 21, 1, 0, [pack_row(r, 1) for r in bits])
g2 = pattern(27, 19, 1)[..., 0] >> 6
cases["png_gray2.png"] = raw_png(27, 19, 2, 0, [pack_row(r, 2) for r in g2])
g4 = pattern(23, 30, 1)[..., 0] >> 4
cases["png_gray4_trns.png"] = raw_png(23, 30, 4, 0, [pack_row(r, 4) for r in g4], trns=b"\x00\x03")
g8 = pattern(31, 18, 1)[..., 0]
cases["png_gray_trns.png"] = raw_png(31, 18, 8, 0, [r.tobytes() for r in g8], trns=b"\x00\x80")
p4 = pattern(25, 21, 1)[..., 0] >> 4  # indices 0..15, only 5 palette entries: the rest is Pillow's grey ramp
cases["png_p4_short_palette.png"] = raw_png(25, 21, 4, 3, [pack_row(r, 4) for r in p4],
                                            plte=bytes([200, 10, 10, 10, 200, 10, 10, 10, 200, 240, 240, 0, 0, 0, 0]),
                                            trns=b"\x00\x80")
p8 = pattern(40, 12, 1)[..., 0]
cases["png_p8.png"] = raw_png(40, 12, 8, 3, [r.tobytes() for r in p8], plte=bytes(rng.randint(0, 256, 768).astype(np.uint8)))
rgb16 = (pattern(21, 17, 3).astype(np.uint16) * 257 + rng.randint(0, 256, (17, 21, 3))).astype(">u2")
cases["png_rgb16.png"] = raw_png(21, 17, 16, 2, [r.tobytes() for r in rgb16])
la16 = (pattern(19, 23, 2).astype(np.uint16) * 257).astype(">u2")
cases["png_la16.png"] = raw_png(19, 23, 16, 4, [r.tobytes() for r in la16])
cases["bmp_rgb.bmp"] = save(Image.fromarray(pattern(22, 15, 3), "RGB"), "BMP")
cases["ppm_rgb.ppm"] = save(Image.fromarray(pattern(18, 25, 3), "RGB"), "PPM")
# WebP (libwebp) and GIF (giflib), read from photo folders
cases["webp_lossless.webp"] = save(Image.fromarray(pattern(27, 22, 3), "RGB"), "WEBP", lossless=True)
cases["webp_lossy.webp"] = save(Image.fromarray(pattern(34, 19, 3), "RGB"), "WEBP", quality=80)
wa = pattern(24, 20, 4)
wa[3:9, 4:12, 3] = 0
cases["webp_alpha.webp"] = save(Image.fromarray(wa, "RGBA"), "WEBP", lossless=True)
cases["gif_p.gif"] = save(Image.fromarray(pattern(31, 23, 3), "RGB").quantize(64), "GIF")
# Files that end early where Pillow still decodes: Pillow stops once the image is whole, before the
# last IDAT's CRC, so a file cut inside that CRC, or an IDAT whose length runs past the end of the
# file (its CRC and IEND never read), decodes in full.
g8b = pattern(27, 19, 1)[..., 0]
whole = raw_png(27, 19, 8, 0, [r.tobytes() for r in g8b])
iend = len(whole) - 12
cases["png_cut_in_idat_crc.png"] = whole[:iend - 2]
idat_len_at = 8 + 25
idat_len = struct.unpack(">I", whole[idat_len_at:idat_len_at + 4])[0]
cases["png_idat_past_end.png"] = (whole[:idat_len_at] + struct.pack(">I", idat_len + 12) +
                                  whole[idat_len_at + 4:iend - 4] + whole[iend:])
# A BMP whose last row lacks its padding (Pillow stops at the last pixel), and a GIF whose first frame
# reaches past the logical screen (Pillow widens the screen to hold it).
cases["bmp_no_last_padding.bmp"] = cases["bmp_rgb.bmp"][:-2]
gif = bytearray(cases["gif_p.gif"])
pos = 13 + (3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0)
while gif[pos] == 0x21:  # extensions: label, then sub-blocks up to an empty one
    pos += 2
    while gif[pos]:
        pos += gif[pos] + 1
    pos += 1
assert gif[pos] == 0x2C
gif[pos + 1:pos + 5] = struct.pack("<HH", 20, 9)  # left, top
cases["gif_frame_past_screen.gif"] = bytes(gif)
# Animated WebP: Pillow opens the first frame on the canvas.
frames = [Image.fromarray(pattern(26, 18, 3), "RGB"), Image.fromarray(255 - pattern(26, 18, 3), "RGB")]
cases["webp_animated.webp"] = save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=100)
aframes = [Image.fromarray(pattern(22, 20, 4), "RGBA"), Image.fromarray(pattern(22, 20, 4)[::-1].copy(), "RGBA")]
cases["webp_animated_alpha.webp"] = save(aframes[0], "WEBP", save_all=True, append_images=aframes[1:], quality=70,
                                         duration=50)

def write_and_open(name, data):
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


lines = []
for name, data in cases.items():
    im = write_and_open(name, data)
    native = im.convert("L").tobytes() if im.mode == "1" else im.tobytes()
    iw, ih = im.size
    fields = [name, im.mode, str(iw), str(ih), hashlib.sha256(native).hexdigest()]
    for tw, th in [(224, 224), (max(1, iw // 3), ih * 2 + 1), (iw, max(1, ih // 2))]:
        r = im.resize((tw, th), Image.BICUBIC).convert("RGB")
        fields.append(f"{tw}x{th}={hashlib.sha256(r.tobytes()).hexdigest()}")
    lines.append("\t".join(fields))
with open(os.path.join(out_dir, "expected.tsv"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {len(cases)} images and expected.tsv to {out_dir}")

# EXIF orientation (exif.tsv): file, the orientation Pillow reads (0: none), then what
# ImageOps.exif_transpose gives: width, height, sha256 of its pixels, and sha256 of its cn_clip eval
# squash (resize((224, 224), BICUBIC).convert('RGB')).
from PIL import ImageOps


def exif_block(orientation, order="MM", type_=3):
    le = order == "II"
    pk = (lambda f, *v: struct.pack("<" + f, *v)) if le else (lambda f, *v: struct.pack(">" + f, *v))
    value = pk("HH", orientation, 0) if type_ == 3 else pk("I", orientation)
    return b"Exif\0\0" + order.encode() + pk("H", 42) + pk("I", 8) + pk("H", 1) + pk("HHI", 0x0112, type_, 1) + value + pk("I", 0)


def with_app1(jpeg, *blocks):  # APP1 segments right after SOI
    segs = b"".join(b"\xff\xe1" + struct.pack(">H", len(b) + 2) + b for b in blocks)
    return jpeg[:2] + segs + jpeg[2:]


exif_cases = {}
plain_jpeg = save(Image.fromarray(pattern(37, 23, 3), "RGB"), "JPEG", quality=92)
for o in range(1, 9):
    exif_cases[f"exif_jpeg_o{o}.jpg"] = with_app1(plain_jpeg, exif_block(o))
exif_cases["exif_jpeg_o3_long_le.jpg"] = with_app1(plain_jpeg, exif_block(3, "II", 4))
exif_cases["exif_jpeg_two_app1.jpg"] = with_app1(plain_jpeg, exif_block(6), exif_block(3))
exif_cases["exif_jpeg_o9.jpg"] = with_app1(plain_jpeg, exif_block(9))
exif_cases["exif_jpeg_broken_ifd.jpg"] = with_app1(plain_jpeg, exif_block(6)[:-14])
def pillow_exif(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


exif_cases["exif_png_rgba_o6.png"] = save(Image.fromarray(pattern(29, 17, 4), "RGBA"), "PNG", exif=pillow_exif(6))
exif_cases["exif_png_p_o5.png"] = save(Image.fromarray(pattern(21, 26, 3), "RGB").quantize(32), "PNG", exif=pillow_exif(5))
exif_cases["exif_webp_o8.webp"] = save(Image.fromarray(pattern(31, 19, 3), "RGB"), "WEBP", lossless=True, exif=pillow_exif(8))
lines = []
for name, data in exif_cases.items():
    im = write_and_open(name, data)
    up = ImageOps.exif_transpose(im)
    o = im.getexif().get(0x0112, 0)
    r = up.resize((224, 224), Image.BICUBIC).convert("RGB")
    lines.append("\t".join([name, str(o), str(up.size[0]), str(up.size[1]), hashlib.sha256(up.tobytes()).hexdigest(),
                            hashlib.sha256(r.tobytes()).hexdigest()]))
with open(os.path.join(out_dir, "exif.tsv"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {len(exif_cases)} images and exif.tsv to {out_dir}")
