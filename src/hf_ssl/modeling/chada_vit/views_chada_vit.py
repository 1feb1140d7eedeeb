"""ChAda-ViT views: DINO multi-crop over all channels of an image, plus a per-image channel subset (mask)."""

from __future__ import annotations

import numpy as np
import torch

from ...training.data import MultiCropPolicy, register_view_policy


@register_view_policy("chada_multi_crop")
class ChAdaMultiCropPolicy(MultiCropPolicy):
    """`{"pixel_values": [global..., local...], "channel_mask": [C] bool}`. With probability `channel_subset_prob`
    only a random non-empty subset of the channels is kept: the others are zeroed in every crop and marked absent, so
    batches mix images with different channel counts (ChAda-ViT's heterogeneous-channel training)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_channels = config.num_channels
        self.subset_prob = float(self.aug.get("channel_subset_prob", 0.0))

    def channel_mask(self, rng) -> np.ndarray:
        mask = np.ones(self.num_channels, dtype=bool)
        if self.num_channels > 1 and self.subset_prob and rng.random() < self.subset_prob:
            keep = int(rng.integers(1, self.num_channels + 1))
            mask[:] = False
            mask[rng.choice(self.num_channels, size=keep, replace=False)] = True
        return mask

    def __call__(self, img, rng):
        out = super().__call__(img, rng)
        mask = torch.from_numpy(self.channel_mask(rng))
        out["pixel_values"] = [v * mask[:, None, None].to(v.dtype) for v in out["pixel_values"]]
        out["channel_mask"] = mask
        return out


__all__ = ["ChAdaMultiCropPolicy"]
