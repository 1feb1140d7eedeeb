"""CrossVideoMAE views: one sampled window of a clip seen twice (two clip-consistent augmentations, each with its own
tube mask) plus one frame of that window as an image (own augmentation, own random patch mask)."""

from __future__ import annotations

import torch

from ...training.data import ImageAugment, _augment_kwargs, register_view_policy
from ...training.video import VideoViewPolicy
from ..masking import random_mask, tube_mask


@register_view_policy("crossvideomae")
class CrossVideoMAEViewPolicy(VideoViewPolicy):
    """`{"pixel_values_videos": [clip, clip_aug], "bool_masked_pos": [mask, mask_aug], "pixel_values": frame,
    "image_mask": [N_img], "synthetic_clip": bool}`."""

    def __init__(self, config):
        super().__init__(config)
        self.augment = self.clip_augment()
        self.frame_augment = ImageAugment(self.size, self.aug.get("frame_crop_scale", (0.4, 1.0)), self.mean,
                                          self.std, **_augment_kwargs(self.aug))
        self.grid = config.token_grid
        self.image_patches = (self.size // config.image_backbone_config.patch_size) ** 2

    def video_mask(self, rng) -> torch.Tensor:
        cfg = self.config
        t, h, w = self.grid
        if cfg.video_mask_type == "tube":
            return torch.from_numpy(tube_mask((t, h, w), cfg.video_mask_ratio, rng=rng))
        return torch.from_numpy(random_mask(t * h * w, cfg.video_mask_ratio, rng=rng))

    def __call__(self, frames, rng):
        clip, synthetic = self.sample(frames, rng)
        frame = clip[int(rng.integers(len(clip)))]
        return {"pixel_values_videos": [self.augment(clip, rng), self.augment(clip, rng)],
                "bool_masked_pos": [self.video_mask(rng), self.video_mask(rng)],
                "pixel_values": self.frame_augment(frame, rng),
                "image_mask": torch.from_numpy(random_mask(self.image_patches, self.config.image_mask_ratio, rng=rng)),
                "synthetic_clip": synthetic}


__all__ = ["CrossVideoMAEViewPolicy"]
