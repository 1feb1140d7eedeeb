"""GFSLT-VLP inference preprocessing (per frame)."""

from __future__ import annotations

from ..video_base import VideoSSLImageProcessor


class GFSLTVLPImageProcessor(VideoSSLImageProcessor):
    """Per-frame preprocessing: shorter side to size / 0.875 (bicubic), centre crop, rescale, normalize (the config's
    mean / std); stock form: transformers' `VideoMAEImageProcessor`."""


__all__ = ["GFSLTVLPImageProcessor"]
