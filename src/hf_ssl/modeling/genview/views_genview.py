"""GenView views: MoCo v3's asymmetric pair, where the second view's source image may be a generated variation of
the original (adaptive view generation: the generator's noise level grows with the image's foreground proportion)."""

from __future__ import annotations

import bisect
import importlib
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ...training.data import ImageAugment, ViewPolicy, _augment_kwargs, register_view_policy


def load_generator(path: Optional[str]) -> Optional[Callable]:
    """Import `"package.module:function"` -> the callable (None stays None)."""
    if path is None:
        return None
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import the GenView generator {path!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"GenView generator {path!r} is not callable")
    return fn


def _otsu_threshold(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_ratio(img: Image.Image) -> float:
    """Foreground proportion of an image, estimated without a model: the per-pixel distance (RGB) to the median
    colour of the image border, thresholded by Otsu's method; the fraction above the threshold. 0 for a flat image.
    (The paper measures it with a CLIP foreground map; any callable can replace this one.)"""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    dist = np.linalg.norm(arr - np.median(border, axis=0), axis=-1)
    if dist.max() - dist.min() < 1e-3:
        return 0.0
    return float((dist > _otsu_threshold(dist.ravel())).mean())


def adaptive_noise_level(ratio: float, thresholds: Sequence[float], levels: Sequence[int]) -> int:
    """`levels[i]` where i = number of thresholds <= ratio: more foreground -> stronger variation."""
    return int(levels[bisect.bisect_right(list(thresholds), ratio)])


@register_view_policy("genview")
class GenViewPolicy(ViewPolicy):
    """`{"pixel_values": [view1, view2], "generated_view": bool, "noise_level": int}`; view 1 is always made from the
    original image, view 2 from the generated variation when a generator is configured (official "singleview":
    one original and one generated view per pair)."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        kwargs = _augment_kwargs(a)
        blur, solarize = list(a.get("view_gaussian_blur", [1.0, 0.1])), list(a.get("view_solarize", [0.0, 0.2]))
        scale = a.get("crop_scale", (0.2, 1.0))
        self.views = [ImageAugment(config.image_size, scale, self.mean, self.std,
                                   **{**kwargs, "gaussian_blur": blur[i], "solarize": solarize[i]}) for i in range(2)]
        self.generator = load_generator(a.get("generator"))
        self.generation_prob = float(a.get("generation_prob", 1.0))
        self.noise_levels = list(a.get("noise_levels", [0, 100, 200, 300, 400]))
        self.thresholds = list(a.get("foreground_thresholds", [0.1, 0.2, 0.3, 0.4]))
        self.foreground_ratio = foreground_ratio

    def generate(self, img: Image.Image, rng) -> tuple:
        """(source of view 2, generated?, noise level)."""
        if self.generator is None or rng.random() >= self.generation_prob:
            return img, False, 0
        level = adaptive_noise_level(self.foreground_ratio(img), self.thresholds, self.noise_levels)
        out = self.generator(img, level, rng)
        if not isinstance(out, Image.Image):
            raise ValueError(f"GenView generator must return a PIL image, got {type(out).__name__}")
        return out.convert(img.mode), True, level

    def __call__(self, img, rng):
        source, generated, level = self.generate(img, rng)
        return {"pixel_values": [self.views[0](img, rng), self.views[1](source, rng)], "generated_view": generated,
                "noise_level": level}


__all__ = ["GenViewPolicy", "foreground_ratio", "adaptive_noise_level", "load_generator"]
