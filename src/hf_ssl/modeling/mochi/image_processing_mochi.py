"""MoCHi inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class MoCHiImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256, center-crop 224, rescale to [0, 1] and normalize with the ImageNet mean/std
    (the MoCo/MoCHi linear-evaluation transform). Training views come from `MoCHiConfig.augmentation`."""


__all__ = ["MoCHiImageProcessor"]
