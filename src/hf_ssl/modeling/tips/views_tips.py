"""TIPS's view policy (`"tips_views"`): one global view, `num_local` small crops and two tokenized captions per
image, `input_ids` / `attention_mask` `[2, L]`: row 0 the noisy web caption (the data's text column, or a label
template for labelled data, as in the CLIP core), row 1 the synthetic dense caption (a `synthetic_caption` /
`dense_caption` / `long_caption` column; for labelled digits without one, DreamLIP's generator writes a
description from measured stroke, slant, position, proportion and ink properties, the stand-in for PaliGemma).

The global view is used by the contrastive and both distillation terms; the local crops only by the DINO term."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ...training.data import LABEL_KEYS, register_view_policy
from ..clip.views_clip import ImageTextPolicy
from ..dreamlip.views_dreamlip import describe_digit

SYNTHETIC_CAPTION_KEYS = ("synthetic_caption", "synthetic_captions", "dense_caption", "long_caption", "long_text")


@register_view_policy("tips_views")
class TIPSViewPolicy(ImageTextPolicy):
    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.view = self.augment(config.image_size, a.get("global_scale", a.get("crop_scale", (0.9, 1.0))))
        self.num_local = int(a.get("num_local", 0))
        self.local_view = self.augment(int(a.get("local_size", 96)), a.get("local_scale", (0.05, 0.4)))
        self.synthetic_column = config.synthetic_caption_column

    def synthetic_caption(self, img, example: Optional[Dict[str, Any]], rng) -> str:
        if example:
            keys = SYNTHETIC_CAPTION_KEYS if self.synthetic_column == "auto" else (self.synthetic_column,)
            for key in keys:
                value = example.get(key)
                if isinstance(value, (list, tuple)):  # several synthetic captions: sample one
                    value = value[int(rng.integers(len(value)))] if value else None
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

    def texts(self, img, rng, example=None):
        return [self.caption(example, rng), self.synthetic_caption(img, example, rng)]

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        ids, mask = self.tokenize(self.texts(img, rng, example))
        views = [self.view(img, rng)] + [self.local_view(img, rng) for _ in range(self.num_local)]
        return {"pixel_values": views, "input_ids": ids, "attention_mask": mask}
