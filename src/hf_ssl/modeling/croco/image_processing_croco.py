"""CroCo inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class CroCoImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, normalize with the ImageNet mean/std (the
    official pair transforms normalize with the same statistics). Training pairs come from
    `CroCoConfig.augmentation` (the `"croco_pair"` view policy)."""


__all__ = ["CroCoImageProcessor"]
