"""SIE views: two augmented views of an image plus the relative transformation parameters relating them.

The paper's 3DIEBench gives the relative 3-D rotation (a quaternion) between two renders of an object; for 2-D
image data the transformations are the augmentations themselves. Each view v is drawn as: an Inception random
resized crop (box `(left, top, w, h)` in an `W x H` image), a horizontal flip, then (with probability
`color_jitter`) brightness and contrast factors `b, c` (PIL ImageEnhance, uniform in `[1 - s, 1 + s]`; 1 when not
jittered). Its absolute parameters are

    p_v = (cx / W, cy / H, log(w / W), log(h / H), flip (0/1), b, c)     with (cx, cy) the box centre,

and the policy returns `transformation_params = p_2 - p_1` (7 floats): what the predictor needs to map the view-1
equivariant embedding onto the view-2 one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ...training.data import ViewPolicy, random_resized_crop_box, register_view_policy, to_normalized_tensor


@register_view_policy("sie")
class SIEViewPolicy(ViewPolicy):
    """`{"pixel_values": [view1, view2], "transformation_params": float32 [7]}` (see the module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = config.image_size
        self.scale = tuple(a.get("crop_scale", (0.3, 1.0)))
        self.ratio = tuple(a.get("crop_ratio", (3 / 4, 4 / 3)))
        self.flip = float(a.get("horizontal_flip", 0.5))
        self.jitter = float(a.get("color_jitter", 0.8))
        self.brightness = float(a.get("brightness", 0.4))
        self.contrast = float(a.get("contrast", 0.4))
        for name, value in (("horizontal_flip", self.flip), ("color_jitter", self.jitter)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation[{name!r}] must be a probability, got {value}")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ValueError("augmentation 'brightness' and 'contrast' strengths must be in [0, 1)")
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def view(self, img: Image.Image, rng: np.random.Generator):
        """One view tensor and its absolute parameter vector `p_v` (numpy float64 [7])."""
        img = img.convert(self.mode)
        width, height = img.width, img.height
        left, top, w, h = random_resized_crop_box(width, height, self.scale, self.ratio, rng=rng)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        flipped = bool(self.flip and rng.random() < self.flip)
        if flipped:
            out = ImageOps.mirror(out)
        b = c = 1.0
        if self.jitter and rng.random() < self.jitter:
            b = float(rng.uniform(1 - self.brightness, 1 + self.brightness))
            c = float(rng.uniform(1 - self.contrast, 1 + self.contrast))
            out = ImageEnhance.Contrast(ImageEnhance.Brightness(out).enhance(b)).enhance(c)
        params = np.array([(left + w / 2) / width, (top + h / 2) / height, math.log(w / width),
                           math.log(h / height), float(flipped), b, c])
        return to_normalized_tensor(out, self._mean, self._std), params

    def __call__(self, img, rng):
        v1, p1 = self.view(img, rng)
        v2, p2 = self.view(img, rng)
        return {"pixel_values": [v1, v2], "transformation_params": torch.from_numpy((p2 - p1).astype(np.float32))}


__all__ = ["SIEViewPolicy"]
