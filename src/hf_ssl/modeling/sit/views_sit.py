"""SiT training views: two augmented crops, each randomly rotated (0/90/180/270 degrees) and corrupted with the
official GMML-style random-block corruption (`datasets_utils.GMML_drop_rand_patches`); the clean rotated crops are
the reconstruction targets."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ...training.data import ViewPolicy, register_view_policy
from .configuration_sit import DROP_TYPES


def corrupt_image(clean: torch.Tensor, rng: np.random.Generator, drop_type: str, other: Optional[torch.Tensor] = None,
                  drop_perc: float = 0.5, align: int = 1, max_block_size: float = 0.3
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Corrupt random (aligned) rectangular blocks of `clean [C, H, W]` until at least a fraction drawn uniformly in
    `[min(0.5, drop_perc), drop_perc]` of the pixels is covered. Returns `(corrupted, mask [H, W] bool)`.

    Fill of a block: `zeros` -> 0 (random drop), `noise` -> N(0, 1) samples, `rand` -> the clean pixels of another
    random block of the same image, `other` -> the pixels at the same location of `other` (another image)."""
    if drop_type not in DROP_TYPES:
        raise ValueError(f"drop_type must be one of {DROP_TYPES}, got {drop_type!r}")
    if drop_type == "other" and other is None:
        raise ValueError("drop_type='other' needs the other image")
    c, h, w = clean.shape
    x = clean.clone()
    mask = torch.zeros(h, w, dtype=torch.bool)
    target = rng.uniform(min(0.5, drop_perc), drop_perc) * h * w
    max_h = max(int(h * max_block_size), align + 1)
    max_w = max(int(w * max_block_size), align + 1)
    while mask.sum().item() < target:
        r = (int(rng.integers(0, h - align + 1)) // align) * align
        col = (int(rng.integers(0, w - align + 1)) // align) * align
        bh = int(round(min(int(rng.integers(align, max_h)), h - r) / align)) * align
        bw = int(round(min(int(rng.integers(align, max_w)), w - col) / align)) * align
        bh, bw = max(bh, align), max(bw, align)
        if drop_type == "zeros":
            x[:, r:r + bh, col:col + bw] = 0.0
        elif drop_type == "noise":
            x[:, r:r + bh, col:col + bw] = torch.from_numpy(rng.standard_normal((c, bh, bw)).astype(np.float32))
        elif drop_type == "rand":
            r2 = (int(rng.integers(0, h - bh + 1)) // align) * align
            c2 = (int(rng.integers(0, w - bw + 1)) // align) * align
            x[:, r:r + bh, col:col + bw] = clean[:, r2:r2 + bh, c2:c2 + bw]
        else:
            x[:, r:r + bh, col:col + bw] = other[:, r:r + bh, col:col + bw]
        mask[r:r + bh, col:col + bw] = True
    return x, mask


@register_view_policy("sit")
class SiTViewPolicy(ViewPolicy):
    """Per image: two augmented crops; for each, a rotation label k in {0,1,2,3} (rotation by k*90 degrees,
    `torch.rot90` on (H, W)) and a drop type drawn uniformly from `config.drop_types`; then the rotated crop is
    corrupted. Returns `pixel_values` (corrupted, [2 views]), `clean_pixel_values` (targets), `corruption_mask`
    ([H, W] bool per view), `rotation_labels` ([2] long) and `drop_type_ids` ([2] long, index into
    `DROP_TYPES`). The `other` image is the previous image this policy processed (a one-image buffer; the
    official collate takes another image of the batch); for the very first image it is the sample's other view."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.08, 1.0)))
        self.rotation = bool(getattr(config, "rotation", True))
        self.drop_types = list(config.drop_types)
        self.drop_perc = float(config.drop_perc)
        self.align = int(config.drop_align)
        self.max_block_size = float(config.max_block_size)
        self._previous: Optional[torch.Tensor] = None

    def __call__(self, img, rng):
        cleans, labels = [], []
        for _ in range(2):
            x = self.view(img, rng)
            k = int(rng.integers(0, 4)) if self.rotation else 0
            cleans.append(torch.rot90(x, k, dims=(1, 2)).contiguous())
            labels.append(k)
        corrupted, masks, types = [], [], []
        for i, x in enumerate(cleans):
            t = int(rng.integers(0, len(self.drop_types)))
            other = self._previous if self._previous is not None else cleans[1 - i]
            xc, m = corrupt_image(x, rng, self.drop_types[t], other=other, drop_perc=self.drop_perc,
                                  align=self.align, max_block_size=self.max_block_size)
            corrupted.append(xc)
            masks.append(m)
            types.append(DROP_TYPES.index(self.drop_types[t]))
        self._previous = cleans[0]
        return {"pixel_values": corrupted, "clean_pixel_values": cleans, "corruption_mask": masks,
                "rotation_labels": torch.tensor(labels, dtype=torch.long),
                "drop_type_ids": torch.tensor(types, dtype=torch.long)}


__all__ = ["SiTViewPolicy", "corrupt_image"]
