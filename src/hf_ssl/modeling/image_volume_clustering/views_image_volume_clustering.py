"""View policy of the joint image-volume method: two augmented 3-D views of a volume (volume-level clustering and
masked embedding prediction), two augmented 2-D views of a few of its slices (slice-level clustering) and one slice
mask shared by both 3-D views (the official `TrainingDataset_Mask` draws one mask per volume)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ...training.data import register_view_policy
from ...training.volumes import VOLUME_KEY, VolumePolicy, volume_augment_from_config


def num_masked_slices(depth: int, ratio: float) -> int:
    """Slices masked per volume: `round(depth * ratio)`, at least one and at most depth - 1."""
    return int(min(max(1, round(depth * ratio)), depth - 1))


def slice_mask(depth: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A `[depth]` bool mask with exactly :func:`num_masked_slices` masked slices, uniformly at random."""
    mask = np.zeros(depth, dtype=bool)
    mask[rng.permutation(depth)[: num_masked_slices(depth, ratio)]] = True
    return mask


@register_view_policy("image_volume_views")
class ImageVolumeViewsPolicy(VolumePolicy):
    """`pixel_values_volumes = [v1, v2]` (`[C, D, H, W]` each), `pixel_values = [s1, s2]` (`[S, C, H, W]` each: S
    slices of the volume, two independent 2-D crops of each) and `bool_masked_pos [D]` (slice mask)."""

    def __init__(self, config):
        super().__init__(config)
        self.view = volume_augment_from_config(config)
        a = self.aug
        _, h, w = self.shape
        # a slice is a one-page volume: the 3-D crop then only cuts in-plane (depth extent 1)
        self.slice_view = volume_augment_from_config(config, shape=(1, h, w),
                                                     crop_scale=tuple(a.get("slice_crop_scale", (0.14, 1.0))))
        self.num_slices = int(config.num_slices_2d)
        self.depth_range = tuple(a.get("slice_depth_range", (0.2, 0.8)))
        self.mask_ratio = float(config.mask_ratio)

    def sample_slices(self, depth: int, rng: np.random.Generator) -> np.ndarray:
        """`num_slices` slice indices drawn uniformly from `slice_depth_range` of the depth (with replacement only
        when the range holds fewer slices)."""
        lo = int(np.floor(self.depth_range[0] * (depth - 1)))
        hi = int(np.ceil(self.depth_range[1] * (depth - 1)))
        pool = np.arange(lo, max(lo, hi) + 1)
        return rng.choice(pool, size=self.num_slices, replace=len(pool) < self.num_slices)

    def __call__(self, frames, rng) -> Dict[str, Any]:
        vol = self.volume(frames)  # [C, D0, H0, W0] in [0, 1]
        views = [self.view(vol, rng), self.view(vol, rng)]
        index = self.sample_slices(vol.shape[1], rng)
        slices = [[], []]
        for i in index:
            one = vol[:, i: i + 1]
            for v in range(2):
                slices[v].append(self.slice_view(one, rng)[:, 0])  # [C, H, W]
        return {VOLUME_KEY: views, "pixel_values": [torch.stack(s) for s in slices],
                "bool_masked_pos": torch.from_numpy(slice_mask(self.shape[0], self.mask_ratio, rng))}


__all__ = ["ImageVolumeViewsPolicy", "slice_mask", "num_masked_slices"]
