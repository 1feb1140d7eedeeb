"""Batched photometric augmentation on the training device.

The PIL view policies (`training/data.py`) do all augmentation per image on CPU workers. On a GPU the
photometric half of a SimCLR/BYOL/SwAV/DINO-style policy (colour jitter, random grayscale, Gaussian blur,
solarize) is the expensive part of that CPU work, and it is embarrassingly parallel. With
`build_view_generator(config, device_photometric=True)` (CLI: `hf-ssl pretrain --device-augmentation`) the CPU
workers do only the geometric part (random resized crop, random fields, flip) and mark each example with
`photometric_on_device`; `SSLTrainer` then applies `DevicePhotometricAugment` to the whole batch of every view on
the training device, with independent random parameters per image, before the model sees it.

The operations reproduce the PIL ones of `ImageAugment` on [0, 1] floats (tests compare them with PIL):

* brightness `f`: `x * f` (PIL `ImageEnhance.Brightness`: blend with black);
* contrast `f`: blend with the mean of the image's luma (PIL `ImageEnhance.Contrast`);
* saturation `f`: blend with the image's luma (PIL `ImageEnhance.Color`);
* hue `h`: rotate the HSV hue by `h` turns (PIL HSV round trip in `data._adjust_hue`);
* the four jitter operations in an independent random order per image (as torchvision / `color_jitter` do), each
  factor uniform in `[max(0, 1 - s), 1 + s]` (hue in `[-s, s]`), results clamped to [0, 1];
* grayscale: ITU-R 601-2 luma (PIL `convert("L")`), replicated to the three channels;
* Gaussian blur with sigma uniform in `blur_sigma` (PIL `GaussianBlur(radius=sigma)`), separable kernel of
  radius `ceil(3 sigma)`, edge pixels replicated;
* solarize: invert values >= 0.5 (PIL `ImageOps.solarize(threshold=128)`).

Random numbers come from torch's default generator of the device, so the Trainer's RNG checkpointing makes a
resumed run draw the same augmentations as an uninterrupted one. Differences from the CPU path: 8-bit rounding
between operations is not reproduced (the device path stays in float), so pixels can differ by a few 1/255.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F

FLAG = "photometric_on_device"  # example / batch key set by deferred view policies
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def luma(x: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` -> `[B, 1, H, W]` luma."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True) if x.shape[1] == 3 else x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + _per_sample(factor) * (x - mean)).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    gray = luma(x)
    return (gray + _per_sample(factor) * (x - gray)).clamp(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    h = torch.where(argmax == 0, ((g - b) / safe) % 6,
                    torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    return torch.stack([h % 1.0, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([
        torch.stack([v, t, p], 1), torch.stack([q, v, p], 1), torch.stack([p, v, t], 1),
        torch.stack([p, q, v], 1), torch.stack([t, p, v], 1), torch.stack([v, p, q], 1),
    ], dim=0)  # [6, B, 3, H, W]
    index = i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return choices.gather(0, index).squeeze(0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([(hsv[:, :1] + _per_sample(shift)) % 1.0, hsv[:, 1:]], dim=1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    return luma(x).expand_as(x) if x.shape[1] == 3 else x


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: Optional[float] = None) -> torch.Tensor:
    """Per-image Gaussian blur (`sigma` `[B]`), one separable grouped convolution for the whole batch. The kernel
    radius is `ceil(3 * max_sigma)` (give the largest sigma that can occur, so nothing is read back from the
    device; default: read `sigma.max()`)."""
    b, c, h, w = x.shape
    max_sigma = float(sigma.max()) if max_sigma is None else float(max_sigma)
    radius = int(math.ceil(3.0 * max_sigma))
    radius = max(1, min(radius, min(h, w) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1).clamp_min(1e-3)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, K]
    kernel = kernel.repeat_interleave(c, dim=0)  # one per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, -1), groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class DevicePhotometricAugment:
    """Per-image random photometric augmentation of normalized view batches, on their device.

    Reads the same keys of `config.augmentation` as `ImageAugment`: `color_jitter` (probability),
    `color_jitter_strength` (brightness, contrast, saturation, hue), `grayscale`, `gaussian_blur`, `blur_sigma`,
    `solarize`. Inputs and outputs are normalized with `mean` / `std` (the config's), so the model sees exactly what
    the CPU path would give it."""

    def __init__(self, augmentation: Dict[str, Any], mean: Sequence[float], std: Sequence[float]):
        a = augmentation
        self.color_jitter = float(a.get("color_jitter", 0.0))
        self.strength = tuple(float(v) for v in a.get("color_jitter_strength", (0.4, 0.4, 0.4, 0.1)))
        self.grayscale = float(a.get("grayscale", 0.0))
        self.gaussian_blur = float(a.get("gaussian_blur", 0.0))
        self.blur_sigma = tuple(float(v) for v in a.get("blur_sigma", (0.1, 2.0)))
        self.solarize = float(a.get("solarize", 0.0))
        for name in ("color_jitter", "grayscale", "gaussian_blur", "solarize"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augmentation[{name!r}] is a probability in [0, 1], got {p}")
        if len(self.strength) != 4 or any(s < 0 for s in self.strength):
            raise ValueError(f"color_jitter_strength must be 4 non-negative values, got {self.strength}")
        if self.strength[3] > 0.5:
            raise ValueError(f"hue jitter strength must be <= 0.5, got {self.strength[3]}")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    @classmethod
    def from_config(cls, config) -> "DevicePhotometricAugment":
        return cls(config.augmentation, config.image_mean, config.image_std)

    def _stats(self, x):
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    @staticmethod
    def _uniform(n, low, high, like):
        return torch.rand(n, device=like.device, dtype=like.dtype) * (high - low) + low

    @torch.no_grad()
    def augment_unit(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Augment `[B, C, H, W]` images in [0, 1]; `mask` `[B]` (bool) selects the images to augment."""
        b = x.shape[0]
        rgb = x.shape[1] == 3
        mask = torch.ones(b, dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device).bool()

        def draw(p):
            return (torch.rand(b, device=x.device) < p) & mask

        if self.color_jitter > 0:
            apply = draw(self.color_jitter)
            bs, cs, ss, hs = self.strength
            ops = []
            if bs > 0:
                ops.append((adjust_brightness, self._uniform(b, max(0.0, 1 - bs), 1 + bs, x)))
            if cs > 0:
                ops.append((adjust_contrast, self._uniform(b, max(0.0, 1 - cs), 1 + cs, x)))
            if ss > 0 and rgb:
                ops.append((adjust_saturation, self._uniform(b, max(0.0, 1 - ss), 1 + ss, x)))
            if hs > 0 and rgb:
                ops.append((adjust_hue, self._uniform(b, -hs, hs, x)))
            if ops:
                # an independent random order per image: at round r every image applies its r-th operation
                order = torch.argsort(torch.rand(b, len(ops), device=x.device), dim=1)
                # (every operation runs on the whole batch and is selected per image: no host-side branching,
                # so the step never waits for the device)
                for r in range(len(ops)):
                    out = x
                    for k, (fn, param) in enumerate(ops):
                        chosen = apply & (order[:, r] == k)
                        out = torch.where(_per_sample(chosen), fn(x, param), out)
                    x = out
        if self.grayscale > 0 and rgb:
            x = torch.where(_per_sample(draw(self.grayscale)), to_grayscale(x), x)
        if self.gaussian_blur > 0:
            apply = draw(self.gaussian_blur)
            sigma = self._uniform(b, self.blur_sigma[0], self.blur_sigma[1], x)
            x = torch.where(_per_sample(apply), gaussian_blur(x, sigma, self.blur_sigma[1]), x)
        if self.solarize > 0:
            x = torch.where(_per_sample(draw(self.solarize)), solarize(x), x)
        return x

    @torch.no_grad()
    def __call__(self, views: Union[torch.Tensor, Sequence[torch.Tensor]], mask: Optional[torch.Tensor] = None):
        """Augment normalized views (one `[B, C, H, W]` tensor or a list of them, e.g. multi-crop)."""
        if isinstance(views, (list, tuple)):
            return type(views)(self(v, mask) for v in views)
        if not torch.is_tensor(views) or views.dim() != 4 or not views.is_floating_point():
            raise ValueError("device photometric augmentation expects float view batches [B, C, H, W]")
        if views.shape[1] != len(self.mean):
            raise ValueError(f"views have {views.shape[1]} channels but the normalization has {len(self.mean)}")
        mean, std = self._stats(views)
        unit = (views.float() * std.float() + mean.float()).clamp(0, 1)
        out = self.augment_unit(unit, mask)
        return ((out - mean.float()) / std.float()).to(views.dtype)


__all__ = ["DevicePhotometricAugment", "FLAG", "adjust_brightness", "adjust_contrast", "adjust_saturation",
           "adjust_hue", "to_grayscale", "gaussian_blur", "solarize", "rgb_to_hsv", "hsv_to_rgb"]
