"""VideoMAE inference preprocessing (per frame)."""

from __future__ import annotations

from ..video_base import VideoSSLImageProcessor


class SSLVideoMAEImageProcessor(VideoSSLImageProcessor):
    """Per-frame preprocessing: shorter side to 256 (bicubic), centre crop 224, rescale, ImageNet normalization (the
    official fine-tuning / evaluation transform); stock form: transformers' `VideoMAEImageProcessor`. Named with the
    `SSL` prefix so it never shadows transformers' own `VideoMAEImageProcessor`."""


__all__ = ["SSLVideoMAEImageProcessor"]
