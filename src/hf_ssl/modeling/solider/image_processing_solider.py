"""SOLIDER inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class SOLIDERImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop `image_size`, rescale, ImageNet-normalize. (The official downstream code
    resizes person crops to 256 x 128; hf_ssl's views and processor are square, see the method's deviations.)"""


__all__ = ["SOLIDERImageProcessor"]
