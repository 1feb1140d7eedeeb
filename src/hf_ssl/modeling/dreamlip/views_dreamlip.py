"""DreamLIP's view policy (`"long_caption"`): one augmented image, its raw (short) caption and `num_subcaptions`
sub-captions sampled from its long caption, all tokenized: `input_ids` / `attention_mask` `[1 + K, L]` per image.

Long captions are split into sentences at newlines, `</s>` and periods (the official `split_caption`); K
sub-captions are drawn without replacement when the caption has at least K sentences, with replacement otherwise
(official `draw_numbers`); `subcaption_merge > 1` joins that many consecutive sentences into one sub-caption.

Data without a long caption (e.g. the built-in digits) gets a generated one: `describe_digit` writes one sentence per
property measured on the image (class, stroke thickness, slant, position, shape, ink amount), so the sub-captions
carry different information, like the MLLM recaptions of the paper."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import numpy as np

from ...training.data import LABEL_KEYS, register_view_policy
from ..clip.views_clip import ImageTextPolicy

LONG_CAPTION_KEYS = ("long_caption", "long_captions", "long_text", "dense_caption", "synthetic_caption")


def split_caption(text: str) -> List[str]:
    """Sentences of a long caption (split at newlines, `</s>` and periods), stripped, empty ones dropped."""
    return [s.strip() for s in re.split(r"\n|</s>|[.]", text) if s.strip()]


def sample_subcaptions(sentences: List[str], k: int, rng: np.random.Generator, merge: int = 1) -> List[str]:
    """K sub-captions: without replacement when there are enough (merged) sentences, with replacement otherwise."""
    if not sentences:
        return [""] * k
    merge = max(1, min(merge, len(sentences)))
    units = [". ".join(sentences[i:i + merge]) for i in range(len(sentences) - merge + 1)]
    idx = rng.choice(len(units), size=k, replace=len(units) < k)
    return [units[int(i)] for i in idx]


def digit_properties(img) -> Dict[str, float]:
    """Measured properties of a (bright-on-dark) digit image: ink fraction, stroke thickness (ink area / skeleton
    length proxy), slant (second-moment skew), centroid and bounding-box aspect."""
    a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    ink = a > 0.35
    h, w = a.shape
    if not ink.any():
        return {"ink": 0.0, "thickness": 0.0, "slant": 0.0, "cx": 0.5, "cy": 0.5, "aspect": 1.0}
    ys, xs = np.nonzero(ink)
    cy, cx = ys.mean() / (h - 1), xs.mean() / (w - 1)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    slant = float((dx * dy).sum() / max((dy * dy).sum(), 1e-6))  # x shift per unit of y (image y points down)
    rows = ink.sum(1)
    thickness = float(rows[rows > 0].mean() / max(1, (ink.sum(0) > 0).sum()) * 10)
    bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return {"ink": float(ink.mean()), "thickness": thickness, "slant": slant, "cx": float(cx), "cy": float(cy),
            "aspect": float(bh / bw)}


def describe_digit(img, name: str) -> str:
    """A multi-sentence caption of a digit image from its class name and measured properties."""
    p = digit_properties(img)
    sentences = [f"The image shows the handwritten digit {name}"]
    sentences.append("The strokes are thick and bold" if p["thickness"] > 4.5 else
                     "The strokes are thin" if p["thickness"] < 3.0 else "The strokes have a medium width")
    sentences.append("The digit leans to the left" if p["slant"] > 0.15 else
                     "The digit leans to the right" if p["slant"] < -0.15 else "The digit stands upright")
    horiz = "left" if p["cx"] < 0.42 else "right" if p["cx"] > 0.58 else "center"
    vert = "top" if p["cy"] < 0.42 else "bottom" if p["cy"] > 0.58 else "middle"
    sentences.append(f"It is placed near the {vert} {horiz} of the frame" if (horiz, vert) != ("center", "middle")
                     else "It is centered in the frame")
    sentences.append("The digit is tall and narrow" if p["aspect"] > 1.6 else
                     "The digit is wide" if p["aspect"] < 1.0 else "The digit has balanced proportions")
    sentences.append("A lot of white ink covers the dark background" if p["ink"] > 0.3 else
                     "Only a little white ink is on the dark background")
    return ". ".join(sentences) + "."


@register_view_policy("long_caption")
class LongCaptionPolicy(ImageTextPolicy):
    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.k = int(config.num_subcaptions)
        self.merge = int(config.subcaption_merge)
        self.long_column = config.long_caption_column

    def long_caption(self, img, example: Optional[Dict[str, Any]], rng) -> str:
        if example:
            keys = LONG_CAPTION_KEYS if self.long_column == "auto" else (self.long_column,)
            for key in keys:
                value = example.get(key)
                if isinstance(value, (list, tuple)):  # several long captions (several MLLMs): use all sentences
                    value = "\n".join(v for v in value if isinstance(v, str))
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if isinstance(value, str) and value.strip():
                    return value
            for key in LABEL_KEYS:
                if example.get(key) is not None:
                    label = int(example[key])
                    name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
                    return describe_digit(img, name)
        return self.caption(example, rng)

    def texts(self, img, rng, example=None) -> List[str]:
        short = self.caption(example, rng)
        subs = sample_subcaptions(split_caption(self.long_caption(img, example, rng)), self.k, rng, self.merge)
        return [short] + subs

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        ids, mask = self.tokenize(self.texts(img, rng, example))
        return {"pixel_values": self.view(img, rng), "input_ids": ids, "attention_mask": mask}
