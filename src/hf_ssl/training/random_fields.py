"""Gaussian-random-field (GRF) local affine and colour augmentations, a view-policy component for every method.

Paper: P. A. Mansfield, A. Afkanpour, W. R. Morningstar, K. Singhal, "Random Field Augmentations for
Self-Supervised Representation Learning", NeurIPS 2023 Workshop on Symmetry and Geometry in Neural
Representations (PMLR 228), arXiv:2311.03629. No official code was found (searched GitHub / the code index);
this is an independent numpy implementation of the idea described in the paper.

Idea: a global affine or colour transform has one parameter value (angle, scale, hue shift, ...) for the whole
image. A random-field transform lets every parameter vary smoothly from pixel to pixel: each parameter is an
independent, zero-mean, stationary Gaussian random field with a squared-exponential covariance
`k(r) = std**2 * exp(-r**2 / (2 * length_scale**2))`. A very long length scale gives back the global transform;
a short one gives local, elastic-looking deformations and patchy colour changes.

As implemented here:

* `gaussian_random_field` samples fields on a padded periodic grid by filtering white noise in Fourier space
  with the square root of the squared-exponential power spectrum, `H(f) = exp(-pi**2 * length_scale**2 * |f|**2)`,
  then divides by the exact per-pixel standard deviation of that filter (so the marginal variance is `std**2`
  in expectation) and crops the centre (the padding of `2 * length_scale` pixels per side removes the wrap-around
  correlation of the FFT: the residual correlation between opposite borders is < exp(-8)).
* Local affine (`random_affine_displacement`): fields for rotation angle `theta` (radians), log-scale `s`,
  shear `k` and translation `(tx, ty)` (fraction of the image side). At output pixel `p` the image is sampled at
  `A(p) (p - c) + c + t(p)` with `A = exp(s) R(theta) [[1, k], [0, 1]]` and `c` the image centre, i.e. the
  familiar "affine about the centre" transform with per-pixel parameters. Sampling is bilinear with reflected
  borders (`warp_bilinear`), so a constant image stays constant.
* Local colour (`random_color_fields`): per-pixel hue rotation about the grey axis (YIQ chroma rotation, in
  turns), saturation factor `exp(.)` (blend with the per-pixel luma), contrast factor `exp(.)` about the image's
  mean luma, and brightness factor `exp(.)`; applied in that order on [0, 1] values and clipped. Single-channel
  images get contrast and brightness only.
* Long length scales (> 8 px) sample the fields on a coarse grid (4 cells per length scale) and upsample them
  bilinearly (`smooth_random_fields`), which keeps a 224 px view at ~50 ms on one core.
* Strengths: `affine_strength` and `color_strength` multiply the per-parameter standard deviations in
  `AFFINE_STDS` / `COLOR_STDS` (their values at strength 1). Strength 0 is the exact identity (no field is
  sampled). All randomness comes from the `np.random.Generator` passed in.

In a training view (`training.data.ImageAugment`) it is enabled by augmentation-dict keys, applied right after the
random resized crop (before flip / colour jitter / blur):
`random_field` (probability, default 0 = off), `random_field_affine_strength` (1.0), `random_field_color_strength`
(1.0), `random_field_length_scale` (0.25, as a fraction of the view side).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

# per-parameter standard deviations at strength 1.0
AFFINE_STDS: Dict[str, float] = {
    "rotation": 0.15,  # radians (~8.6 degrees)
    "log_scale": 0.10,  # scale factor exp(N(0, 0.1))
    "shear": 0.10,  # x-shear coefficient
    "translation": 0.04,  # fraction of the image side, per axis
}
COLOR_STDS: Dict[str, float] = {
    "hue": 0.04,  # turns (1 = 360 degrees)
    "saturation": 0.30,  # log factor
    "contrast": 0.20,  # log factor
    "brightness": 0.20,  # log factor
}


def _check_length_scale(length_scale: float) -> float:
    length_scale = float(length_scale)
    if not math.isfinite(length_scale) or length_scale <= 0:
        raise ValueError(f"random field length_scale must be a positive finite number, got {length_scale}")
    return length_scale


def gaussian_random_field(shape: Tuple[int, int], length_scale: float, rng: np.random.Generator,
                          num_fields: int = 1, std: float = 1.0, pad: Optional[int] = None) -> np.ndarray:
    """`num_fields` independent stationary GRFs of shape `(H, W)`, returned as float32 `[num_fields, H, W]`.

    Zero mean, marginal standard deviation `std` (exactly, in expectation) and squared-exponential covariance
    with `length_scale` in pixels (the correlation of neighbouring pixels is ~exp(-1 / (2 length_scale**2)), so
    larger length scales give smoother fields). `pad` (default `ceil(2 * length_scale)`, at most twice the image
    side) is the border added on each side before the periodic FFT filtering."""
    length_scale = _check_length_scale(length_scale)
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"random field shape must be positive, got {(h, w)}")
    if std < 0:
        raise ValueError(f"random field std must be >= 0, got {std}")
    if pad is None:
        pad = int(min(math.ceil(2.0 * length_scale), 2 * max(h, w)))
    hp, wp = h + 2 * pad, w + 2 * pad
    noise = rng.standard_normal((int(num_fields), hp, wp))
    fy = np.fft.fftfreq(hp)
    fx = np.fft.rfftfreq(wp)
    c = (math.pi * length_scale) ** 2
    hy, hx = np.exp(-c * fy ** 2), np.exp(-c * fx ** 2)
    # exact per-pixel variance of the periodic filter (Parseval): mean of |H|^2 over the full frequency grid,
    # which factorises because H is separable
    var = np.mean(hy ** 2) * np.mean(np.exp(-c * np.fft.fftfreq(wp) ** 2) ** 2)
    spec = np.fft.rfft2(noise) * (hy[:, None] * hx[None, :])
    field = np.fft.irfft2(spec, s=(hp, wp)) * (std / math.sqrt(var))
    return np.ascontiguousarray(field[:, pad:pad + h, pad:pad + w], dtype=np.float32)


# fields with a long length scale are sampled on a coarse grid with this many cells per length scale and
# interpolated bilinearly (cheap at 224 px; the variance between grid nodes drops by at most ~3%)
COARSE_CELLS_PER_LENGTH = 4.0


def smooth_random_fields(shape: Tuple[int, int], length_scale: float, rng: np.random.Generator,
                         num_fields: int = 1) -> np.ndarray:
    """Unit-variance GRFs like `gaussian_random_field`, but for `length_scale > 2 * COARSE_CELLS_PER_LENGTH`
    pixels sampled on a grid of spacing `length_scale / COARSE_CELLS_PER_LENGTH` and bilinearly upsampled."""
    length_scale = _check_length_scale(length_scale)
    h, w = int(shape[0]), int(shape[1])
    step = length_scale / COARSE_CELLS_PER_LENGTH
    if step <= 2.0:
        return gaussian_random_field((h, w), length_scale, rng, num_fields)
    ny, nx = int(math.ceil((h - 1) / step)) + 1, int(math.ceil((w - 1) / step)) + 1
    coarse = gaussian_random_field((ny, nx), COARSE_CELLS_PER_LENGTH, rng, num_fields)

    def axis(n_fine, n_coarse):
        pos = np.arange(n_fine, dtype=np.float64) / step
        i0 = np.clip(np.floor(pos), 0, max(n_coarse - 2, 0)).astype(np.intp)
        return i0, np.minimum(i0 + 1, n_coarse - 1), (pos - i0).astype(np.float32)

    y0, y1, wy = axis(h, ny)
    x0, x1, wx = axis(w, nx)
    rows = coarse[:, y0] * (1 - wy)[None, :, None] + coarse[:, y1] * wy[None, :, None]
    out = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx
    return np.ascontiguousarray(out, dtype=np.float32)


def _reflect(coord: np.ndarray, n: int) -> np.ndarray:
    """Reflect coordinates into [0, n - 1] (mirror about the border pixel centres, no edge repeat)."""
    if n == 1:
        return np.zeros_like(coord)
    period = 2.0 * (n - 1)
    coord = np.mod(np.abs(coord), period)
    return np.where(coord > n - 1, period - coord, coord)


def warp_bilinear(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Sample `image` (`[H, W]` or `[H, W, C]`) at `p + displacement[:, p]` (`displacement` is `[2, H, W]`, rows
    `(dy, dx)` in pixels) with bilinear interpolation and reflected borders. Returns float32 of the image's shape.
    A zero displacement returns the image values exactly; a constant image stays constant."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    if displacement.shape != (2, h, w):
        raise ValueError(f"displacement must have shape (2, {h}, {w}), got {displacement.shape}")
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    y = _reflect(ys + displacement[0], h)
    x = _reflect(xs + displacement[1], w)
    y0 = np.clip(np.floor(y), 0, max(h - 2, 0)).astype(np.intp)
    x0 = np.clip(np.floor(x), 0, max(w - 2, 0)).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy = (y - y0).astype(np.float32)
    fx = (x - x0).astype(np.float32)
    if img.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def random_affine_displacement(shape: Tuple[int, int], rng: np.random.Generator, strength: float = 1.0,
                               length_scale: float = 8.0, stds: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Displacement `[2, H, W]` (dy, dx in pixels) of a local affine transform whose rotation, log-scale, shear and
    translation are independent GRFs (`length_scale` in pixels) with standard deviations `strength * stds[...]`."""
    if strength < 0:
        raise ValueError(f"affine strength must be >= 0, got {strength}")
    h, w = int(shape[0]), int(shape[1])
    s = dict(AFFINE_STDS, **(stds or {}))
    theta, log_scale, shear, ty, tx = smooth_random_fields((h, w), length_scale, rng, num_fields=5).astype(np.float64)
    side = float(max(h, w))
    theta *= strength * s["rotation"]
    log_scale *= strength * s["log_scale"]
    shear *= strength * s["shear"]
    ty *= strength * s["translation"] * side
    tx *= strength * s["translation"] * side
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    u, v = xs - (w - 1) / 2.0, ys - (h - 1) / 2.0  # centred coordinates (x, y)
    # A = exp(s) R(theta) [[1, k], [0, 1]];  source = A (p - c) + c + t;  displacement = (A - I)(p - c) + t
    cos, sin, scale = np.cos(theta), np.sin(theta), np.exp(log_scale)
    a00, a01 = scale * cos, scale * (cos * shear - sin)
    a10, a11 = scale * sin, scale * (sin * shear + cos)
    dx = (a00 - 1.0) * u + a01 * v + tx
    dy = a10 * u + (a11 - 1.0) * v + ty
    return np.stack([dy, dx])


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def random_color_fields(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                        length_scale: float = 8.0, stds: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Per-pixel hue / saturation / contrast / brightness changes driven by independent GRFs. `image` is float in
    [0, 1], `[H, W]` or `[H, W, 3]`; returns float32 of the same shape, clipped to [0, 1]."""
    if strength < 0:
        raise ValueError(f"color strength must be >= 0, got {strength}")
    s = dict(COLOR_STDS, **(stds or {}))
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]
    rgb = img.ndim == 3 and img.shape[2] == 3
    if img.ndim == 3 and not rgb:
        raise ValueError(f"random colour fields handle [H, W] or [H, W, 3] images, got {img.shape}")
    if rgb:
        hue, sat, con, bri = smooth_random_fields((h, w), length_scale, rng, num_fields=4).astype(np.float64)
        hue *= strength * s["hue"] * 2.0 * math.pi
        yiq = img @ _RGB_TO_YIQ.T
        cos, sin = np.cos(hue), np.sin(hue)
        i, q = yiq[..., 1], yiq[..., 2]
        yiq = np.stack([yiq[..., 0], cos * i - sin * q, sin * i + cos * q], axis=-1)
        img = yiq @ _YIQ_TO_RGB.T
        luma = img @ _LUMA
        img = luma[..., None] + np.exp(strength * s["saturation"] * sat)[..., None] * (img - luma[..., None])
        mean = float(np.mean(img @ _LUMA))
        img = mean + np.exp(strength * s["contrast"] * con)[..., None] * (img - mean)
        img = img * np.exp(strength * s["brightness"] * bri)[..., None]
    else:
        con, bri = smooth_random_fields((h, w), length_scale, rng, num_fields=2).astype(np.float64)
        mean = float(np.mean(img))
        img = mean + np.exp(strength * s["contrast"] * con) * (img - mean)
        img = img * np.exp(strength * s["brightness"] * bri)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def validate_random_field_params(probability: float, affine_strength: float, color_strength: float,
                                 length_scale: float) -> None:
    """ValueError for a probability outside [0, 1], a negative strength or a non-positive length scale."""
    if not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"augmentation['random_field'] is a probability in [0, 1], got {probability}")
    for name, value in (("random_field_affine_strength", affine_strength),
                        ("random_field_color_strength", color_strength)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"augmentation['{name}'] must be a finite number >= 0, got {value}")
    if not math.isfinite(float(length_scale)) or float(length_scale) <= 0:
        raise ValueError(f"augmentation['random_field_length_scale'] (fraction of the view side) must be > 0, "
                         f"got {length_scale}")


def random_field_augment(img: Image.Image, rng: np.random.Generator, affine_strength: float = 1.0,
                         color_strength: float = 1.0, length_scale: float = 0.25,
                         affine_stds: Optional[Dict[str, float]] = None,
                         color_stds: Optional[Dict[str, float]] = None) -> Image.Image:
    """Apply a random local affine warp, then random local colour fields, to a PIL image ("L" or "RGB").

    `length_scale` is a fraction of the longer image side. Strength 0 skips that part (no randomness is drawn),
    so both strengths 0 return the image unchanged."""
    validate_random_field_params(1.0, affine_strength, color_strength, length_scale)
    if affine_strength == 0 and color_strength == 0:
        return img
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"random field augmentation handles 'L' or 'RGB' images, got mode {img.mode!r}")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    h, w = arr.shape[:2]
    ell = float(length_scale) * max(h, w)
    if affine_strength > 0:
        arr = warp_bilinear(arr, random_affine_displacement((h, w), rng, affine_strength, ell, affine_stds))
    if color_strength > 0:
        arr = random_color_fields(arr, rng, color_strength, ell, color_stds)
    out = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(out)  # uint8 [H, W] -> "L", [H, W, 3] -> "RGB"


__all__ = ["AFFINE_STDS", "COLOR_STDS", "gaussian_random_field", "smooth_random_fields", "warp_bilinear",
           "random_affine_displacement", "random_color_fields", "validate_random_field_params", "random_field_augment"]
