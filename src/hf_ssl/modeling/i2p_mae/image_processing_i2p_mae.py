"""I2P-MAE inference preprocessing."""

from __future__ import annotations

import numpy as np
import torch

from ..base import SSLImageProcessor


class I2PMAEImageProcessor(SSLImageProcessor):
    """I2P-MAE reads point clouds, not images. `preprocess_points` is its inference preprocessing (centre, scale into
    the unit sphere, take `num_points` points: the first ones, or a seeded random subset when `seed` is given); the
    inherited image pipeline (resize / crop / ImageNet normalization) describes the 2D teacher's depth-map input and is
    what an exported encoder's `preprocessor_config.json` records."""

    model_input_names = ["point_values"]

    @staticmethod
    def preprocess_points(points, num_points: int = 2048, seed=None) -> torch.Tensor:
        from ...training.points import normalize_points

        pts = normalize_points(np.asarray(points, dtype=np.float64))
        n = len(pts)
        if seed is not None:
            idx = np.random.default_rng(seed).choice(n, size=num_points, replace=n < num_points)
        else:
            idx = np.arange(num_points) % n
        return torch.from_numpy(pts[idx].astype(np.float32)).unsqueeze(0)


__all__ = ["I2PMAEImageProcessor"]
