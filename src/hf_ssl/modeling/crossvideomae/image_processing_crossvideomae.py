"""CrossVideoMAE inference preprocessing (per frame)."""

from __future__ import annotations

from ..video_base import VideoSSLImageProcessor


class CrossVideoMAEImageProcessor(VideoSSLImageProcessor):
    """Per-frame preprocessing: shorter side to 256 (bicubic), centre crop 224, rescale, ImageNet normalization; stock
    form: transformers' `VideoMAEImageProcessor`."""


__all__ = ["CrossVideoMAEImageProcessor"]
