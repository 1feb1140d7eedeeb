"""NeRF-MAE inference preprocessing."""

from __future__ import annotations

from ...training.volumes import VolumeProcessorMixin
from ..base import SSLImageProcessor


class NeRFMAEImageProcessor(VolumeProcessorMixin, SSLImageProcessor):
    """`preprocess_volumes(volumes)` -> `pixel_values_volumes [B, C, D, H, W]`: multi-page TIFF / slice lists / arrays
    to [0, 1], trilinear resize to the model grid, normalise (identity for radiance grids: mean 0, std 1)."""


__all__ = ["NeRFMAEImageProcessor"]
