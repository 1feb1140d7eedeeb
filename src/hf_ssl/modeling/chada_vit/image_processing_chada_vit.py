"""ChAda-ViT inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class ChAdaViTImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, normalize each channel with the config's
    per-channel mean/std (ImageNet for RGB data by default). Training views come from the `"chada_multi_crop"` policy."""


__all__ = ["ChAdaViTImageProcessor"]
