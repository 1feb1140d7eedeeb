"""SMTC inference preprocessing (per frame)."""

from __future__ import annotations

from ..base import SSLImageProcessor


class SMTCImageProcessor(SSLImageProcessor):
    """Per-frame preprocessing: shorter side to size / 0.875 (bicubic), centre crop, rescale, normalize (the config's
    mean / std). The exported encoder is a stock image ViTModel applied frame by frame, so the stock form is
    transformers' `BitImageProcessor`: preprocess the frames of a clip as a batch of images."""


__all__ = ["SMTCImageProcessor"]
