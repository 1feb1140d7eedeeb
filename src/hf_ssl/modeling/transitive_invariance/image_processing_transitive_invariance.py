"""Transitive invariance inference preprocessing (per image / per frame)."""

from __future__ import annotations

from ..base import SSLImageProcessor


class TransitiveInvarianceImageProcessor(SSLImageProcessor):
    """Shorter side to size / 0.875 (bicubic), centre crop, rescale, normalize (the config's mean / std); applied to
    images, or to every frame of a clip (the model averages the frame features)."""


__all__ = ["TransitiveInvarianceImageProcessor"]
