"""UMD inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class UMDImageProcessor(SSLImageProcessor):
    """Resize the shorter side, center-crop to the model resolution, rescale to [0, 1] and normalize with mean 0.5 /
    std 0.5 so pixels lie in [-1, 1] (the official evaluation pipeline `resize_small | central_crop |
    value_range(-1, 1)`; use `UMDImageProcessor.from_ssl_config(config)` for the configured resolution)."""

    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"shortest_edge": 66}
    crop_size = {"height": 64, "width": 64}


__all__ = ["UMDImageProcessor"]
