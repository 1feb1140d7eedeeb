"""GroCo inference preprocessing."""

from __future__ import annotations

from transformers.image_utils import PILImageResampling

from ..base import SSLImageProcessor


class GroCoImageProcessor(SSLImageProcessor):
    """The official evaluation transform (`learning_by_sorting/dataloader/utils.py`, `transform_type='val'`:
    `Resize(256)` (bilinear, torchvision's default), `CenterCrop(224)`, `ToTensor`, ImageNet `Normalize`): resize the
    shorter side to 256, center-crop 224, rescale to [0, 1] and normalize with the ImageNet mean/std. Training views
    come from `GroCoConfig.augmentation` (the `"groco"` view policy)."""

    resample = PILImageResampling.BILINEAR


__all__ = ["GroCoImageProcessor"]
