"""Inference preprocessing of the joint image-volume method."""

from __future__ import annotations

from ...training.volumes import VolumeProcessorMixin
from ..base import SSLImageProcessor


class ImageVolumeClusteringImageProcessor(VolumeProcessorMixin, SSLImageProcessor):
    """`preprocess_volumes(volumes, volume_depth=...)` -> `pixel_values_volumes [B, C, D, H, W]` (multi-page TIFF /
    slice lists / arrays to [0, 1], trilinear resize, normalise); the ordinary image call preprocesses single 2-D
    images / slices for the 2-D encoder (its saved config stays a stock 2-D one)."""


__all__ = ["ImageVolumeClusteringImageProcessor"]
