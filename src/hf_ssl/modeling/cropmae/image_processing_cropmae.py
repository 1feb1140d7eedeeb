"""CropMAE inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class CropMAEImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, normalize with the ImageNet mean/std (the
    official training views use the same normalization). Training views come from `CropMAEConfig.augmentation`."""


__all__ = ["CropMAEImageProcessor"]
