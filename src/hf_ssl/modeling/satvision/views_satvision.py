"""SatVision training view for multi-band arrays: random resized crop (+ optional flip) on numpy arrays, per-band
normalization and a SimMIM mask (official `MimTransform`: RandomResizedCropNP(scale=(0.67, 1), ratio=(3/4, 4/3)),
resize, MimMaskGenerator)."""

from __future__ import annotations

import numpy as np
import torch

from ...training.data import random_resized_crop_box, register_view_policy
from ..masking import upsampled_random_mask
from .image_processing_satvision import resize_chw, to_chw_array


@register_view_policy("multiband_masked")
class MultiBandMaskedPolicy:
    """`(image, rng) -> {"pixel_values": [C, S, S], "bool_masked_pos": [N]}` for numpy arrays / tensors with any band
    count (`[C, H, W]` or `[H, W, C]`) and for PIL images (converted to arrays, scaled by 1/255)."""

    def __init__(self, config):
        self.config = config
        aug = dict(config.augmentation)
        self.size = config.image_size
        self.scale = tuple(aug.get("crop_scale", (0.67, 1.0)))
        self.ratio = tuple(aug.get("crop_ratio", (3 / 4, 4 / 3)))
        self.flip = float(aug.get("horizontal_flip", 0.0))
        self.rescale = float(aug.get("rescale_factor", 1.0))
        self.num_channels = config.num_channels
        self.mean = torch.tensor(config.image_mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(config.image_std, dtype=torch.float32).view(-1, 1, 1)
        self.grid = config.patch_grid()
        self.mask_scale = config.mask_patch_size // config.model_patch_size
        self.mask_ratio = float(config.mask_ratio)

    def to_array(self, image) -> np.ndarray:
        if hasattr(image, "getbands"):  # PIL image
            arr = np.asarray(image, dtype=np.float32) / 255.0
            return to_chw_array(arr, self.num_channels)
        return to_chw_array(image, self.num_channels) * self.rescale

    def crop(self, arr: np.ndarray, rng: np.random.Generator):
        _, h, w = arr.shape
        left, top, cw, ch = random_resized_crop_box(w, h, self.scale, self.ratio, rng=rng)
        x = torch.from_numpy(np.ascontiguousarray(arr[:, top : top + ch, left : left + cw]))
        x = resize_chw(x, (self.size, self.size))
        flipped = bool(self.flip and rng.random() < self.flip)
        if flipped:
            x = x.flip(-1)
        return x, (left, top, cw, ch), flipped

    def __call__(self, image, rng: np.random.Generator):
        x, _, _ = self.crop(self.to_array(image), rng)
        x = (x - self.mean) / self.std
        mask = upsampled_random_mask(self.grid, self.mask_scale, self.mask_ratio, rng=rng)
        return {"pixel_values": x.contiguous(), "bool_masked_pos": torch.from_numpy(mask)}


__all__ = ["MultiBandMaskedPolicy"]
