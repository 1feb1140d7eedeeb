"""InterCLR inference preprocessing."""

from __future__ import annotations

from transformers.image_utils import PILImageResampling

from ..base import SSLImageProcessor


class InterCLRImageProcessor(SSLImageProcessor):
    """The official feature-extraction transform (mmselfsup `extract_pipeline`: `Resize(256)`, `CenterCrop(224)`,
    `ToTensor`, `Normalize` with the ImageNet mean/std). Training views come from `InterCLRConfig.augmentation`
    (view policy `"interclr"`)."""

    resample = PILImageResampling.BILINEAR


__all__ = ["InterCLRImageProcessor"]
