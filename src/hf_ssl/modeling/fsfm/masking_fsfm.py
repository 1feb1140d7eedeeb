"""CRFR-P masking of FSFM ("Covering a Random complete Facial Region + Proportional masking").

Regions are *groups* of face-parsing labels. A patch belongs to a group when any of its pixels carries one of
the group's labels (max-pool of the label map over the patch, as in the official `collate_fn_crfrp`), so
memberships overlap. The special group `"boundary"` holds patches that contain an inner label (skin) *and* an
outer label (hair or background).

`crfrp_mask` then, for one image:
1. picks one candidate region group r (uniformly among candidates present in the image) and masks ALL its patches;
2. if that already reaches the budget K = round(N * mask_ratio), keeps K of them at random (the official
   "extreme situation"; the region mask is then the kept part);
3. otherwise masks, in every other group in turn, the same fraction (K - |r|) / (N - |r|) of its not yet
   covered patches, and finally masks / unmasks random patches outside r until exactly K are masked.

Returns (mask `[N]`, region mask `[N]`): the region mask marks the fully covered facial region, over which FSFM
adds its region reconstruction loss.

Face-parsing label ids (the 11-class parser of the official preprocessing, `face_parse.py`): 0 background,
1 skin, 2/3 right/left eyebrow, 4/5 right/left eye, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..masking import num_masked

Group = Union[str, Sequence[int]]

# official grouping: eyebrows, eyes, nose, mouth, face boundary, hair, skin, background; the first six are the
# candidates for the fully covered region (`facial_region_group[:-2]`)
FACE_REGION_GROUPS: List[Group] = [[2, 3], [4, 5], [6], [7, 8, 9], "boundary", [10], [1], [0]]
FACE_CANDIDATE_GROUPS: List[int] = [0, 1, 2, 3, 4, 5]
BOUNDARY_INNER_LABELS = (1,)
BOUNDARY_OUTER_LABELS = (0, 10)


def grid_region_parser(height: int, width: int, grid: Tuple[int, int] = (2, 2)) -> np.ndarray:
    """Fallback "parser" that needs no face-parsing model: a `[height, width]` label map that splits the image
    into `grid[0] x grid[1]` equal rectangles labelled 0..R-1 in row-major order. Used with
    `grid_region_groups(grid)` (every cell is its own group and a candidate). Meant for tests, CPU demos and
    non-face data; real FSFM pretraining uses face-parsing maps."""
    rows = np.minimum((np.arange(height) * grid[0]) // height, grid[0] - 1)
    cols = np.minimum((np.arange(width) * grid[1]) // width, grid[1] - 1)
    return (rows[:, None] * grid[1] + cols[None, :]).astype(np.int64)


def grid_region_groups(grid: Tuple[int, int]) -> List[Group]:
    return [[i] for i in range(grid[0] * grid[1])]


def _pool_any(pixel_mask: np.ndarray, patch_size: int) -> np.ndarray:
    h, w = pixel_mask.shape
    gh, gw = h // patch_size, w // patch_size
    return pixel_mask[: gh * patch_size, : gw * patch_size].reshape(gh, patch_size, gw, patch_size).any(axis=(1, 3))


def region_membership(label_map: np.ndarray, groups: Sequence[Group], patch_size: Optional[int] = None,
                      grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """`[G, N]` bool: does patch n contain region group g?

    `label_map` is either a per-pixel parsing map `[H, W]` (needs `patch_size`; a patch belongs to every group
    present among its pixels) or a per-patch region-id map `[N]` / `[gh, gw]` (each patch has one id; then the
    `"boundary"` group is approximated by inner-label patches with a 4-neighbour outer-label patch, which needs
    `grid` for a flat `[N]` map)."""
    label_map = np.asarray(label_map)
    per_pixel = patch_size is not None
    if per_pixel:
        if label_map.ndim != 2:
            raise ValueError(f"a per-pixel parsing map must be [H, W], got shape {label_map.shape}")
        pooled = lambda m: _pool_any(m, patch_size).reshape(-1)  # noqa: E731
    else:
        if label_map.ndim == 1:
            if grid is None:
                grid = (1, label_map.shape[0])
            label_map = label_map.reshape(grid)
        pooled = lambda m: m.reshape(-1)  # noqa: E731
    out = []
    for group in groups:
        if isinstance(group, str):
            if group != "boundary":
                raise ValueError(f"unknown region group {group!r} (only 'boundary' is special)")
            inner = np.isin(label_map, BOUNDARY_INNER_LABELS)
            outer = np.isin(label_map, BOUNDARY_OUTER_LABELS)
            if per_pixel:
                out.append(pooled(inner) & pooled(outer))
            else:
                near = np.zeros_like(outer)
                near[1:] |= outer[:-1]
                near[:-1] |= outer[1:]
                near[:, 1:] |= outer[:, :-1]
                near[:, :-1] |= outer[:, 1:]
                out.append(pooled(inner & near))
        else:
            out.append(pooled(np.isin(label_map, list(group))))
    return np.stack(out)


def crfrp_mask(membership: np.ndarray, mask_ratio: float, candidates: Sequence[int],
               rng: Optional[np.random.Generator] = None, region: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, int]:
    """CRFR-P for one image (see module docstring). `membership` `[G, N]` from :func:`region_membership`;
    `region` forces the covered group (else drawn among present candidates; if no candidate is present the mask
    is uniformly random and the region mask empty). Returns (mask `[N]`, region mask `[N]`, region index or -1)."""
    rng = rng if rng is not None else np.random.default_rng()
    g, n = membership.shape
    k = num_masked(n, mask_ratio)
    if region is None:
        present = [c for c in candidates if membership[c].any()]
        region = int(rng.choice(present)) if present else -1
    if region < 0:
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:k]] = True
        return mask, np.zeros(n, dtype=bool), -1
    region_mask = membership[region].copy()
    covered = int(region_mask.sum())
    if covered >= k:  # the region alone exceeds the budget: keep k of its patches
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(np.flatnonzero(region_mask), size=k, replace=False)] = True
        return mask, mask.copy(), region
    mask = region_mask.copy()
    ratio_other = (k - covered) / (n - covered)
    seen = region_mask.copy()
    for other in range(g):
        if other == region:
            continue
        cand = np.flatnonzero(membership[other] & ~seen)
        take = int(round(len(cand) * ratio_other))
        if take:
            mask[rng.choice(cand, size=take, replace=False)] = True
        seen |= membership[other]
    diff = k - int(mask.sum())
    if diff > 0:
        mask[rng.choice(np.flatnonzero(~mask), size=diff, replace=False)] = True
    elif diff < 0:  # never unmask the covered region
        mask[rng.choice(np.flatnonzero(mask & ~region_mask), size=-diff, replace=False)] = False
    return mask, region_mask, region


__all__ = ["FACE_REGION_GROUPS", "FACE_CANDIDATE_GROUPS", "grid_region_parser", "grid_region_groups",
           "region_membership", "crfrp_mask"]
