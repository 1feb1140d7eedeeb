"""The `"composed_triplet"` view policy: (reference image, relative caption, target image) triplets.

Sources, in order of preference:

* Triplet data (CIRR / FashionIQ style): the reference is the main image column, the target a second image column
  (`target`, `target_image`, `image2`, ... or `augmentation["target_column"]`), the relative caption a text column
  (`caption`, `relative_caption`, `text`, ...; a list is sampled from).
* Labelled classification data (the built-in digits), "class edits": the target is a recently seen image of another
  class (a small per-class buffer of this worker) and the caption names it, e.g. "change it to a seven."
  (templates `relative_caption_templates`).
* Any image, "geometric edits": the target is the reference rotated by 90 / 180 / 270 degrees, mirrored, flipped
  upside down or zoomed in, with the caption saying so ("rotate it by 90 degrees clockwise."). These need the
  reference image to be solved; class edits need the text. With labels, the edit kind is drawn uniformly from
  `augmentation["edit_kinds"]` (default both).

Output: `pixel_values` (reference), `target_pixel_values`, `input_ids` / `attention_mask` (the caption, padded to
`caption_length`), `target_ids` (content id of the target image, so duplicated targets in a batch are known).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from PIL import Image, ImageOps

from ...training.data import LABEL_KEYS, ViewPolicy, decode_image, register_view_policy
from ..rpp.views_rpp import image_content_id

CAPTION_KEYS = ("relative_caption", "caption", "captions", "text", "modification", "condition", "sentence")
TARGET_KEYS = ("target", "target_image", "image2", "image_2", "candidate", "target_img")

# short captions (they are tokenized by the small offline BPE): edit name -> (caption, transform)
GEOMETRIC_EDITS = {
    "rotate90": ("rotate it right.", lambda im: im.transpose(Image.ROTATE_270)),
    "rotate180": ("turn it upside down.", lambda im: im.transpose(Image.ROTATE_180)),
    "rotate270": ("rotate it left.", lambda im: im.transpose(Image.ROTATE_90)),
    "mirror": ("mirror it.", ImageOps.mirror),
    "flip": ("flip it vertically.", ImageOps.flip),
    "zoom": ("zoom in.", lambda im: im.crop((im.width // 4, im.height // 4, im.width - im.width // 4,
                                             im.height - im.height // 4)).resize(im.size)),
}


@register_view_policy("composed_triplet")
class ComposedTripletPolicy(ViewPolicy):
    wants_example = True
    pair_image_key = "auto"  # SSLViewDataset hands over a second image column (the target) when there is one

    def __init__(self, config):
        super().__init__(config)
        from ...training.text import load_tokenizer

        a = self.aug
        self.view = self.augment(config.image_size, a.get("crop_scale", (0.9, 1.0)))
        self.tokenizer = load_tokenizer(config.tokenizer_name_or_path, vocab_size=config.tokenizer_vocab_size,
                                        context_length=config.context_length)
        self.caption_length = int(config.caption_length)
        self.templates = list(config.relative_caption_templates)
        self.class_names = list(config.class_names)
        self.edit_kinds = list(a.get("edit_kinds", ["class", "geometric"]))
        self.geometric = list(a.get("geometric_edits", list(GEOMETRIC_EDITS)))
        self.buffer_per_class = int(a.get("target_buffer_per_class", 8))
        self.buffer: Dict[int, List[Image.Image]] = {}
        self.target_column = a.get("target_column")
        self.has_target_column = False

    def set_pair_column(self, key: Optional[str]) -> None:
        self.has_target_column = key is not None

    # -- caption / target choice ----------------------------------------------------------------------------
    def _text(self, example, rng) -> Optional[str]:
        for key in CAPTION_KEYS:
            value = (example or {}).get(key)
            if isinstance(value, (list, tuple)):
                value = " and ".join(str(v) for v in value) if key == "captions" else \
                    (value[int(rng.integers(len(value)))] if value else None)
            if isinstance(value, str) and value.strip():
                return value
        return None

    def _label(self, example) -> Optional[int]:
        for key in LABEL_KEYS:
            if example and example.get(key) is not None:
                return int(example[key])
        return None

    def _remember(self, img, label, rng):
        bucket = self.buffer.setdefault(label, [])
        if len(bucket) < self.buffer_per_class:
            bucket.append(img)
        else:
            bucket[int(rng.integers(self.buffer_per_class))] = img

    def class_edit(self, label: int, rng):
        others = [c for c in self.buffer if c != label and self.buffer[c]]
        if not others:
            return None
        c = others[int(rng.integers(len(others)))]
        target = self.buffer[c][int(rng.integers(len(self.buffer[c])))]
        name = self.class_names[c] if 0 <= c < len(self.class_names) else str(c)
        return self.templates[int(rng.integers(len(self.templates)))].format(name), target

    def geometric_edit(self, img, rng):
        caption, fn = GEOMETRIC_EDITS[self.geometric[int(rng.integers(len(self.geometric)))]]
        return caption, fn(img)

    def triplet(self, img, rng, example=None, pair=None):
        """(caption, target PIL image) for the reference `img`."""
        caption = self._text(example, rng)
        if pair is not None and caption is not None:
            return caption, pair
        label = self._label(example)
        out = None
        if label is not None and "class" in self.edit_kinds and \
                ("geometric" not in self.edit_kinds or rng.random() < 0.5):
            out = self.class_edit(label, rng)
        if out is None:
            out = self.geometric_edit(img, rng)
        if label is not None:
            self._remember(img, label, rng)
        return out

    def tokenize(self, texts):
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.caption_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None, pair=None):
        if pair is None and self.target_column and example and example.get(self.target_column) is not None:
            pair = decode_image(example[self.target_column], img.mode)
        caption, target = self.triplet(img, rng, example, pair)
        ids, mask = self.tokenize([caption])
        return {"pixel_values": self.view(img, rng), "target_pixel_values": self.view(target, rng),
                "input_ids": ids[0], "attention_mask": mask[0],
                "target_ids": torch.tensor(image_content_id(target), dtype=torch.long)}


__all__ = ["ComposedTripletPolicy", "GEOMETRIC_EDITS"]
