"""Alice's views: two augmented 3-D crops of one volume whose crop boxes are guaranteed to overlap, their random
3-D token masks, and for every token of each view the index of the token of the other view that covers the same
place of the original volume (`-1` outside the overlap). The overlap replaces the official SAM-landmark matching
(see the package docstring)."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

from ...training.data import register_view_policy
from ...training.volumes import VOLUME_KEY, VolumePolicy, random_crop_box_3d, resize_volume, volume_augment_from_config
from ..masking import random_mask


def token_centers(start: Sequence[int], size: Sequence[int], flips: Sequence[bool], grid: Sequence[int]) -> np.ndarray:
    """Centres `[N, 3]` (in voxel coordinates of the ORIGINAL volume, voxel j spanning [j, j + 1)) of the tokens of a
    view cut at `start` / `size`, resized to a `grid` of tokens (row-major (d, h, w) order) and flipped along the
    axes where `flips` is True (token i of a flipped axis shows the content of un-flipped token g - 1 - i)."""
    axes = []
    for s, n, f, g in zip(start, size, flips, grid):
        i = np.arange(g)
        src = g - 1 - i if f else i
        axes.append(s + (src + 0.5) / g * n)
    c = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.reshape(-1) for a in c], axis=1)


def locate_tokens(points: np.ndarray, start: Sequence[int], size: Sequence[int], flips: Sequence[bool],
                  grid: Sequence[int]) -> np.ndarray:
    """Index of the token of a view (`start`, `size`, `flips`, `grid` as in :func:`token_centers`) that contains each
    point `[N, 3]` of the original volume, or -1 for points outside the view's crop box."""
    idx = np.zeros(len(points), dtype=np.int64)
    inside = np.ones(len(points), dtype=bool)
    for axis, (s, n, f, g) in enumerate(zip(start, size, flips, grid)):
        rel = (points[:, axis] - s) / n  # in [0, 1) inside the box
        inside &= (rel >= 0) & (rel < 1)
        j = np.clip(np.floor(rel * g).astype(np.int64), 0, g - 1)
        j = g - 1 - j if f else j
        idx = idx * g + j
    return np.where(inside, idx, -1)


def overlap_token_index(view_a: Dict[str, Any], view_b: Dict[str, Any], grid: Sequence[int]) -> np.ndarray:
    """For every token of view a, the token of view b that covers its centre (-1 if the centre is outside view b).
    Views are dicts with `start`, `size`, `flips` (as returned by `VolumeAugment(..., return_params=True)`)."""
    for v in (view_a, view_b):
        if v.get("rot90", 0):
            raise ValueError("overlap indexing supports crops and flips only (set augmentation rotate90=0)")
    centers = token_centers(view_a["start"], view_a["size"], view_a["flips"], grid)
    return locate_tokens(centers, view_b["start"], view_b["size"], view_b["flips"], grid)


def overlapping_crop_box(dims: Sequence[int], first: Tuple[Sequence[int], Sequence[int]], scale, ratio,
                         rng: np.random.Generator):
    """A random crop box (volume fraction in `scale`, aspect in `ratio`) that contains the centre voxel of the
    `first` box `(start, size)`, so the two views always share a region around it."""
    _, size = random_crop_box_3d(dims, scale, ratio, rng)
    starts = []
    for d, n, s1, n1 in zip(dims, size, *first):
        c = s1 + n1 // 2
        lo, hi = max(0, c - n + 1), min(d - n, c)
        starts.append(int(rng.integers(lo, hi + 1)))
    return tuple(starts), tuple(int(n) for n in size)


@register_view_policy("alice_views")
class AliceViewsPolicy(VolumePolicy):
    """`pixel_values_volumes = [v1, v2]` (overlapping 3-D crops, `[C, D, H, W]`), `bool_masked_pos = [m1, m2]` (random
    3-D token masks, exactly `round(N * mask_ratio)` each) and `overlap_index = [o12, o21]` (`[N]` each: matching
    token of the other view or -1)."""

    def __init__(self, config):
        super().__init__(config)
        from ..backbones import video_patch_grid

        self.aug_view = volume_augment_from_config(config)
        if self.aug_view.rotate90:
            raise ValueError("alice_views needs augmentation rotate90=0 (overlap indexing covers crops and flips)")
        self.grid = video_patch_grid(config.backbone_config)
        self.num_patches = int(np.prod(self.grid))
        self.mask_ratio = float(config.mask_ratio)

    def render(self, vol: np.ndarray, start, size, rng: np.random.Generator):
        """Crop `vol` at the box, resize, flip, jitter, normalise (VolumeAugment's steps with a given box)."""
        a = self.aug_view
        sl = tuple(slice(s, s + n) for s, n in zip(start, size))
        out = resize_volume(vol[(slice(None),) + sl], a.shape)
        flips = tuple(bool(rng.random() < a.flip) for _ in range(3))
        for axis, f in enumerate(flips):
            if f:
                out = np.flip(out, axis=axis + 1)
        out = a.jitter(np.ascontiguousarray(out, dtype=np.float32), rng)
        tensor = torch.from_numpy(np.ascontiguousarray((out - a.mean) / a.std, dtype=np.float32))
        return tensor, {"start": tuple(start), "size": tuple(size), "flips": flips, "rot90": 0}

    def __call__(self, frames, rng) -> Dict[str, Any]:
        vol = self.volume(frames)
        dims = vol.shape[1:]
        a = self.aug_view
        first = random_crop_box_3d(dims, a.crop_scale, a.crop_ratio, rng)
        second = overlapping_crop_box(dims, first, a.crop_scale, a.crop_ratio, rng)
        v1, p1 = self.render(vol, *first, rng)
        v2, p2 = self.render(vol, *second, rng)
        o12 = overlap_token_index(p1, p2, self.grid)
        o21 = overlap_token_index(p2, p1, self.grid)
        masks = [torch.from_numpy(random_mask(self.num_patches, self.mask_ratio, rng)) for _ in range(2)]
        return {VOLUME_KEY: [v1, v2], "bool_masked_pos": masks,
                "overlap_index": [torch.from_numpy(o12), torch.from_numpy(o21)]}


__all__ = ["AliceViewsPolicy", "token_centers", "locate_tokens", "overlap_token_index", "overlapping_crop_box"]
