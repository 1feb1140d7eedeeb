"""Heuristic multi-task pre-training inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class HeuristicMTLImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop to `image_size`, rescale to [0, 1] and normalize (ImageNet statistics).
    Training views come from `HeuristicMTLConfig.augmentation` (the `"heuristic_mtl"` view policy)."""


__all__ = ["HeuristicMTLImageProcessor"]
