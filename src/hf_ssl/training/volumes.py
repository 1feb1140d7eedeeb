"""3-D volumes: decoding, numpy augmentation, view policies and the built-in synthetic volume datasets.

Layout: a volume batch is `pixel_values_volumes` `[B, C, D, H, W]` (MONAI / medical convention). On disk a volume
is ONE multi-page TIFF (one page per depth slice, 8- or 16-bit grey, RGB or RGBA pages), or a dataset column
holding the list of its slice images. `SSLViewDataset` hands policies that declare `wants_frames = True` all pages
of the file (`data.decode_frames`); `frames_to_volume` turns them into a float array in [0, 1]. Optionally
(`augmentation["intensity_normalization"] = "percentile"`) each decoded volume is rescaled per channel from its
own intensity percentiles to [0, 1] (`normalize_volume_intensity`), in training, evaluation and the image processor.

Augmentation is numpy only (no torchvision / MONAI): random 3-D crop of a random volume fraction and per-axis
aspect, trilinear resize to the model's grid, independent flips of the three axes, optional in-plane 90 degree
rotations, intensity scale / shift / gamma / Gaussian noise, per-channel normalisation.

Built-in data (`builtin:shapes3d`, `builtin:radiance_shapes3d`): no labelled 3-D volume ships inside an installed
package (scikit-image's `cells3d` / `brain` and nibabel's examples are downloaded on demand or unlabelled), so these
are SYNTHETIC: ten solid-shape classes (sphere, ellipsoid, box, cylinder, torus, hollow sphere, cone, capsule,
octahedron, cross) with a random upright pose (any rotation about the depth axis, tilt up to 25 degrees), position,
size, aspect, sinusoidal texture, background level and noise, on a 32^3
grid; a fixed seeded split of 100 train / 30 test volumes per class. `shapes3d` stores one 8-bit grey page per
slice (a medical / microscopy-like intensity volume); `radiance_shapes3d` stores RGBA pages = a radiance-field-like
grid (colour of a random hue times the texture, alpha = occupancy / normalised density, colour 0 in empty space),
the input NeRF-MAE expects. They are smoke-test data, not a benchmark.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .data import register_view_policy

VOLUME_KEY = "pixel_values_volumes"
SHAPE_CLASSES = ("sphere", "ellipsoid", "box", "cylinder", "torus", "hollow_sphere", "cone", "capsule",
                 "octahedron", "cross")
BUILTIN_VOLUME_DATASETS = ("shapes3d", "radiance_shapes3d")
BUILTIN_VOLUME_SIZE = 32
BUILTIN_TRAIN_PER_CLASS = 100
BUILTIN_TEST_PER_CLASS = 30


# ----------------------------------------------------------------------------------------------------
# synthetic labelled shapes
# ----------------------------------------------------------------------------------------------------
def _random_rotation(rng: np.random.Generator, max_tilt_degrees: float = 25.0) -> np.ndarray:
    """A random pose of an upright object (scans and scenes are roughly gravity / axis aligned): any rotation about
    the depth axis, then a tilt of up to `max_tilt_degrees` about a random horizontal axis."""
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])  # coordinates are (z, y, x): rotate the (y, x) plane
    axis = np.array([0.0, *np.random.default_rng(rng.integers(1 << 31)).normal(size=2)])
    axis /= np.linalg.norm(axis) + 1e-12
    t = np.deg2rad(rng.uniform(0, max_tilt_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    tilt = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k  # Rodrigues
    return tilt @ rz


def _shape_distance(name: str, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Approximate signed distance (negative inside) of a unit-sized shape at local coordinates `q [..., 3]`."""
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    if name == "sphere":
        return np.linalg.norm(q, axis=-1) - 1.0
    if name == "ellipsoid":
        axes = np.array([1.0, rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)])
        return (np.linalg.norm(q / axes, axis=-1) - 1.0) * axes.min()
    if name == "box":
        half = np.array([rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9)])
        d = np.abs(q) - half
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(axis=-1), 0)
    if name == "cylinder":
        r = rng.uniform(0.4, 0.6)
        return np.maximum(np.sqrt(x ** 2 + y ** 2) - r, np.abs(z) - 1.0)
    if name == "torus":
        big, small = rng.uniform(0.65, 0.8), rng.uniform(0.18, 0.28)
        return np.sqrt((np.sqrt(x ** 2 + y ** 2) - big) ** 2 + z ** 2) - small
    if name == "hollow_sphere":
        thickness = rng.uniform(0.12, 0.2)
        return np.abs(np.linalg.norm(q, axis=-1) - 0.85) - thickness
    if name == "cone":
        rmax = rng.uniform(0.6, 0.9)
        radius = rmax * (1.0 - z) / 2.0
        return np.maximum(np.sqrt(x ** 2 + y ** 2) - radius, np.abs(z) - 1.0) * 0.7
    if name == "capsule":
        half, r = rng.uniform(0.45, 0.6), rng.uniform(0.3, 0.4)
        zc = np.clip(z, -half, half)
        return np.sqrt(x ** 2 + y ** 2 + (z - zc) ** 2) - r
    if name == "octahedron":
        return (np.abs(x) + np.abs(y) + np.abs(z) - 1.0) * 0.577
    if name == "cross":
        w = rng.uniform(0.2, 0.3)
        bars = []
        for axis in range(3):
            half = np.full(3, w)
            half[axis] = 1.0
            d = np.abs(q) - half
            bars.append(np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(axis=-1), 0))
        return np.minimum(np.minimum(bars[0], bars[1]), bars[2])
    raise ValueError(f"unknown shape {name!r}; choose one of {SHAPE_CLASSES}")


def generate_shape_volume(name: str, rng: np.random.Generator, size: int = BUILTIN_VOLUME_SIZE,
                          radiance: bool = False) -> np.ndarray:
    """One synthetic volume of shape class `name`: `[D, H, W]` grey values in [0, 1], or with `radiance=True`
    `[D, H, W, 4]` = RGB colour + alpha (occupancy as normalised density, colour 0 where empty)."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)  # [D, H, W, 3] (z, y, x)
    scale = rng.uniform(0.45, 0.75)
    shift = rng.uniform(-0.15, 0.15, size=3)
    rot = _random_rotation(rng)
    local = (grid - shift) @ rot / scale
    dist = _shape_distance(name, local, rng) * scale
    softness = 1.0 / size
    occupancy = 1.0 / (1.0 + np.exp(np.clip(dist / softness, -50, 50)))
    freq = rng.normal(size=3)
    freq *= rng.uniform(3.0, 9.0) / (np.linalg.norm(freq) + 1e-8)
    texture = 0.7 + 0.3 * np.sin(grid @ freq + rng.uniform(0, 2 * np.pi))
    noise = rng.uniform(0.02, 0.06)
    if not radiance:
        background = rng.uniform(0.0, 0.2)
        foreground = rng.uniform(0.6, 1.0) * texture
        vol = background + occupancy * (foreground - background) + rng.normal(scale=noise, size=occupancy.shape)
        return np.clip(vol, 0.0, 1.0)
    hue = rng.uniform(0, 1)
    colour = np.array([0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    rgb = colour * texture[..., None] + rng.normal(scale=noise, size=occupancy.shape + (3,))
    rgb = np.clip(rgb, 0.0, 1.0) * (occupancy[..., None] > 0.01)
    return np.concatenate([rgb, occupancy[..., None]], axis=-1)


def save_volume_tiff(volume: np.ndarray, path: str, bits: int = 8) -> None:
    """Write `[D, H, W]` (grey) or `[D, H, W, 3|4]` (RGB / RGBA) values in [0, 1] as a multi-page TIFF, one page
    per depth slice; grey volumes may be 16-bit (`bits=16`)."""
    volume = np.clip(np.asarray(volume, dtype=np.float64), 0.0, 1.0)
    if volume.ndim == 3 and bits == 16:
        pages = [Image.fromarray(np.round(s * 65535).astype(np.uint16)) for s in volume]
    elif bits == 8:
        mode = {3: "L"}.get(volume.ndim) or {3: "RGB", 4: "RGBA"}[volume.shape[-1]]
        pages = [Image.fromarray(np.round(s * 255).astype(np.uint8), mode=mode) for s in volume]
    else:
        raise ValueError(f"bits must be 8 (any layout) or 16 (grey), got {bits}")
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_deflate")


def materialize_volume_builtin(name: str, root: str) -> str:
    """Write a built-in synthetic volume dataset as `<root>/<name>/{train,test}/<NN_shape>/<index>.tif` (fixed seed,
    fixed split) and return its path; the folder is reused once complete."""
    if name not in BUILTIN_VOLUME_DATASETS:
        raise ValueError(f"Unknown built-in volume dataset {name!r}; available: {BUILTIN_VOLUME_DATASETS}")
    out = os.path.join(root, name)
    if os.path.exists(os.path.join(out, ".complete")):
        return out
    radiance = name == "radiance_shapes3d"
    tmp = out + f".tmp-{os.getpid()}"
    index = 0
    for split, per_class, seed in (("train", BUILTIN_TRAIN_PER_CLASS, 0), ("test", BUILTIN_TEST_PER_CLASS, 1)):
        for c, shape in enumerate(SHAPE_CLASSES):
            rng = np.random.default_rng([seed, c, 1 if radiance else 0])
            d = os.path.join(tmp, split, f"{c:02d}_{shape}")
            os.makedirs(d, exist_ok=True)
            for _ in range(per_class):
                vol = generate_shape_volume(shape, rng, radiance=radiance)
                save_volume_tiff(vol, os.path.join(d, f"{index:05d}.tif"))
                index += 1
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    open(os.path.join(out, ".complete"), "w").close()
    return out


# ----------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------
def _page_array(page: Image.Image) -> np.ndarray:
    """One slice as float `[H, W, c]` in [0, 1]: 8-bit pages / 255, integer (16-bit) pages / 65535, float as is."""
    mode = page.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(page, dtype=np.float32) / 65535.0
    elif mode == "F":
        arr = np.asarray(page, dtype=np.float32)
    else:
        if mode not in ("L", "RGB", "RGBA"):
            page = page.convert("RGBA" if "A" in mode or "transparency" in page.info else "RGB")
        arr = np.asarray(page, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def frames_to_volume(frames: Sequence[Image.Image], num_channels: int) -> np.ndarray:
    """Slices (PIL pages, in depth order) -> float32 `[C, D, H, W]` in [0, 1] with `num_channels` channels: grey
    pages repeat to 3 channels, RGB(A) pages give their luma for 1 channel and drop alpha for 3; 4 channels need
    RGBA pages (colour + density / alpha, radiance grids)."""
    if not frames:
        raise ValueError("a volume needs at least one slice")
    vol = np.stack([_page_array(f) for f in frames])  # [D, H, W, c]
    c = vol.shape[-1]
    if c != num_channels:
        if num_channels == 1 and c in (3, 4):
            vol = vol[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            vol = vol[..., None]
        elif num_channels == 3 and c == 1:
            vol = np.repeat(vol, 3, axis=-1)
        elif num_channels == 3 and c == 4:
            vol = vol[..., :3]
        else:
            raise ValueError(f"cannot make {num_channels}-channel volumes from {c}-channel slices "
                             f"(page mode {frames[0].mode!r})")
    return np.ascontiguousarray(vol.transpose(3, 0, 1, 2), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------
# augmentation (numpy)
# ----------------------------------------------------------------------------------------------------
def _resize_axis(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    m = x.shape[axis]
    if m == n:
        return x
    if m % n == 0:  # integer down-sampling: box average (no aliasing)
        f = m // n
        shape = x.shape[:axis] + (n, f) + x.shape[axis + 1:]
        return x.reshape(shape).mean(axis=axis + 1)
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    shape = [1] * x.ndim
    shape[axis] = n
    w = (pos - i0).reshape(shape).astype(x.dtype)
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w


INTENSITY_NORMALIZATIONS = (None, "percentile")
DEFAULT_INTENSITY_PERCENTILES = (0.5, 99.5)


def normalize_volume_intensity(volume: np.ndarray, mode: Optional[str] = None,
                               percentiles: Sequence[float] = DEFAULT_INTENSITY_PERCENTILES) -> np.ndarray:
    """Per-volume, per-channel intensity normalisation of a `[C, D, H, W]` array (the usual preprocessing of CT / MRI
    / microscopy stacks, e.g. torchio's `RescaleIntensity(percentiles=...)`, nnU-Net's per-image normalisation):
    `"percentile"` maps the `percentiles` (low, high) of each channel to [0, 1] and clips; `None` returns the volume
    unchanged. Scanner- or stack-specific intensity levels then carry no identity a model could latch onto."""
    check_intensity_normalization(mode, percentiles)
    if mode is None:
        return volume
    vol = np.asarray(volume, dtype=np.float32)
    lo = np.percentile(vol, percentiles[0], axis=(1, 2, 3), keepdims=True)
    hi = np.percentile(vol, percentiles[1], axis=(1, 2, 3), keepdims=True)
    return np.clip((vol - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def intensity_settings(augmentation) -> Tuple[Optional[str], Tuple[float, float]]:
    """`(mode, percentiles)` of an augmentation policy's `intensity_normalization` / `intensity_percentiles` keys,
    validated (the one reader of these keys: view policies, image processors and config validation)."""
    augmentation = augmentation or {}
    mode = augmentation.get("intensity_normalization")
    percentiles = tuple(augmentation.get("intensity_percentiles", DEFAULT_INTENSITY_PERCENTILES))
    check_intensity_normalization(mode, percentiles)
    return mode, percentiles


def check_intensity_normalization(mode, percentiles) -> None:
    if mode not in INTENSITY_NORMALIZATIONS:
        raise ValueError(f"intensity_normalization must be one of {INTENSITY_NORMALIZATIONS}, got {mode!r}")
    if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"intensity_percentiles must be (low, high) with 0 <= low < high <= 100, got "
                         f"{list(percentiles)}")


def resize_volume(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear (half-pixel centres, `align_corners=False`) resize of `[C, D, H, W]` to `[C, *shape]`; integer
    down-sampling factors use box averaging."""
    out = volume
    for axis, n in zip((1, 2, 3), shape):
        out = _resize_axis(out, int(n), axis)
    return out


def random_crop_box_3d(dims: Sequence[int], scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3),
                       rng: np.random.Generator = None) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(start, size) per axis of a random 3-D crop covering a volume fraction in `scale`, each side's aspect
    log-uniform in `ratio` around the cube root (the 3-D analogue of the Inception crop)."""
    rng = rng or np.random.default_rng()
    dims = [int(d) for d in dims]
    frac = rng.uniform(scale[0], scale[1])
    base = frac ** (1.0 / 3.0)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    sizes = [int(round(min(1.0, base * math.exp(rng.uniform(*log_r))) * d)) for d in dims]
    sizes = [max(1, min(s, d)) for s, d in zip(sizes, dims)]
    starts = [int(rng.integers(0, d - s + 1)) for s, d in zip(sizes, dims)]
    return tuple(starts), tuple(sizes)


class VolumeAugment:
    """One random 3-D view: random crop (`crop_scale` volume fraction, `crop_ratio` per-axis aspect) resized to
    `shape` `(D, H, W)`, a flip of each axis with probability `flip`, an in-plane (H, W) rotation by a random
    multiple of 90 degrees with probability `rotate90`, then with probability `intensity` a random intensity scale
    (`intensity_scale` range), shift (`intensity_shift` range), gamma (`gamma` range) and Gaussian noise (std up to
    `noise_std`) on `intensity_channels` (None = all; radiance grids jitter colour only, not density), and
    per-channel normalisation. `__call__(volume, rng, return_params=True)` also returns the crop box and flags
    (Alice's overlap regions)."""

    def __init__(self, shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 crop_scale: Sequence[float] = (0.3, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 flip: float = 0.5, rotate90: float = 0.0, intensity: float = 0.8,
                 intensity_scale: Sequence[float] = (0.9, 1.1), intensity_shift: Sequence[float] = (-0.1, 0.1),
                 gamma: Sequence[float] = (0.8, 1.25), noise_std: float = 0.02,
                 intensity_channels: Optional[Sequence[int]] = None):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"volume view shape must be three positive sizes (D, H, W), got {shape}")
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {list(crop_scale)}")
        for name, p in (("flip", flip), ("rotate90", rotate90), ("intensity", intensity)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if min(gamma) <= 0:
            raise ValueError(f"gamma range must be positive, got {list(gamma)}")
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1, 1)
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.flip, self.rotate90, self.intensity = float(flip), float(rotate90), float(intensity)
        self.intensity_scale, self.intensity_shift = tuple(intensity_scale), tuple(intensity_shift)
        self.gamma, self.noise_std = tuple(gamma), float(noise_std)
        self.intensity_channels = None if intensity_channels is None else list(intensity_channels)

    def crop(self, volume: np.ndarray, rng: np.random.Generator):
        start, size = random_crop_box_3d(volume.shape[1:], self.crop_scale, self.crop_ratio, rng)
        sl = tuple(slice(s, s + n) for s, n in zip(start, size))
        return resize_volume(volume[(slice(None),) + sl], self.shape), (start, size)

    def jitter(self, vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ch = self.intensity_channels if self.intensity_channels is not None else list(range(vol.shape[0]))
        if ch and self.intensity and rng.random() < self.intensity:
            part = np.clip(vol[ch], 0.0, 1.0) ** rng.uniform(*self.gamma)
            part = part * rng.uniform(*self.intensity_scale) + rng.uniform(*self.intensity_shift)
            if self.noise_std:
                part = part + rng.normal(scale=rng.uniform(0, self.noise_std), size=part.shape)
            vol = vol.copy()
            vol[ch] = part
        return vol

    def __call__(self, volume: np.ndarray, rng: np.random.Generator, return_params: bool = False):
        vol, (start, size) = self.crop(volume, rng)
        flips = tuple(bool(rng.random() < self.flip) for _ in range(3))
        for axis, f in enumerate(flips):
            if f:
                vol = np.flip(vol, axis=axis + 1)
        k = int(rng.integers(1, 4)) if self.rotate90 and rng.random() < self.rotate90 else 0
        if k:
            vol = np.rot90(vol, k, axes=(2, 3))
        vol = self.jitter(np.ascontiguousarray(vol, dtype=np.float32), rng)
        tensor = torch.from_numpy(np.ascontiguousarray((vol - self.mean) / self.std, dtype=np.float32))
        if return_params:
            return tensor, {"start": start, "size": size, "flips": flips, "rot90": k,
                            "volume_shape": tuple(volume.shape[1:])}
        return tensor


def volume_augment_from_config(config, shape: Optional[Sequence[int]] = None, **overrides) -> VolumeAugment:
    """A :class:`VolumeAugment` from `config.augmentation` keys (`crop_scale`, `crop_ratio`, `flip`, `rotate90`,
    `intensity`, `intensity_scale`, `intensity_shift`, `gamma`, `noise_std`, `intensity_channels`)."""
    a = dict(config.augmentation)
    keys = ("crop_scale", "crop_ratio", "flip", "rotate90", "intensity", "intensity_scale", "intensity_shift",
            "gamma", "noise_std", "intensity_channels")
    kwargs = {k: a[k] for k in keys if k in a}
    kwargs.update(overrides)
    return VolumeAugment(shape or volume_shape(config), config.image_mean, config.image_std, **kwargs)


def volume_shape(config) -> Tuple[int, int, int]:
    """The model's volume size `(D, H, W)`: `config.volume_depth` (default `image_size`) x image_size x image_size."""
    depth = getattr(config, "volume_depth", None) or config.image_size
    return int(depth), int(config.image_size), int(config.image_size)


# ----------------------------------------------------------------------------------------------------
# view policies
# ----------------------------------------------------------------------------------------------------
class VolumePolicy:
    """Base of volume view policies: receives all slices of a file (`wants_frames`), in their own mode
    (`frame_mode = None`: 16-bit pages keep their range), and builds the `[C, D, H, W]` array."""

    wants_frames = True
    frame_mode = None

    def __init__(self, config):
        self.config = config
        self.aug = dict(config.augmentation)
        self.num_channels = int(config.num_channels)
        self.shape = volume_shape(config)
        # optional per-volume intensity normalisation (`augmentation["intensity_normalization"]`), applied to the
        # decoded volume before any view, for training and evaluation alike (the image processor does the same)
        self.intensity_normalization, self.intensity_percentiles = intensity_settings(self.aug)

    def volume(self, frames) -> np.ndarray:
        vol = frames_to_volume(frames, self.num_channels)
        return normalize_volume_intensity(vol, self.intensity_normalization, self.intensity_percentiles)


@register_view_policy("volume_eval")
class VolumeEvalPolicy(VolumePolicy):
    """Deterministic: the whole volume resized to the model's grid, normalised (k-NN / inference)."""

    def __init__(self, config):
        super().__init__(config)
        self.mean = np.asarray(config.image_mean, dtype=np.float32).reshape(-1, 1, 1, 1)
        self.std = np.asarray(config.image_std, dtype=np.float32).reshape(-1, 1, 1, 1)

    def __call__(self, frames, rng=None) -> Dict[str, Any]:
        vol = resize_volume(self.volume(frames), self.shape)
        return {VOLUME_KEY: torch.from_numpy(np.ascontiguousarray((vol - self.mean) / self.std, dtype=np.float32))}


@register_view_policy("volume_two_view")
class VolumeTwoViewPolicy(VolumePolicy):
    """Two independently augmented 3-D views (`pixel_values_volumes = [v1, v2]`)."""

    def __init__(self, config):
        super().__init__(config)
        self.view = volume_augment_from_config(config)

    def __call__(self, frames, rng) -> Dict[str, Any]:
        vol = self.volume(frames)
        return {VOLUME_KEY: [self.view(vol, rng), self.view(vol, rng)]}


@register_view_policy("volume_masked")
class VolumeMaskedPolicy(VolumePolicy):
    """One augmented 3-D view plus a random 3-D patch mask `bool_masked_pos [N]` over the encoder's token grid
    (exactly `round(N * mask_ratio)` masked), for masked volume modelling."""

    def __init__(self, config):
        super().__init__(config)
        from ..modeling.backbones import video_patch_grid

        self.view = volume_augment_from_config(config)
        grid = video_patch_grid(config.backbone_config)
        self.num_patches = int(np.prod(grid))
        self.ratio = float(self.aug.get("mask_ratio", getattr(config, "mask_ratio", 0.75)))

    def __call__(self, frames, rng) -> Dict[str, Any]:
        from ..modeling.masking import random_mask

        vol = self.view(self.volume(frames), rng)
        return {VOLUME_KEY: vol, "bool_masked_pos": torch.from_numpy(random_mask(self.num_patches, self.ratio, rng))}


__all__ = ["VOLUME_KEY", "SHAPE_CLASSES", "BUILTIN_VOLUME_DATASETS", "generate_shape_volume", "save_volume_tiff",
           "materialize_volume_builtin", "frames_to_volume", "resize_volume", "random_crop_box_3d", "VolumeAugment",
           "volume_augment_from_config", "volume_shape", "VolumePolicy", "VolumeEvalPolicy", "VolumeTwoViewPolicy",
           "VolumeMaskedPolicy", "normalize_volume_intensity", "intensity_settings", "INTENSITY_NORMALIZATIONS",
           "DEFAULT_INTENSITY_PERCENTILES"]


# ----------------------------------------------------------------------------------------------------
# inference preprocessing shared by the volume methods' image processors
# ----------------------------------------------------------------------------------------------------
class VolumeProcessorMixin:
    """Adds `preprocess_volumes` to an `SSLImageProcessor` subclass: volumes given as multi-page files / lists of
    slices (PIL), `[D, H, W]` or `[C, D, H, W]` arrays are turned into `pixel_values_volumes [B, C, D, H, W]`
    (values to [0, 1] as in training, trilinear resize to `(volume_depth or crop height, crop height, crop width)`,
    normalised with `image_mean` / `image_std`). The saved processor config stays a stock 2-D one (slices)."""

    model_input_names = [VOLUME_KEY]
    intensity_normalization = None
    intensity_percentiles = DEFAULT_INTENSITY_PERCENTILES

    @classmethod
    def from_ssl_config(cls, config, **kwargs):
        """As the base, plus the config's per-volume intensity normalisation (`augmentation` keys
        `intensity_normalization` / `intensity_percentiles`), so inference sees volumes as training did."""
        mode, percentiles = intensity_settings(getattr(config, "augmentation", None))
        if mode is not None:
            kwargs.setdefault("intensity_normalization", mode)
            kwargs.setdefault("intensity_percentiles", list(percentiles))
        return super().from_ssl_config(config, **kwargs)

    def preprocess_volumes(self, volumes, volume_depth: Optional[int] = None, return_tensors: str = "pt"):
        from transformers import BatchFeature

        from .data import decode_frames

        norm, percentiles = self.intensity_normalization, tuple(self.intensity_percentiles)
        check_intensity_normalization(norm, percentiles)

        mean = np.asarray(self.image_mean, dtype=np.float32).reshape(-1, 1, 1, 1)
        std = np.asarray(self.image_std, dtype=np.float32).reshape(-1, 1, 1, 1)
        c = mean.shape[0]
        h, w = self.crop_size["height"], self.crop_size["width"]
        shape = (int(volume_depth or h), h, w)
        out = []
        for v in volumes:
            if isinstance(v, np.ndarray) or torch.is_tensor(v):
                arr = np.asarray(v, dtype=np.float32)
                arr = arr[None] if arr.ndim == 3 else arr
                if arr.ndim != 4 or arr.shape[0] != c:
                    raise ValueError(f"array volumes must be [D, H, W] or [{c}, D, H, W], got {list(arr.shape)}")
            else:
                arr = frames_to_volume(decode_frames(v, None), c)
            arr = normalize_volume_intensity(arr, norm, percentiles)
            out.append((resize_volume(arr, shape) - mean) / std)
        data = {VOLUME_KEY: torch.from_numpy(np.stack(out).astype(np.float32))}
        return BatchFeature(data=data, tensor_type=return_tensors if return_tensors != "pt" else None)


__all__ += ["VolumeProcessorMixin"]
