"""CMD inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class CMDImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256 (bicubic), center-crop 224, rescale, ImageNet-normalize (as DINO/EsViT/CMD
    evaluation). Training views come from the `"multi_crop"` policy in the config."""


__all__ = ["CMDImageProcessor"]
