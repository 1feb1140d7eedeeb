"""Views of heuristic multi-task pre-training: two augmented views of an image, a SimMIM mask for view 1, and the
example's label (when the dataset has one) for the supervised head.

`{"pixel_values": [view1, view2], "bool_masked_pos": bool [N], "labels": int (-1 = no label) or float multi-hot
[num_classes] (a list of class ids in the example)}`. `SSLViewDataset` hands the raw example to this policy
(`wants_example = True`), so labels travel without `with_labels=True`; images without a label get -1 and the
classification head skips them.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ...training.data import LABEL_KEYS, ViewPolicy, register_view_policy
from ..masking import upsampled_random_mask


@register_view_policy("heuristic_mtl")
class HeuristicMTLViewPolicy(ViewPolicy):
    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.08, 1.0)))
        self.uses_mim = config.uses_mim
        if self.uses_mim:
            self.grid = config.patch_grid()
            self.mask_scale = config.mask_patch_size // config.model_patch_size
            self.mask_ratio = float(config.mask_ratio)
        self.num_classes = int(config.num_classes)
        self.label_column = self.aug.get("label_column")

    def label(self, example: Optional[Dict[str, Any]]):
        if not example:
            return -1
        keys = (self.label_column,) if self.label_column else LABEL_KEYS
        for key in keys:
            value = example.get(key)
            if value is None:
                continue
            if isinstance(value, (list, tuple, np.ndarray)):  # multi-label: class ids -> multi-hot
                target = torch.zeros(self.num_classes, dtype=torch.float32)
                for c in value:
                    c = int(c)
                    if not 0 <= c < self.num_classes:
                        raise ValueError(f"label {c} out of range for num_classes={self.num_classes}")
                    target[c] = 1.0
                return target
            value = int(value)
            if value >= self.num_classes:
                raise ValueError(f"label {value} out of range for num_classes={self.num_classes}")
            return value
        return -1

    def __call__(self, img, rng: np.random.Generator, example: Optional[Dict[str, Any]] = None):
        out = {"pixel_values": [self.view(img, rng), self.view(img, rng)]}
        if self.uses_mim:
            mask = upsampled_random_mask(self.grid, self.mask_scale, self.mask_ratio, rng=rng)
            out["bool_masked_pos"] = torch.from_numpy(mask)
        out["labels"] = self.label(example)
        return out


__all__ = ["HeuristicMTLViewPolicy"]
