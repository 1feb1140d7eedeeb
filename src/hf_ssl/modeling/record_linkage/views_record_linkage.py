"""`record_pair` view policy: two noisy observations of one record (entity).

Each observation = an augmented image crop + the record's text fields with random OCR / typing errors. Records
are generated from any image stream: `caption` (the example's text column, else a label template, CLIP core),
`name` (a pseudo-name derived from the image pixels: a stable identifier of the record) and `ink` (ink coverage in
percent, rounded). A dataset column `entity_id` (int) is passed through so several rows can be one entity."""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

import numpy as np

from ...training.data import register_view_policy
from ..clip.views_clip import ImageTextPolicy

SYLLABLES = ["ka", "to", "mi", "ra", "no", "se", "hi", "ku", "ya", "mo", "ri", "sa", "ta", "ne", "fu", "yo",
             "shi", "da", "be", "zo", "ga", "pe", "lu", "chi"]
KEYBOARD = "abcdefghijklmnopqrstuvwxyz0123456789"


def record_name(img) -> str:
    """Deterministic pseudo-name ("Karomi Tase") from the image's pixels: the record's identifier field."""
    digest = hashlib.sha1(np.asarray(img.convert("L"), dtype=np.uint8).tobytes()).digest()
    first = "".join(SYLLABLES[b % len(SYLLABLES)] for b in digest[:3])
    last = "".join(SYLLABLES[b % len(SYLLABLES)] for b in digest[3:5])
    return f"{first.capitalize()} {last.capitalize()}"


def ink_percent(img) -> int:
    """Ink coverage in percent (pixels darker/brighter than the mid grey, whichever is the minority), rounded to 5."""
    arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    frac = float(min((arr > 0.5).mean(), (arr <= 0.5).mean()))
    return int(round(frac * 100 / 5) * 5)


def corrupt_text(text: str, rng: np.random.Generator, rate: float) -> str:
    """OCR / typing noise: each character is, with probability `rate`, substituted, deleted, duplicated or swapped
    with its successor (uniformly)."""
    if rate <= 0:
        return text
    out = []
    chars = list(text)
    i = 0
    while i < len(chars):
        c = chars[i]
        if c != " " and rng.random() < rate:
            op = int(rng.integers(4))
            if op == 0:
                out.append(KEYBOARD[int(rng.integers(len(KEYBOARD)))])
            elif op == 1:
                pass  # deletion
            elif op == 2:
                out.extend([c, c])
            elif i + 1 < len(chars):
                out.extend([chars[i + 1], c])
                i += 1
            else:
                out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


@register_view_policy("record_pair")
class RecordPairPolicy(ImageTextPolicy):
    """Two observations of the same record: `pixel_values`, `input_ids`, `attention_mask` are 2-element lists."""

    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.fields = list(config.record_fields)
        self.typo_rate = float(config.typo_rate)

    def record_text(self, img, example: Optional[Dict[str, Any]], rng: np.random.Generator) -> str:
        parts = []
        for field in self.fields:
            if field == "caption":
                parts.append(self.caption(example, rng))
            elif field == "name":
                parts.append(f"name: {record_name(img)}")
            elif field == "ink":
                parts.append(f"ink: {ink_percent(img)}%")
        return " ; ".join(parts)

    def observation_texts(self, img, example, rng, n: int = 2):
        clean = self.record_text(img, example, rng)
        return [corrupt_text(clean, rng, self.typo_rate) for _ in range(n)]

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        ids, mask = self.tokenize(self.observation_texts(img, example, rng))
        out = {"pixel_values": [self.view(img, rng), self.view(img, rng)], "input_ids": [ids[0], ids[1]],
               "attention_mask": [mask[0], mask[1]]}
        if example and example.get("entity_id") is not None:
            out["entity_ids"] = int(example["entity_id"])
        return out
