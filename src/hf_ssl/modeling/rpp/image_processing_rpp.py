"""Inference preprocessing of Rethinking Positive Pairs (SimLAP)."""

from __future__ import annotations

from ..base import SSLImageProcessor


class RPPImageProcessor(SSLImageProcessor):
    """The standard ImageNet evaluation transform used by the authors' evaluation code (vitookit `build_transform`,
    `is_train=False`: resize the shorter side to 256 = 224 / 0.875 with bicubic interpolation, center-crop 224,
    ImageNet mean/std). Training views come from `RPPConfig.augmentation` (the `"arbitrary_pair"` view policy)."""


__all__ = ["RPPImageProcessor"]
