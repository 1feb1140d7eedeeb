"""ViLLA's data side: regions, attributes from caption phrases, and the stage-2 view policy (`"villa_regions"`).

* Regions: boxes `[x0, y0, x1, y1]` (pixels of the original image) from a data column (`config.region_column`), or a
  `region_grid x region_grid` grid of crops. The whole image is always added as the last region (official
  `create_train_dataset`: the image-text pair itself is one more "region" with the full caption).
* Attributes: the vocabulary words found in the caption's sentences (official `assign_sents_to_attributes`: a
  sentence mentions attribute `a` when it contains `" " + a`; sentences are split at periods, shorter than 4
  characters dropped). The built-in digits get a generated multi-sentence caption (DreamLIP's `describe_digit`).
* Region texts: the stage-1 assignments (`config.region_text_column`, one string per region, "" = no attribute,
  region dropped, as the official `valid_region_idx`), written by `write_region_attribute_assignments`. Without
  them every region falls back to the whole caption (the "no decomposition" baseline; see the package docstring).

The image is resized to `image_size` x `image_size` without cropping so the boxes stay valid (the released stage 2
uses no augmentation either)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ...training.data import LABEL_KEYS, register_view_policy, to_normalized_tensor
from ..clip.views_clip import TEXT_KEYS, ImageTextPolicy
from ..dreamlip.views_dreamlip import describe_digit


def caption_sentences(text: str) -> List[str]:
    """Sentences of a caption as the released mapping code splits them (at periods, keeping those > 3 chars)."""
    return [s.strip() for s in text.split(".") if len(s) > 3]


def find_attributes(text: str, attribute_names: Sequence[str]) -> List[str]:
    """Attributes (in vocabulary order) mentioned by some sentence of `text` (`" " + a` in the lowercased
    sentence, the released rule; the sentence is prefixed by a space so a leading word counts too)."""
    sentences = [" " + s.lower() for s in caption_sentences(text)]
    return [a for a in attribute_names if any(f" {a.lower()}" in s for s in sentences)]


def attribute_sentence(text: str, attribute: str, rng: np.random.Generator) -> str:
    """One sentence of `text` that mentions `attribute` (a random one when several do, as released)."""
    sentences = caption_sentences(text)
    hits = [s for s in sentences if f" {attribute.lower()}" in " " + s.lower()]
    if not hits:
        raise ValueError(f"no sentence of the caption mentions attribute {attribute!r}")
    return hits[int(rng.integers(len(hits)))]


def grid_boxes(width: float, height: float, grid: int) -> List[List[float]]:
    """`grid x grid` boxes `[x0, y0, x1, y1]` tiling a `width x height` image, row-major."""
    xs = np.linspace(0, width, grid + 1)
    ys = np.linspace(0, height, grid + 1)
    return [[float(xs[j]), float(ys[i]), float(xs[j + 1]), float(ys[i + 1])] for i in range(grid) for j in range(grid)]


@register_view_policy("villa_regions")
class ViLLARegionPolicy(ImageTextPolicy):
    """`pixel_values [C, S, S]`, `region_boxes [R + 1, 4]` (pixels of the resized image, whole image last),
    `region_valid [R + 1]`, `input_ids` / `attention_mask` `[R + 1, L]` (R = `max_regions`, padded)."""

    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.size = int(config.image_size)
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def full_caption(self, img, example: Optional[Dict[str, Any]], rng) -> str:
        cfg = self.config
        if example:
            keys = TEXT_KEYS if cfg.caption_column == "auto" else (cfg.caption_column,)
            for key in keys:
                value = example.get(key)
                if isinstance(value, (list, tuple)):
                    value = " . ".join(v for v in value if isinstance(v, str))
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

    def regions(self, img, example: Optional[Dict[str, Any]]) -> List[List[float]]:
        """Boxes in original-image pixels (data column or grid), at most `max_regions`."""
        cfg = self.config
        boxes = example.get(cfg.region_column) if example else None
        if cfg.region_source == "data" and boxes is None:
            raise ValueError(f"region_source='data' but the example has no {cfg.region_column!r} column")
        if boxes is None or cfg.region_source == "grid":
            boxes = grid_boxes(img.width, img.height, int(cfg.region_grid))
        boxes = [list(map(float, b)) for b in boxes]
        if any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in boxes):
            raise ValueError(f"region boxes must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {boxes}")
        return boxes[: int(cfg.max_regions)]

    def region_texts(self, example: Optional[Dict[str, Any]], caption: str, count: int) -> List[str]:
        texts = example.get(self.config.region_text_column) if example else None
        if texts is None:
            return [caption] * count  # no stage-1 assignment: the whole caption for every region
        texts = [t if isinstance(t, str) else "" for t in texts][:count]
        if len(texts) != count:
            raise ValueError(f"{len(texts)} region texts for {count} regions")
        return texts

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        r = int(self.config.max_regions)
        boxes = self.regions(img, example)
        caption = self.full_caption(img, example, rng)
        texts = self.region_texts(example, caption, len(boxes))
        sx, sy = self.size / img.width, self.size / img.height
        scaled = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]
        valid = [bool(t.strip()) for t in texts]
        pad = r - len(scaled)
        scaled += [[0.0, 0.0, float(self.size), float(self.size)]] * pad
        texts += [""] * pad
        valid += [False] * pad
        scaled.append([0.0, 0.0, float(self.size), float(self.size)])  # the whole image with the full caption
        texts.append(caption)
        valid.append(True)
        ids, mask = self.tokenize(texts)
        pixels = to_normalized_tensor(img.resize((self.size, self.size), Image.BICUBIC), self._mean, self._std)
        return {"pixel_values": pixels, "region_boxes": torch.tensor(scaled, dtype=torch.float32),
                "region_valid": torch.tensor(valid), "input_ids": ids, "attention_mask": mask}
