"""CropMAE views (official `GlobalToLocal` strategy): a random resized crop of the image (the first view), a random
resized crop *of that crop* (the second view), each flipped independently, normalized, plus the second view's mask."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from ...training.data import ViewPolicy, random_resized_crop_box, register_view_policy, to_normalized_tensor
from ..backbones import vit_grid
from ..masking import random_mask


@register_view_policy("cropmae")
class CropMAEViewPolicy(ViewPolicy):
    """`{"pixel_values": [first_crop, second_crop], "bool_masked_pos": [N]}`."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = config.image_size
        self.global_scale = tuple(a.get("global_scale", (0.1, 1.0)))
        self.local_scale = tuple(a.get("local_scale", (0.3, 0.6)))
        self.ratio = tuple(a.get("crop_ratio", (3 / 4, 4 / 3)))
        self.flip = float(a.get("horizontal_flip", 0.5))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        grid = vit_grid(config.backbone_config, (config.image_size, config.image_size))
        self.num_patches = grid[0] * grid[1]
        self.num_masked = self.num_patches - config.num_visible(self.num_patches)

    def views(self, img: Image.Image, rng: np.random.Generator):
        """The two crops (PIL, before flip/normalize) and their boxes `(left, top, w, h)` in image coordinates."""
        left, top, w, h = random_resized_crop_box(img.width, img.height, self.global_scale, self.ratio, rng=rng)
        first = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        l2, t2, w2, h2 = random_resized_crop_box(self.size, self.size, self.local_scale, self.ratio, rng=rng)
        second = first.resize((self.size, self.size), Image.BICUBIC, box=(l2, t2, l2 + w2, t2 + h2))
        sx, sy = w / self.size, h / self.size
        box2 = (left + l2 * sx, top + t2 * sy, w2 * sx, h2 * sy)
        return first, second, (left, top, w, h), box2

    def _finish(self, view: Image.Image, rng) -> torch.Tensor:
        if self.flip and rng.random() < self.flip:
            view = ImageOps.mirror(view)
        return to_normalized_tensor(view, self._mean, self._std)

    def __call__(self, img, rng):
        first, second, _, _ = self.views(img, rng)
        mask = random_mask(self.num_patches, self.num_masked / self.num_patches, rng=rng)
        return {"pixel_values": [self._finish(first, rng), self._finish(second, rng)],
                "bool_masked_pos": torch.from_numpy(mask)}


__all__ = ["CropMAEViewPolicy"]
