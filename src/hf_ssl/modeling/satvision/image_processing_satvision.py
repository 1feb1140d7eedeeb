"""SatVision inference preprocessing for multi-band arrays (numpy/torch, any band count)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BatchFeature

from ..base import SSLImageProcessor


def to_chw_array(image, num_channels: int) -> np.ndarray:
    """A float32 `[C, H, W]` array from a numpy array / torch tensor in `[C, H, W]` or `[H, W, C]` layout (or a 2-D
    single-band array). The layout is recognised by which axis has `num_channels` entries; anything else raises."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a [C, H, W] or [H, W, C] array, got shape {arr.shape}")
    if arr.shape[0] == num_channels:
        out = arr
    elif arr.shape[-1] == num_channels:
        out = arr.transpose(2, 0, 1)
    else:
        raise ValueError(f"image of shape {arr.shape} has no axis with the expected {num_channels} channels/bands "
                         "(pass [C, H, W] or [H, W, C] arrays, or set num_channels / image_mean / image_std to match)")
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_chw(arr: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of `[C, H, W]` to `size = (h, w)`; identity when already that size."""
    if tuple(arr.shape[-2:]) == tuple(size):
        return arr
    return F.interpolate(arr[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


class SatVisionImageProcessor(SSLImageProcessor):
    """Resize the shorter side to `size["shortest_edge"]`, center crop to `crop_size`, optionally rescale and
    normalize each band with its own `image_mean[c]` / `image_std[c]`.

    Multi-band numpy arrays / torch tensors (`[C, H, W]` or `[H, W, C]`, any C) are handled with numpy/torch (the
    PIL backend cannot represent e.g. 14 bands). 3-band PIL images go through the standard PIL path. For multi-band
    configs `from_ssl_config` turns rescaling off (chips are expected to be scaled already, e.g. SatVision's min-max
    scaled reflectances / brightness temperatures)."""

    @classmethod
    def from_ssl_config(cls, config, **kwargs):
        if config.num_channels != 3:
            kwargs.setdefault("do_rescale", False)
        return super().from_ssl_config(config, **kwargs)

    def _is_array_input(self, images) -> bool:
        first = images[0] if isinstance(images, (list, tuple)) and images else images
        return isinstance(first, (np.ndarray, torch.Tensor)) and not isinstance(first, Image.Image)

    def __call__(self, images, **kwargs):
        if self._is_array_input(images):
            return self.preprocess_arrays(images, **kwargs)
        return super().__call__(images, **kwargs)

    def preprocess_arrays(self, images, return_tensors: Optional[str] = "pt", **kwargs) -> BatchFeature:
        """Numpy/torch path for any band count; returns `BatchFeature(pixel_values [B, C, h, w])`."""
        mean = np.asarray(kwargs.get("image_mean", self.image_mean), dtype=np.float32)
        std = np.asarray(kwargs.get("image_std", self.image_std), dtype=np.float32)
        num_channels = len(mean)
        if len(std) != num_channels:
            raise ValueError(f"image_mean has {len(mean)} values but image_std has {len(std)}")
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        do_resize = kwargs.get("do_resize", self.do_resize)
        do_center_crop = kwargs.get("do_center_crop", self.do_center_crop)
        do_rescale = kwargs.get("do_rescale", self.do_rescale)
        do_normalize = kwargs.get("do_normalize", self.do_normalize)
        size = kwargs.get("size", self.size)
        crop = kwargs.get("crop_size", self.crop_size)
        out = []
        for image in images:
            x = torch.from_numpy(to_chw_array(image, num_channels))
            if do_rescale:
                x = x * float(self.rescale_factor)
            if do_resize:
                h, w = x.shape[-2:]
                if "shortest_edge" in size:
                    s = size["shortest_edge"] / min(h, w)
                    x = resize_chw(x, (max(1, round(h * s)), max(1, round(w * s))))
                else:
                    x = resize_chw(x, (size["height"], size["width"]))
            if do_center_crop:
                ch, cw = crop["height"], crop["width"]
                h, w = x.shape[-2:]
                if h < ch or w < cw:
                    x = resize_chw(x, (max(h, ch), max(w, cw)))
                    h, w = x.shape[-2:]
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[:, top : top + ch, left : left + cw]
            if do_normalize:
                x = (x - torch.from_numpy(mean).view(-1, 1, 1)) / torch.from_numpy(std).view(-1, 1, 1)
            out.append(x)
        pixel_values = torch.stack(out)
        if return_tensors in (None, "np"):
            pixel_values = pixel_values.numpy()
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=None)


__all__ = ["SatVisionImageProcessor", "to_chw_array", "resize_chw"]
