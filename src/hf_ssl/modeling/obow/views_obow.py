"""The `"obow"` view policy: one teacher view, `num_crops` student crops and `num_patches` student patches.

Official (`obow/datasets.py`): teacher image = Resize(256) + CenterCrop(224) + horizontal flip (no colour
augmentation); crops = RandomResizedCrop(160, scale 0.08-0.6) + colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8 + grayscale
p 0.2 + Gaussian blur p 0.5 + flip; patches = 5 of the 3x3 grid of 96 px patches (jitter 24) of a
RandomResizedCrop(256, scale 0.6-1) with jitter/grayscale/flip and no blur. Here the teacher view is the eval-style
resize + center crop at `image_size` with a random flip, and each patch is an independent random resized crop at
`patch_size` with `patch_scale` (default 0.084-0.14 = (96/256)^2 x [0.6, 1], the area of one official patch).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...training.data import ImageAugment, ViewPolicy, register_view_policy, to_normalized_tensor


@register_view_policy("obow")
class OBoWViewPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = config.image_size
        self.num_crops = int(a.get("num_crops", 2))
        self.num_patches = int(a.get("num_patches", 5))
        self.crop = self.augment(int(a.get("crop_size", 160)), a.get("crop_scale", (0.08, 0.6)))
        patch_kwargs = {k: a[k] for k in ("horizontal_flip", "color_jitter", "color_jitter_strength", "grayscale",
                                          "solarize") if k in a}
        self.patch = ImageAugment(int(a.get("patch_size", 96)), a.get("patch_scale", (0.084, 0.14)), self.mean,
                                  self.std, gaussian_blur=0.0, **patch_kwargs)
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def teacher_view(self, img, rng):
        w, h = img.size
        s = round(self.size / 0.875) / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(img, self._mean, self._std)

    def __call__(self, img, rng):
        views = [self.teacher_view(img, rng)]
        views += [self.crop(img, rng) for _ in range(self.num_crops)]
        views += [self.patch(img, rng) for _ in range(self.num_patches)]
        return {"pixel_values": views}


__all__ = ["OBoWViewPolicy"]
