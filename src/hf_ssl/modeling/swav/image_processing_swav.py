"""SwAV inference preprocessing."""

from __future__ import annotations

from transformers.image_utils import PILImageResampling

from ..base import SSLImageProcessor


class SwAVImageProcessor(SSLImageProcessor):
    """The official evaluation transform (`eval_linear.py`: `Resize(256)`, `CenterCrop(224)`, `ToTensor`,
    `Normalize`): resize the shorter side to 256 (bilinear, torchvision's default), center-crop 224, rescale to
    [0, 1] and normalize with the ImageNet mean/std (the official code uses std 0.228 for the red channel, a typo of
    ImageNet's 0.229, which is used here). Training views (multi-crop) are built from `SwAVConfig.augmentation` by the
    data pipeline; `SwAVImageProcessor.from_ssl_config(config)` matches a config's resolution and normalization."""

    resample = PILImageResampling.BILINEAR


__all__ = ["SwAVImageProcessor"]
