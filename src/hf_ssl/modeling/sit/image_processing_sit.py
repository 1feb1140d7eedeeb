"""SiT inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class SiTImageProcessor(SSLImageProcessor):
    """Resize the shorter side to size/0.875, center-crop, rescale to [0, 1] and normalize (ImageNet mean/std),
    the DeiT evaluation transform the official SiT fine-tuning code adopts. Training views (two augmented crops,
    random rotation, GMML-style corruption) are built by the `"sit"` view policy from `SiTConfig.augmentation`."""


__all__ = ["SiTImageProcessor"]
