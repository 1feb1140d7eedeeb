"""Multistain views by stain simulation (colour deconvolution), for MADELEINE on ordinary image data.

A real multistain dataset has, per case, an H&E slide and serial sections with other stains (IHC markers), never
pixel-aligned. Offline we SIMULATE that: colour deconvolution (Ruifrok & Johnston 2001, `skimage.color.rgb2hed` /
`hed2rgb`) turns an image into Hematoxylin / Eosin / DAB concentration maps and re-renders one "section" per stain:

* a colour image (e.g. `skimage.data.immunohistochemistry()`, a real IHC tile) is deconvolved directly;
* a grey image (the built-in digits) is treated as tissue density: bright ink on a dark background (or the reverse,
  decided from the border) becomes the concentration of every stain, DAB additionally modulated by a smooth random
  "marker-positive" field;
* `HE` renders (H, E, 0), any other stain name renders (0.6 H, 0, DAB) (a hematoxylin counterstain plus the marker);
* each stain gets its own random crop (area `stain_crop_scale`), flip and concentration jitter (`stain_jitter`,
  multiplicative per channel, as in HED augmentation), i.e. sections that are related but not aligned.

This is stain simulation, not real IHC: documented as such in the method's deviations.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from ...training.data import ViewPolicy, random_resized_crop_box, register_view_policy, to_normalized_tensor

H_GAIN, E_GAIN, D_GAIN = 0.12, 0.06, 0.12


def stain_concentrations(img: Image.Image, rng=None) -> np.ndarray:
    """`[H, W, 3]` Hematoxylin / Eosin / DAB concentrations of an RGB image (see the module docstring)."""
    from skimage.color import rgb2hed

    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    saturation = (rgb.max(axis=2) - rgb.min(axis=2)).mean()
    if saturation > 0.08:  # a stained colour image: real colour deconvolution
        return np.clip(rgb2hed(rgb), 0, None)
    lum = rgb.mean(axis=2)
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]]).mean()
    density = 1.0 - lum if border > 0.5 else lum
    if rng is None:
        field = np.ones_like(density)
    else:  # smooth random marker-positive field in [0.3, 1]
        coarse = rng.uniform(0.3, 1.0, (4, 4))
        field = np.asarray(Image.fromarray(coarse.astype(np.float32), mode="F").resize(density.shape[::-1],
                                                                                         Image.BILINEAR))
    return np.stack([density * H_GAIN, density * E_GAIN, density * field * D_GAIN], axis=2)


def render_stain(hed: np.ndarray, stain: str, jitter=None) -> Image.Image:
    """RGB rendering of one stain from concentrations `[H, W, 3]` (`HE`: H + E; others: counterstain H + DAB)."""
    from skimage.color import hed2rgb

    h, e, d = hed[..., 0], hed[..., 1], hed[..., 2]
    zero = np.zeros_like(h)
    mix = np.stack([h, e, zero], axis=2) if stain.upper() in ("HE", "H&E") else np.stack([0.6 * h, zero, d], axis=2)
    if jitter is not None:
        mix = mix * jitter.reshape(1, 1, 3)
    rgb = np.clip(hed2rgb(mix), 0, 1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@register_view_policy("multistain")
class MultistainViewPolicy(ViewPolicy):
    """`{"pixel_values": [stain_0, stain_1, ...]}`, one simulated section per `config.stains` (H&E first)."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.size = config.image_size
        self.stains = list(config.stains)
        self.scale = tuple(a.get("stain_crop_scale", (0.6, 1.0)))
        self.flip = float(a.get("horizontal_flip", 0.5))
        self.jitter = float(a.get("stain_jitter", 0.2))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def section(self, hed: np.ndarray, stain: str, rng) -> torch.Tensor:
        jit = rng.uniform(1 - self.jitter, 1 + self.jitter, 3) if self.jitter else None
        img = render_stain(hed, stain, jit)
        left, top, w, h = random_resized_crop_box(img.width, img.height, self.scale, rng=rng)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if self.flip and rng.random() < self.flip:
            img = ImageOps.mirror(img)
        return to_normalized_tensor(img, self._mean, self._std)

    def __call__(self, img, rng):
        hed = stain_concentrations(img, rng)
        return {"pixel_values": [self.section(hed, stain, rng) for stain in self.stains]}


@register_view_policy("multistain_eval")
class MultistainEvalPolicy(ViewPolicy):
    """Deterministic H&E rendering at `image_size` (no crop, no jitter): the slide k-NN evaluation reads."""

    def __init__(self, config):
        super().__init__(config)
        self.size = config.image_size
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, img, rng=None):
        hed = stain_concentrations(img, None)
        out = render_stain(hed, "HE").resize((self.size, self.size), Image.BICUBIC)
        return {"pixel_values": to_normalized_tensor(out, self._mean, self._std)}


__all__ = ["MultistainViewPolicy", "MultistainEvalPolicy", "stain_concentrations", "render_stain"]
