"""FSFM training views: one view per image plus its CRFR-P mask and covered-region mask.

With `region_source="grid"` the region map is the documented grid fallback (`masking_fsfm.grid_region_parser`),
so masks are drawn here in the data workers, one region per image. With `region_source="face_parsing"` the view
carries only `pixel_values`; masks are then drawn by the model from `parsing_map` / `region_ids` in the batch or
from a parser registered with `model.set_region_parser`.
"""

from __future__ import annotations

import torch

from ...training.data import ViewPolicy, register_view_policy
from ..backbones import vit_grid
from .masking_fsfm import crfrp_mask, grid_region_groups, grid_region_parser, region_membership


@register_view_policy("fsfm")
class FSFMViewPolicy(ViewPolicy):
    """Resized view (official default: plain resize; `crop_scale`/`horizontal_flip` give the optional
    `--apply_simple_augment` RRC + flip) and, for grid regions, `bool_masked_pos` + `region_mask`."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (1.0, 1.0)))
        self.ratio = float(config.mask_ratio)
        self.membership = None
        if config.region_source == "grid":
            patch = config.backbone_config.patch_size
            grid_regions = tuple(config.grid_regions)
            labels = grid_region_parser(config.image_size, config.image_size, grid_regions)
            self.membership = region_membership(labels, grid_region_groups(grid_regions), patch_size=patch,
                                                grid=vit_grid(config.backbone_config))
            self.candidates = list(range(self.membership.shape[0]))

    def __call__(self, img, rng):
        out = {"pixel_values": self.view(img, rng)}
        if self.membership is not None:
            mask, region, _ = crfrp_mask(self.membership, self.ratio, self.candidates, rng=rng)
            out["bool_masked_pos"] = torch.from_numpy(mask)
            out["region_mask"] = torch.from_numpy(region)
        return out


__all__ = ["FSFMViewPolicy"]
