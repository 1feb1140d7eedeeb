"""CAE inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class CAEImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale to [0, 1] and normalize with the ImageNet
    mean/std: the official evaluation transform (`--imagenet_default_mean_and_std`, crop ratio 224/256). Training
    views (random resized crop, flip, block mask) are built from `CAEConfig.augmentation` by the data pipeline."""


__all__ = ["CAEImageProcessor"]
