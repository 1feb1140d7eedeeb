"""OBoW inference preprocessing."""

from __future__ import annotations

from transformers.image_utils import PILImageResampling

from ..base import SSLImageProcessor


class OBoWImageProcessor(SSLImageProcessor):
    """The official evaluation transform (`Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize` with the ImageNet
    mean/std). Training views come from `OBoWConfig.augmentation` (view policy `"obow"`)."""

    resample = PILImageResampling.BILINEAR


__all__ = ["OBoWImageProcessor"]
