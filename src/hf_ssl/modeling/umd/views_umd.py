"""UMD training views: one lightly augmented view per image (masks and timesteps are drawn by the model,
because the mask ratio depends on whether a sample takes the noise-free mask step or a noise step)."""

from __future__ import annotations

from ...training.data import ViewPolicy, register_view_policy


@register_view_policy("umd")
class UMDViewPolicy(ViewPolicy):
    """Random resized crop (`crop_scale`, official inception crop with area_min 80%) + flip, normalized."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.8, 1.0)))

    def __call__(self, img, rng):
        return {"pixel_values": self.view(img, rng)}


__all__ = ["UMDViewPolicy"]
