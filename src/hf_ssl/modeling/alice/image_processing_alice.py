"""Alice inference preprocessing."""

from __future__ import annotations

from ...training.volumes import VolumeProcessorMixin
from ..base import SSLImageProcessor


class AliceImageProcessor(VolumeProcessorMixin, SSLImageProcessor):
    """`preprocess_volumes(volumes)` -> `pixel_values_volumes [B, C, D, H, W]`: multi-page TIFF / slice lists / arrays
    to [0, 1] (CT: window to [0, 1] beforehand, official a_min -125 / a_max 225), trilinear resize, normalise."""


__all__ = ["AliceImageProcessor"]
