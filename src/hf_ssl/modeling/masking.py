"""Patch masks shared by masked-image-modeling methods.

Every mask here is boolean with `True` = masked (hidden from the encoder), over patches in row-major order,
and every generator masks an *exact* number of patches per sample so visible tokens of a batch stack into
one tensor. Generators come in two forms: numpy functions used by data workers (one sample at a time, a
`np.random.Generator` for reproducibility) and torch batch functions used when a model is called without a
precomputed mask.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch


def num_masked(num_patches: int, mask_ratio: float) -> int:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(round(num_patches * mask_ratio))


def random_mask(num_patches: int, mask_ratio: float, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Uniformly random mask with exactly `round(N * ratio)` masked patches (MAE)."""
    rng = rng if rng is not None else np.random.default_rng()
    mask = np.zeros(num_patches, dtype=bool)
    mask[rng.permutation(num_patches)[: num_masked(num_patches, mask_ratio)]] = True
    return mask


def block_mask(
    grid: Tuple[int, int],
    mask_ratio: float,
    min_block_patches: int = 16,
    max_block_patches: Optional[int] = None,
    min_aspect: float = 0.3,
    rng: Optional[np.random.Generator] = None,
    max_attempts: int = 10,
) -> np.ndarray:
    """Block-wise mask (BEiT / CAE): rectangles of random area and aspect ratio are masked until the budget
    is reached. Blocks are drawn as in BEiT; the last step tops up with random patches (or unmasks random
    patches) so the count is exactly `round(N * ratio)`, which batched visible-token encoders need.
    """
    rng = rng if rng is not None else np.random.default_rng()
    h, w = grid
    n = h * w
    target = num_masked(n, mask_ratio)
    max_block_patches = max_block_patches or target
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    mask = np.zeros((h, w), dtype=bool)
    count = 0
    while count < target:
        budget = target - count
        added = 0
        for _ in range(max_attempts):
            lo = min(min_block_patches, budget)
            area = rng.uniform(lo, max(lo, min(budget, max_block_patches)))
            aspect = math.exp(rng.uniform(*log_aspect))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if 0 < bh < h and 0 < bw < w:
                top = int(rng.integers(0, h - bh + 1))
                left = int(rng.integers(0, w - bw + 1))
                region = mask[top : top + bh, left : left + bw]
                new = int(bh * bw - region.sum())
                if 0 < new <= budget:
                    region[:] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    flat = mask.reshape(-1)
    diff = target - int(flat.sum())
    if diff > 0:
        flat[rng.choice(np.flatnonzero(~flat), size=diff, replace=False)] = True
    elif diff < 0:
        flat[rng.choice(np.flatnonzero(flat), size=-diff, replace=False)] = False
    return flat


def frequency_mask(height: int, width: int, radius: float, keep: str = "low", inclusive: bool = True) -> np.ndarray:
    """Circular low/high-pass mask on a centred (fftshift-ed) spectrum; `True` = frequency removed.
    `keep='low'` removes frequencies farther than `radius` (in pixels) from the centre (a low-pass filter).
    `inclusive=False` puts frequencies at exactly `radius` outside the circle (MFM's `FreqMaskGenerator`)."""
    if keep not in ("low", "high"):
        raise ValueError("keep must be 'low' or 'high'")
    yy, xx = np.meshgrid(np.arange(height) - height // 2, np.arange(width) - width // 2, indexing="ij")
    dist2 = yy**2 + xx**2
    inside = dist2 <= radius**2 if inclusive else dist2 < radius**2
    return ~inside if keep == "low" else inside


def upsampled_random_mask(
    grid: Tuple[int, int], scale: int, mask_ratio: float, rng: Optional[np.random.Generator] = None
) -> np.ndarray:
    """SimMIM mask: exactly `ceil(n * mask_ratio)` of the `n = (gh/scale) * (gw/scale)` cells of a coarse grid are
    masked at random, then every cell is repeated `scale x scale` times onto the `grid` of model patches (e.g. mask
    patches of 32 px over 4 px Swin patches: `scale=8`). Returns a flat `[gh * gw]` bool mask (True = masked)."""
    rng = rng if rng is not None else np.random.default_rng()
    gh, gw = grid
    if scale < 1 or gh % scale or gw % scale:
        raise ValueError(f"patch grid {grid} is not divisible by the mask scale {scale}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    ch, cw = gh // scale, gw // scale
    count = int(math.ceil(ch * cw * mask_ratio))
    coarse = np.zeros(ch * cw, dtype=bool)
    coarse[rng.permutation(ch * cw)[:count]] = True
    coarse = coarse.reshape(ch, cw)
    return coarse.repeat(scale, axis=0).repeat(scale, axis=1).reshape(-1)


def upsampled_random_mask_torch(batch_size: int, grid: Tuple[int, int], scale: int, mask_ratio: float, device=None,
                                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Batch `[B, gh * gw]` of :func:`upsampled_random_mask` masks."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    masks = np.stack([upsampled_random_mask(grid, scale, mask_ratio, rng=rng) for _ in range(batch_size)])
    return torch.from_numpy(masks).to(device)


def random_mask_torch(
    batch_size: int, num_patches: int, mask_ratio: float, device=None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Batch of exact-count random masks `[B, N]` generated on `device` (argsort of uniform noise)."""
    k = num_masked(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :k], True)
    return mask


def block_mask_torch(batch_size: int, grid: Tuple[int, int], mask_ratio: float, device=None,
                     generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    masks = np.stack([block_mask(grid, mask_ratio, rng=rng, **kwargs) for _ in range(batch_size)])
    return torch.from_numpy(masks).to(device)


def resolve_patch_mask(bool_masked_pos, batch_size: int, num_patches: int, generate, device=None) -> torch.Tensor:
    """A `[B, N]` bool patch mask: `generate(batch_size, num_patches, device=device)` when `bool_masked_pos` is None,
    else the caller's mask (`[B, N]` or `[B, h, w]`), checked to have the right shape and to mask at least one and
    leave at least one patch visible in every sample."""
    if bool_masked_pos is None:
        return generate(batch_size, num_patches, device=device)
    mask = torch.as_tensor(bool_masked_pos, device=device).bool()
    mask = mask.flatten(1) if mask.dim() == 3 else mask
    if tuple(mask.shape) != (batch_size, num_patches):
        raise ValueError(f"bool_masked_pos must be [batch, {num_patches}], got {list(mask.shape)}")
    counts = mask.sum(1)
    low, high = torch.stack([counts.min(), counts.max()]).tolist()  # one device->host read
    if low == 0 or high == num_patches:
        raise ValueError("bool_masked_pos must mask at least one and leave at least one patch visible")
    return mask


def mask_to_index(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """`[B, N]` bool mask -> (visible indices `[B, K]`, masked indices `[B, M]`), both sorted ascending.

    Raises a clear error when samples mask different numbers of patches (they could not be batched)."""
    if mask.dtype != torch.bool:
        mask = mask.bool()
    counts = mask.sum(dim=1)
    m = 0
    if counts.numel():
        low, high = torch.stack([counts.min(), counts.max()]).tolist()  # one device->host read (the sizes need it)
        if low != high:
            raise ValueError(
                f"bool_masked_pos must mask the same number of patches in every sample, got counts {counts.tolist()}"
            )
        m = low
    # stable sort puts visible (False) first, then masked (True), each in ascending index order
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
    n = mask.shape[1]
    return order[:, : n - m], order[:, n - m :]


def tube_mask(grid: Tuple[int, int, int], mask_ratio: float, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """VideoMAE tube mask over a `(T, H, W)` token grid (T = frames / tubelet): exactly `round(H * W * ratio)` spatial
    positions are masked and the same positions are masked at every time step. Flat `[T * H * W]` bool mask in
    (t, h, w) row-major order (the token order of VideoMAE's 3-D patch embedding), True = masked."""
    t, h, w = grid
    frame = random_mask(h * w, mask_ratio, rng=rng)
    return np.tile(frame, t)


def tube_mask_torch(batch_size: int, grid: Tuple[int, int, int], mask_ratio: float, device=None,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Batch `[B, T * H * W]` of :func:`tube_mask` masks drawn on `device`."""
    t, h, w = grid
    frame = random_mask_torch(batch_size, h * w, mask_ratio, device=device, generator=generator)
    return frame.repeat(1, t)


__all__ = ["num_masked", "random_mask", "block_mask", "frequency_mask", "random_mask_torch",
           "block_mask_torch", "mask_to_index", "upsampled_random_mask", "upsampled_random_mask_torch",
           "tube_mask", "tube_mask_torch"]
