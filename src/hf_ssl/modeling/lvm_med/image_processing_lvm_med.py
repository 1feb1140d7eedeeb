"""LVM-Med inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class LVMMedImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop to `image_size`, rescale to [0, 1] and normalize (ImageNet statistics,
    as the released LVM-Med encoders expect). Training views come from `LVMMedConfig.augmentation`."""


__all__ = ["LVMMedImageProcessor"]
