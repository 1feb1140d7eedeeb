"""G-SimCLR inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class GSimCLRImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop to `image_size`, rescale to [0, 1] and normalize (the shared evaluation
    transform; the official code only resizes to 224 px and scales to [0, 1]). Training views come from
    `GSimCLRConfig.augmentation`."""


__all__ = ["GSimCLRImageProcessor"]
