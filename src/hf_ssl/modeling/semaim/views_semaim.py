"""`single_view` policy: one augmented view per image (SemAIM / MAE-style "simple augmentation")."""

from __future__ import annotations

from ...training.data import ViewPolicy, register_view_policy


@register_view_policy("single_view")
class SingleViewPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.2, 1.0)))

    def __call__(self, img, rng):
        return {"pixel_values": self.view(img, rng)}
