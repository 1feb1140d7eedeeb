"""The `"pasted_segmentation"` view policy: segmentation training pairs (image, per-pixel class map).

Two sources:

* Data with a segmentation map column (`segmentation`, `mask`, `annotation`, `label_map`, `semantic`, or
  `augmentation["mask_column"]`; an image whose pixel values are class ids, 255 = ignore): image and map get the
  same random resized crop (nearest-neighbour for the map) and flip, like mmseg's train pipeline.
* Classification data (the built-in digits): objects are pasted onto a canvas of `image_size` with their masks.
  Each object is an image of the stream, scaled to a random fraction `paste_scale` of the canvas side and placed at
  a random position; its mask is the pixels brighter than `foreground_threshold` (digits are light ink on black)
  labelled `1 + label` (class 0 = background). With `objects_per_canvas` > 1 further objects come from a small
  buffer of recently seen images of this worker (later objects are drawn on top). The canvas background is a
  random dark colour with pixel noise, so background is not simply "black".

Output per example: `pixel_values` `[C, S, S]` (normalised) and `segmentation_labels` `[S, S]` (int64).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ...training.data import (LABEL_KEYS, ViewPolicy, decode_image, random_resized_crop_box, register_view_policy,
                              to_normalized_tensor)

MASK_KEYS = ("segmentation", "mask", "annotation", "label_map", "semantic", "seg", "segmentation_map")


@register_view_policy("pasted_segmentation")
class PastedSegmentationPolicy(ViewPolicy):
    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = int(config.image_size)
        self.paste_scale = tuple(float(v) for v in a.get("paste_scale", (0.4, 0.9)))
        self.objects = int(a.get("objects_per_canvas", 2))
        self.threshold = float(a.get("foreground_threshold", 0.25))
        self.crop_scale = tuple(a.get("crop_scale", (0.5, 1.0)))
        self.flip = float(a.get("horizontal_flip", 0.0))
        self.mask_column = a.get("mask_column")
        self.ignore_index = int(getattr(config, "ignore_index", 255))
        self.num_classes = len(config.segmentation_class_names)
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        self.buffer: List[Tuple[Image.Image, int]] = []
        self.buffer_size = int(a.get("object_buffer_size", 64))

    # -- helpers ------------------------------------------------------------------------------------------
    def _label(self, example) -> Optional[int]:
        for key in LABEL_KEYS:
            if example and example.get(key) is not None:
                return int(example[key])
        return None

    def _mask_value(self, example):
        keys = (self.mask_column,) if self.mask_column else MASK_KEYS
        for key in keys:
            if example and example.get(key) is not None:
                return example[key]
        return None

    def _remember(self, img, label, rng):
        if len(self.buffer) < self.buffer_size:
            self.buffer.append((img, label))
        else:
            self.buffer[int(rng.integers(self.buffer_size))] = (img, label)

    def paste(self, objects, rng) -> Tuple[Image.Image, np.ndarray]:
        """Canvas image and label map for `objects` = [(PIL image, class id >= 1)], drawn in order."""
        s = self.size
        base = rng.integers(0, 80, size=3)
        noise = rng.integers(-20, 21, size=(s, s, 3))
        canvas = np.clip(base[None, None] + noise, 0, 255).astype(np.uint8)
        labels = np.zeros((s, s), dtype=np.int64)
        tint_pool = np.array([[255, 255, 255], [255, 220, 120], [140, 220, 255], [255, 150, 150], [170, 255, 170]])
        for img, cls in objects:
            side = max(4, int(round(s * rng.uniform(*self.paste_scale))))
            aspect = rng.uniform(0.8, 1.25)
            w, h = max(4, min(s, int(round(side * aspect)))), max(4, min(s, int(round(side / aspect))))
            obj = np.asarray(img.convert("L").resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
            x0, y0 = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            fg = obj > self.threshold
            tint = tint_pool[int(rng.integers(len(tint_pool)))].astype(np.float32)
            region = canvas[y0:y0 + h, x0:x0 + w].astype(np.float32)
            alpha = np.clip(obj, 0, 1)[..., None]
            canvas[y0:y0 + h, x0:x0 + w] = np.clip(region * (1 - alpha) + tint * alpha, 0, 255).astype(np.uint8)
            labels[y0:y0 + h, x0:x0 + w][fg] = cls
        return Image.fromarray(canvas, "RGB"), labels

    def from_mask(self, img, mask_value, rng) -> Tuple[Image.Image, np.ndarray]:
        mask = decode_image(mask_value, None)
        if mask.mode not in ("L", "P", "I", "I;16"):
            mask = mask.convert("L")
        if mask.size != img.size:
            raise ValueError(f"segmentation map size {mask.size} differs from the image size {img.size}")
        left, top, w, h = random_resized_crop_box(img.width, img.height, self.crop_scale, rng=rng)
        box = (left, top, left + w, top + h)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=box)
        seg = mask.resize((self.size, self.size), Image.NEAREST, box=box)
        if rng.random() < self.flip:
            out, seg = ImageOps.mirror(out), ImageOps.mirror(seg)
        labels = np.asarray(seg, dtype=np.int64).copy()
        bad = (labels >= self.num_classes) & (labels != self.ignore_index)
        labels[bad] = self.ignore_index
        return out, labels

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        mask_value = self._mask_value(example)
        if mask_value is not None:
            out, labels = self.from_mask(img, mask_value, rng)
        else:
            label = self._label(example)
            cls = 1 + label if label is not None and 0 <= label + 1 < self.num_classes else self.ignore_index
            objects = []
            if self.buffer:
                for _ in range(self.objects - 1):
                    if rng.random() < 0.5:
                        prev, prev_cls = self.buffer[int(rng.integers(len(self.buffer)))]
                        objects.append((prev, prev_cls))
            objects.append((img, cls))  # the current image is drawn last (fully visible)
            if label is not None:
                self._remember(img, cls, rng)
            out, labels = self.paste(objects, rng)
        if out.mode != self.mode:
            out = out.convert(self.mode)
        return {"pixel_values": to_normalized_tensor(out, self._mean, self._std),
                "segmentation_labels": torch.from_numpy(labels)}


__all__ = ["PastedSegmentationPolicy", "MASK_KEYS"]
