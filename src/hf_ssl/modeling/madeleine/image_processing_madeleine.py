"""MADELEINE inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class MadeleineImageProcessor(SSLImageProcessor):
    """Resize / centre-crop / ImageNet-normalize at the config's slide `image_size` (tile-sized inputs are single
    patches). Whole-slide images are tiled and embedded by a patch encoder first (pre-extracted `patch_features`, as
    the official pipeline); the training views are the multistain policy in `MadeleineConfig.augmentation`."""


__all__ = ["MadeleineImageProcessor"]
