"""MFM training view: one random resized crop + flip and its removed-frequency mask (official `MFMTransform`)."""

from __future__ import annotations

import torch

from ...training.data import ViewPolicy, register_view_policy
from .modeling_mfm import filter_masks


@register_view_policy("frequency_masked")
class FrequencyMaskedPolicy(ViewPolicy):
    """`pixel_values` (crop scale `crop_scale`, default (0.2, 1), flip 0.5, no colour jitter) and `frequency_mask`
    `[H, W]` (True = removed): low-pass with probability `config.resolved_low_pass_prob`, else high-pass."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.2, 1.0)))
        self.masks = filter_masks(config.image_size, config.image_size, config.mask_radius)
        self.low_pass_prob = config.resolved_low_pass_prob

    def __call__(self, img, rng):
        pixel_values = self.view(img, rng)
        high_pass = rng.random() >= self.low_pass_prob
        return {"pixel_values": pixel_values, "frequency_mask": self.masks[int(high_pass)].clone()}


__all__ = ["FrequencyMaskedPolicy"]
