"""MFM inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class MFMImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale to [0, 1], normalize with the ImageNet
    mean/std (the official fine-tuning/evaluation transform). Training views (random resized crop with scale
    (0.2, 1), flip, low-/high-pass frequency mask) come from `MFMConfig.augmentation`."""


__all__ = ["MFMImageProcessor"]
