"""PixPro inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class PixProImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop, rescale to [0, 1] and normalize (ImageNet mean/std by default).
    Training views come from `PixProConfig.augmentation` (policy `"pixpro"`)."""


__all__ = ["PixProImageProcessor"]
