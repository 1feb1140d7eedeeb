"""The `"pixpro"` view policy: two augmented views plus the crop coordinates that PixPro needs to match pixels.

Each view also returns `coords` = `[x_start, y_start, x_end, y_end]` of its crop in the original image, normalized
to [0, 1] by the image width/height. A horizontally flipped view has its x coordinates swapped (x_start is the
crop's right edge), as in the official `zdaxie/PixPro` data pipeline, so that feature-map column `j` of a flipped
view maps back to image position `x_start + (j + 0.5) * (x_end - x_start) / W` with a negative cell width.
"""

from __future__ import annotations

import torch

from ...training.data import ViewPolicy, register_view_policy


def crop_coords(info: dict) -> torch.Tensor:
    """`ImageAugment(..., return_box=True)` info -> normalized `[x0, y0, x1, y1]` (x swapped when flipped)."""
    left, top, w, h = info["box"]
    width, height = info["image_size"]
    x0, y0, x1, y1 = left / width, top / height, (left + w) / width, (top + h) / height
    if info["flipped"]:
        x0, x1 = x1, x0
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32)


@register_view_policy("pixpro")
class PixProViewPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.08, 1.0)))

    def __call__(self, img, rng):
        v1, i1 = self.view(img, rng, return_box=True)
        v2, i2 = self.view(img, rng, return_box=True)
        return {"pixel_values": [v1, v2], "coords": [crop_coords(i1), crop_coords(i2)]}


__all__ = ["PixProViewPolicy", "crop_coords"]
