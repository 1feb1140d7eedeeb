"""FSFM inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class FSFMImageProcessor(SSLImageProcessor):
    """Resize the shorter side to 256, center-crop 224, rescale and normalize (the official fine-tuning eval
    transform with crop ratio 224/256); mean/std follow the config (ImageNet by default; the official pretraining
    computes them on the face data, e.g. VGGFace2 `configuration_fsfm.VGGFACE2_MEAN/STD`)."""


__all__ = ["FSFMImageProcessor"]
