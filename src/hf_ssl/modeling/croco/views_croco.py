"""CroCo pair views: two images of one scene (a real pair from the dataset, or a synthetic second view made by a
random homography of the single image, flagged as such), each cropped independently, asymmetric colour jitter
(official `crop224+acolor`), normalized, plus the exact-count random mask of the first image."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ...training.data import ViewPolicy, color_jitter, register_view_policy, to_normalized_tensor
from ..backbones import vit_grid
from ..masking import random_mask


def homography_coefficients(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 8 coefficients `(a, b, c, d, e, f, g, h)` of the projective map taking the 4 points `src [4, 2]` to
    `dst [4, 2]`: `x' = (a x + b y + c) / (g x + h y + 1)`, `y' = (d x + e y + f) / (g x + h y + 1)` (the form of
    PIL's `Image.PERSPECTIVE`, which maps OUTPUT pixel coordinates to INPUT ones)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.asarray(rows), np.asarray(rhs))


def apply_homography(coeffs: np.ndarray, points: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f, g, h = coeffs
    x, y = np.asarray(points, dtype=np.float64).T
    w = g * x + h * y + 1
    return np.stack([(a * x + b * y + c) / w, (d * x + e * y + f) / w], axis=1)


@register_view_policy("croco_pair")
class CroCoPairPolicy(ViewPolicy):
    """`{"pixel_values": [first, second], "bool_masked_pos": [N], "synthetic_pair": bool}`: the first image is
    masked and reconstructed, the second is the fully visible reference. `SSLViewDataset` hands a dataset's second
    image column to `__call__(img, rng, pair=...)` because this policy declares `pair_image_key`."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = config.image_size
        self.resize = int(a.get("crop_resize") or round(self.size * 256 / 224))
        if self.resize < self.size:
            raise ValueError(f"augmentation['crop_resize'] ({self.resize}) must be >= image_size ({self.size})")
        self.source = a.get("pair_source", "auto")
        self.pair_image_key = None if self.source == "homography" else (a.get("pair_column") or "auto")
        self.jitter = float(a.get("color_jitter", 1.0))
        self.jitter_strength = tuple(a.get("color_jitter_strength", (0.4, 0.4, 0.4, 0.0)))
        self.homography_strength = float(a.get("homography_strength", 0.15))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        grid = vit_grid(config.backbone_config, (config.image_size, config.image_size))
        self.num_patches = grid[0] * grid[1]
        self.num_masked = config.num_masked(self.num_patches)

    def set_pair_column(self, key: Optional[str]) -> None:
        if key is None and self.source == "column":
            raise ValueError("augmentation['pair_source']='column' but the dataset has no second image column; "
                             "name it with augmentation['pair_column'] or use pair_source='auto'/'homography'")

    # -- geometry --------------------------------------------------------------------------------------
    def _resize_short(self, img: Image.Image) -> Image.Image:
        s = self.resize / min(img.size)
        return img.resize((max(self.resize, round(img.width * s)), max(self.resize, round(img.height * s))),
                          Image.BICUBIC)

    def _crop_origin(self, img: Image.Image, rng) -> Tuple[int, int]:
        return int(rng.integers(0, img.width - self.size + 1)), int(rng.integers(0, img.height - self.size + 1))

    def random_crop(self, img: Image.Image, rng) -> Image.Image:
        """Official `RandomCrop(size)` after resizing the shorter side to `crop_resize` (the crops of the two
        images of a pair are drawn independently)."""
        img = self._resize_short(img)
        left, top = self._crop_origin(img, rng)
        return img.crop((left, top, left + self.size, top + self.size))

    def synthetic_pair(self, img: Image.Image, rng):
        """(first crop, second view, coefficients): the second view is the same square region seen through a random
        homography (each corner moved by up to `homography_strength * size` pixels); `coefficients` map second-view
        pixel coordinates to coordinates in the resized source image."""
        img = self._resize_short(img)
        left, top = self._crop_origin(img, rng)
        s = self.size
        first = img.crop((left, top, left + s, top + s))
        square = np.array([[0, 0], [s, 0], [s, s], [0, s]], dtype=np.float64)
        jitter = rng.uniform(-1, 1, size=(4, 2)) * self.homography_strength * s
        corners = square + np.array([left, top]) + jitter
        coeffs = homography_coefficients(square, corners)
        second = img.transform((s, s), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)
        return first, second, coeffs

    # -- views -----------------------------------------------------------------------------------------
    def _finish(self, view: Image.Image, rng) -> torch.Tensor:
        if self.jitter and rng.random() < self.jitter:  # asymmetric: each image draws its own factors
            view = color_jitter(view, self.jitter_strength, rng)
        return to_normalized_tensor(view, self._mean, self._std)

    def __call__(self, img, rng, pair: Optional[Image.Image] = None):
        if pair is None:
            if self.source == "column":
                raise ValueError("this CroCo policy needs real pairs (pair_source='column') but got a single image")
            first, second, _ = self.synthetic_pair(img, rng)
        else:
            first, second = self.random_crop(img, rng), self.random_crop(pair, rng)
        mask = random_mask(self.num_patches, self.num_masked / self.num_patches, rng=rng)
        return {"pixel_values": [self._finish(first, rng), self._finish(second, rng)],
                "bool_masked_pos": torch.from_numpy(mask), "synthetic_pair": pair is None}


__all__ = ["CroCoPairPolicy", "homography_coefficients", "apply_homography"]
