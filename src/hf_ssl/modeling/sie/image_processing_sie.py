"""SIE inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class SIEImageProcessor(SSLImageProcessor):
    """Resize, center-crop `image_size`, rescale, normalize with the config's mean/std (the training views of the
    `"sie"` policy use the same normalization)."""


__all__ = ["SIEImageProcessor"]
