"""GenView inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class GenViewImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, normalize with the ImageNet mean/std.
    Training views come from `GenViewConfig.augmentation` (the `"genview"` view policy)."""


__all__ = ["GenViewImageProcessor"]
