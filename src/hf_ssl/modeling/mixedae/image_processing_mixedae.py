"""MixedAE inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class MixedAEImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, normalize with the ImageNet mean/std (MAE's
    evaluation transform). Training views (random resized crop + flip) come from `MixedAEConfig.augmentation`; the
    mixing itself happens inside the model on the batch."""


__all__ = ["MixedAEImageProcessor"]
