"""MixedAE training views: one MAE-style view per image (random resized crop, flip, normalize). Images are mixed
inside the model, across the batch, so the view policy produces single views only."""

from __future__ import annotations

from ...training.data import ViewPolicy, register_view_policy


@register_view_policy("mixedae")
class MixedAEViewPolicy(ViewPolicy):
    """`{"pixel_values": [C, H, W]}` (one augmented view)."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.2, 1.0)))

    def __call__(self, img, rng):
        return {"pixel_values": self.view(img, rng)}


__all__ = ["MixedAEViewPolicy"]
