"""Render docs/random_fields.png: Gaussian-random-field augmentations of a real photo (skimage's "chelsea").

Rows: local affine only, local colour only, both; columns: the original crop, then increasing strength. A last
row varies the length scale at fixed strength. Composed with PIL only (no matplotlib).

    python docs/make_random_fields_figure.py [--out docs/random_fields.png] [--size 128]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from hf_ssl.training.random_fields import random_field_augment

STRENGTHS = (0.5, 1.0, 2.0, 4.0)
LENGTH_SCALES = (0.05, 0.1, 0.25, 1.0)


def _photo(size: int) -> Image.Image:
    import skimage.data

    img = Image.fromarray(skimage.data.chelsea())  # 451 x 300 RGB
    side = min(img.size)
    left = (img.width - side) // 2
    return img.crop((left, 0, left + side, side)).resize((size, size), Image.BICUBIC)


def make_figure(out: str, size: int = 128, seed: int = 0) -> str:
    photo = _photo(size)
    label_w, head_h, pad = 150, 22, 4
    rows = [
        ("affine", [dict(affine_strength=s, color_strength=0.0) for s in STRENGTHS]),
        ("colour", [dict(affine_strength=0.0, color_strength=s) for s in STRENGTHS]),
        ("both", [dict(affine_strength=s, color_strength=s) for s in STRENGTHS]),
        ("length scale", [dict(affine_strength=2.0, color_strength=2.0, length_scale=ls) for ls in LENGTH_SCALES]),
    ]
    ncol = 1 + len(STRENGTHS)
    row_h = head_h + size + pad
    canvas = Image.new("RGB", (label_w + ncol * (size + pad), len(rows) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, settings) in enumerate(rows):
        band = i * row_h
        y = band + head_h
        draw.text((4, y + size // 2 - 6), name, fill="black")
        draw.text((label_w, band + 6), "original", fill="black")
        canvas.paste(photo, (label_w, y))
        for j, kw in enumerate(settings):
            kw = dict(kw)
            if name == "length scale":
                title = f"strength 2, length {kw['length_scale']:g}"
            else:
                title = f"strength {max(kw['affine_strength'], kw['color_strength']):g}"
            kw.setdefault("length_scale", 0.25)
            x = label_w + (j + 1) * (size + pad)
            draw.text((x, band + 6), title, fill="black")
            view = random_field_augment(photo, np.random.default_rng(seed), **kw)
            canvas.paste(view, (x, y))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    canvas.save(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "random_fields.png"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make_figure(args.out, args.size, args.seed))


if __name__ == "__main__":
    main()
