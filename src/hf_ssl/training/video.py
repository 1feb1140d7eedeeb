"""Video clips for every video method: decoding, frame sampling, clip-consistent augmentation, view policies and
the built-in `moving_digits` clips. PIL / numpy only (no torchvision, no video decoder needed).

Clip sources (`decode_clip`):

* a multi-frame file decoded by PIL: animated GIF / APNG / WebP, multi-page TIFF (one frame per page);
* a dataset column holding a list of frames (`datasets` `List(Image())` / `Sequence(Image())`), each frame any value
  `data.decode_image` accepts (PIL image, `{"bytes", "path"}`, bytes, array, path);
* a `[T, H, W(, C)]` uint8 numpy array;
* mp4 / webm / mkv / avi files *only if* PyAV happens to be installed (never a dependency).

A single image (one-frame file) is a clip of length 1: `VideoViewPolicy.frames_or_synthetic` turns it into a static or
synthetic camera-motion clip (smooth pan + zoom, like CroCo's synthetic homography pairs) and the example carries
`synthetic_clip=True`, which the models log as `synthetic_clip_fraction`.

`SSLViewDataset` hands a policy the decoded frame list (not one image) when the policy sets `wants_frames = True`,
decoded by the policy's `frame_decoder` (here `decode_clip`); anything undecodable raises `UndecodableImage`, so
corrupt clips are skipped and counted like corrupt images.

Layout: clips are `pixel_values_videos` `[T, C, H, W]` per example, `[B, T, C, H, W]` after collation (the layout of
transformers' video models, e.g. `VideoMAEModel(pixel_values=...)`).

Frame sampling (`sample_frame_indices`) follows the dense sampling of VideoMAE / SlowFast: `num_frames` frames
`sampling_rate` apart starting at a random offset (training) or centred (evaluation); clips shorter than the window are
loop-padded (indices wrap around), so short clips never fail.

Clip-consistent augmentation (`ClipAugment`): the crop box, flip and every colour / grayscale / blur parameter are
drawn ONCE per clip and applied to all of its frames (the "group" transforms of VideoMAE / RSPNet), so motion is the
only thing that changes along time.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, ImageSequence

from .data import (UndecodableImage, ViewPolicy, _adjust_hue, decode_image, random_resized_crop_box,
                   register_view_policy, to_normalized_tensor)

VIDEO_FILE_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
MAX_DECODED_FRAMES = 4096  # a guard against decompression bombs disguised as clips


# ----------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------
def _frames_from_pil(img: Image.Image, mode: Optional[str]) -> List[Image.Image]:
    frames = []
    for frame in ImageSequence.Iterator(img):
        frame.load()  # raises on truncated data
        if frame.width == 0 or frame.height == 0:
            raise UndecodableImage("zero-sized frame")
        # GIF frames are palette images whose later frames may carry transparency: composite to RGB(A) first
        f = frame.convert("RGBA").convert("RGB") if frame.mode in ("P", "PA") else frame.copy()
        frames.append(f.convert(mode) if mode and f.mode != mode else f)
        if len(frames) > MAX_DECODED_FRAMES:
            raise UndecodableImage(f"more than {MAX_DECODED_FRAMES} frames")
    if not frames:
        raise UndecodableImage("no frames")
    return frames


def _frames_from_video_file(data: bytes, mode: Optional[str]) -> List[Image.Image]:
    try:
        import av  # optional; never a dependency
    except ImportError as err:
        raise UndecodableImage("video container files need PyAV (`pip install av`); or store clips as animated "
                               "GIF / APNG / multi-page TIFF") from err
    try:
        with av.open(io.BytesIO(data)) as container:
            frames = [f.to_image() for f in container.decode(video=0)]
    except Exception as err:  # PyAV raises its own error hierarchy
        raise UndecodableImage(f"{type(err).__name__}: {err}") from err
    if not frames:
        raise UndecodableImage("no frames")
    return [f.convert(mode) if mode and f.mode != mode else f for f in frames]


def decode_clip(value: Any, mode: Optional[str] = "RGB") -> List[Image.Image]:
    """All frames of a clip as a list of PIL images in `mode` (see the module docstring for accepted values).
    Raises `UndecodableImage` for anything that is not a readable, non-empty clip (zero-byte, truncated, garbage)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise UndecodableImage("empty frame list")
        return [decode_image(v, mode) for v in value]
    if isinstance(value, np.ndarray) and value.ndim in (3, 4) and not (value.ndim == 3 and value.shape[-1] in (1, 3, 4)):
        if value.shape[0] == 0:
            raise UndecodableImage("empty frame array")
        return [decode_image(np.ascontiguousarray(f), mode) for f in value]
    try:
        path = None
        if isinstance(value, Image.Image):
            return _frames_from_pil(value, mode)
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                with open(path, "rb") as f:
                    data = f.read()
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        elif isinstance(value, str):
            path = value
            with open(value, "rb") as f:
                data = f.read()
        elif isinstance(value, np.ndarray):
            return [decode_image(value, mode)]
        else:
            raise UndecodableImage(f"unsupported clip value of type {type(value).__name__}")
        if not data:
            raise UndecodableImage("empty clip bytes")
        if path and str(path).lower().endswith(VIDEO_FILE_EXTENSIONS):
            return _frames_from_video_file(data, mode)
        return _frames_from_pil(Image.open(io.BytesIO(data)), mode)
    except UndecodableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as err:
        raise UndecodableImage(f"{type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------------------------------
# temporal sampling
# ----------------------------------------------------------------------------------------------------
def sample_frame_indices(num_available: int, num_frames: int, sampling_rate: int = 1,
                         rng: Optional[np.random.Generator] = None, mode: str = "random",
                         start: Optional[int] = None) -> np.ndarray:
    """Indices of `num_frames` frames `sampling_rate` apart (dense sampling).

    `mode="random"`: the window starts at a uniformly random offset (training); `"center"`: centred (evaluation);
    `start` overrides both. A clip shorter than the window `(num_frames - 1) * sampling_rate + 1` is loop-padded:
    indices wrap around modulo `num_available` (a 1-frame clip gives a static clip)."""
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames and sampling_rate must be >= 1, got {num_frames}, {sampling_rate}")
    if mode not in ("random", "center"):
        raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
    span = (num_frames - 1) * sampling_rate + 1
    slack = num_available - span
    if start is None:
        if slack <= 0:
            start = 0
        elif mode == "center":
            start = slack // 2
        else:
            start = int((rng or np.random.default_rng()).integers(0, slack + 1))
    return (start + np.arange(num_frames) * sampling_rate) % num_available


# ----------------------------------------------------------------------------------------------------
# clip-consistent augmentation
# ----------------------------------------------------------------------------------------------------
def multiscale_crop_box(width: int, height: int, size: int, scales: Sequence[float], max_distort: int = 1,
                        rng: Optional[np.random.Generator] = None) -> Tuple[int, int, int, int]:
    """VideoMAE / TSN `GroupMultiScaleCrop` box `(left, top, w, h)`: crop side lengths are `scale * min(H, W)` for
    scales like (1, .875, .75, .66), width and height chosen independently among them (at most `max_distort` steps
    apart), snapped to `size` when within 3 px, placed at one of 13 fixed positions (corners, centre, quarter
    points: `more_fix_crop`)."""
    rng = rng or np.random.default_rng()
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    sizes = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    cw, ch = min(cw, width), min(ch, height)
    ws, hs = (width - cw) // 4, (height - ch) // 4
    offsets = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs), (0, 2 * hs), (4 * ws, 2 * hs),
               (2 * ws, 4 * hs), (2 * ws, 0), (1 * ws, 1 * hs), (3 * ws, 1 * hs), (1 * ws, 3 * hs), (3 * ws, 3 * hs)]
    left, top = offsets[int(rng.integers(len(offsets)))]
    return left, top, cw, ch


class ClipAugment:
    """One random view of a clip: every parameter is drawn once per clip and applied to all frames.

    Args:
        size: output side length.
        crop: `"resized"` (Inception random resized crop with area `scale`, aspect `ratio`), `"multiscale"`
            (VideoMAE's `GroupMultiScaleCrop` with `multiscale_scales`), or `"none"` (resize the whole frame).
        horizontal_flip, color_jitter (probability), color_jitter_strength (b, c, s, h), grayscale, gaussian_blur:
            as in `data.ImageAugment`, but shared by the frames of a clip.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop: str = "resized",
                 scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 multiscale_scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66), horizontal_flip: float = 0.0,
                 color_jitter: float = 0.0, color_jitter_strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                 grayscale: float = 0.0, gaussian_blur: float = 0.0, blur_sigma: Sequence[float] = (0.1, 2.0)):
        if crop not in ("resized", "multiscale", "none"):
            raise ValueError(f"crop must be 'resized', 'multiscale' or 'none', got {crop!r}")
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {list(scale)}")
        for name, p in (("horizontal_flip", horizontal_flip), ("color_jitter", color_jitter),
                        ("grayscale", grayscale), ("gaussian_blur", gaussian_blur)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        self.size, self.crop, self.scale, self.ratio = int(size), crop, tuple(scale), tuple(ratio)
        self.multiscale_scales = tuple(multiscale_scales)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self.horizontal_flip, self.color_jitter = float(horizontal_flip), float(color_jitter)
        self.color_jitter_strength = tuple(color_jitter_strength)
        self.grayscale, self.gaussian_blur, self.blur_sigma = float(grayscale), float(gaussian_blur), tuple(blur_sigma)

    def draw(self, width: int, height: int, rng: np.random.Generator, mode: str = "RGB") -> Dict[str, Any]:
        """The clip's augmentation parameters (box, flip, colour ops in order with their factors, gray, blur)."""
        if self.crop == "resized":
            box = random_resized_crop_box(width, height, self.scale, self.ratio, rng=rng)
        elif self.crop == "multiscale":
            box = multiscale_crop_box(width, height, self.size, self.multiscale_scales, rng=rng)
        else:
            box = (0, 0, width, height)
        params: Dict[str, Any] = {"box": box, "flip": bool(self.horizontal_flip and rng.random() < self.horizontal_flip)}
        ops = []
        if self.color_jitter and rng.random() < self.color_jitter:
            b, c, s, h = self.color_jitter_strength
            if b > 0:
                ops.append(("brightness", float(rng.uniform(max(0, 1 - b), 1 + b))))
            if c > 0:
                ops.append(("contrast", float(rng.uniform(max(0, 1 - c), 1 + c))))
            if s > 0 and mode == "RGB":
                ops.append(("saturation", float(rng.uniform(max(0, 1 - s), 1 + s))))
            if h > 0 and mode == "RGB":
                ops.append(("hue", float(rng.uniform(-h, h))))
            ops = [ops[i] for i in rng.permutation(len(ops))]
        params["color_ops"] = ops
        params["grayscale"] = bool(self.grayscale and mode == "RGB" and rng.random() < self.grayscale)
        params["blur"] = (float(rng.uniform(*self.blur_sigma))
                          if self.gaussian_blur and rng.random() < self.gaussian_blur else None)
        return params

    def apply(self, frame: Image.Image, params: Dict[str, Any]) -> Image.Image:
        left, top, w, h = params["box"]
        out = frame.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if params["flip"]:
            out = ImageOps.mirror(out)
        for name, factor in params["color_ops"]:
            if name == "brightness":
                out = ImageEnhance.Brightness(out).enhance(factor)
            elif name == "contrast":
                out = ImageEnhance.Contrast(out).enhance(factor)
            elif name == "saturation":
                out = ImageEnhance.Color(out).enhance(factor)
            else:
                out = _adjust_hue(out, factor)
        if params["grayscale"]:
            out = out.convert("L").convert("RGB")
        if params["blur"] is not None:
            out = out.filter(ImageFilter.GaussianBlur(radius=params["blur"]))
        return out

    def __call__(self, frames: Sequence[Image.Image], rng: np.random.Generator, return_params: bool = False):
        """`[T, C, size, size]` normalized tensor of the augmented clip (and the drawn parameters if asked)."""
        params = self.draw(frames[0].width, frames[0].height, rng, frames[0].mode)
        clip = torch.stack([to_normalized_tensor(self.apply(f, params), self.mean, self.std) for f in frames])
        return (clip, params) if return_params else clip


def eval_clip_transform(frames: Sequence[Image.Image], size: int, mean, std, resize_ratio: float = 0.875) -> torch.Tensor:
    """Deterministic preprocessing of every frame: shorter side to `size / resize_ratio`, centre crop, normalize."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    out = []
    resize = int(round(size / resize_ratio))
    for img in frames:
        w, h = img.size
        s = resize / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(to_normalized_tensor(img.crop((left, top, left + size, top + size)), mean, std))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------
# synthetic clips from single images
# ----------------------------------------------------------------------------------------------------
def synthetic_camera_clip(img: Image.Image, num_frames: int, rng: np.random.Generator, strength: float = 0.15,
                          static: bool = False) -> List[Image.Image]:
    """A clip made from one image: `static=True` repeats it; otherwise a smooth camera motion (linear pan of up to
    `strength` of the side and a zoom between 1 and `1 + strength`) over a crop of the image. Frames keep the image's
    size, so the clip then goes through the same clip augmentation as a real one."""
    if static or num_frames == 1:
        return [img] * num_frames
    w, h = img.size
    zoom0, zoom1 = 1.0 + rng.uniform(0, strength, size=2)
    start = rng.uniform(-1, 1, size=2) * strength
    end = rng.uniform(-1, 1, size=2) * strength
    frames = []
    for i, t in enumerate(np.linspace(0.0, 1.0, num_frames)):
        zoom = zoom0 + (zoom1 - zoom0) * t
        cw, ch = w / zoom, h / zoom
        cx = w / 2 + (start[0] + (end[0] - start[0]) * t) * w / 2
        cy = h / 2 + (start[1] + (end[1] - start[1]) * t) * h / 2
        cx = min(max(cx, cw / 2), w - cw / 2)
        cy = min(max(cy, ch / 2), h - ch / 2)
        box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
        frames.append(img.resize((w, h), Image.BICUBIC, box=box))
    return frames


# ----------------------------------------------------------------------------------------------------
# view policies
# ----------------------------------------------------------------------------------------------------
class VideoViewPolicy(ViewPolicy):
    """Base of video view policies: `__call__(frames, rng)` gets the decoded frame list (`wants_frames = True`).

    Reads from `config`: `num_frames`, `sampling_rate`, `image_size`; from `config.augmentation`:
    `single_image_clip` ("camera" (default) or "static": what a 1-frame input becomes), `camera_motion_strength`."""

    wants_frames = True
    frame_decoder = staticmethod(decode_clip)  # SSLViewDataset's decode hook: GIF/APNG/TIFF, frame lists, arrays, PyAV

    def __init__(self, config):
        super().__init__(config)
        self.num_frames = int(getattr(config, "num_frames", 16))
        self.sampling_rate = int(getattr(config, "sampling_rate", 1))
        self.size = int(config.image_size)
        a = self.aug
        self.single_image_clip = a.get("single_image_clip", "camera")
        if self.single_image_clip not in ("camera", "static"):
            raise ValueError(f"augmentation['single_image_clip'] must be 'camera' or 'static', "
                             f"got {self.single_image_clip!r}")
        self.camera_motion_strength = float(a.get("camera_motion_strength", 0.15))

    def clip_augment(self, **overrides) -> ClipAugment:
        a = self.aug
        kwargs = dict(crop=a.get("crop", "resized"), scale=a.get("crop_scale", (0.2, 1.0)),
                      multiscale_scales=a.get("multiscale_scales", (1.0, 0.875, 0.75, 0.66)),
                      horizontal_flip=a.get("horizontal_flip", 0.0), color_jitter=a.get("color_jitter", 0.0),
                      color_jitter_strength=a.get("color_jitter_strength", (0.4, 0.4, 0.4, 0.1)),
                      grayscale=a.get("grayscale", 0.0), gaussian_blur=a.get("gaussian_blur", 0.0))
        kwargs.update(overrides)
        return ClipAugment(self.size, self.mean, self.std, **kwargs)

    def frames_or_synthetic(self, frames, rng, length: int) -> Tuple[List[Image.Image], bool]:
        """`frames` itself for a real clip; for a single image (1 frame) a synthetic clip of `length` frames."""
        if isinstance(frames, Image.Image):
            frames = [frames]
        if len(frames) > 1:
            return list(frames), False
        return synthetic_camera_clip(frames[0], length, rng, self.camera_motion_strength,
                                     static=self.single_image_clip == "static"), True

    def sample(self, frames, rng, num_frames: Optional[int] = None, sampling_rate: Optional[int] = None,
               mode: str = "random", start: Optional[int] = None) -> Tuple[List[Image.Image], bool]:
        """`num_frames` frames at `sampling_rate` (defaults: the config's) and the synthetic flag."""
        n = num_frames or self.num_frames
        r = sampling_rate or self.sampling_rate
        frames, synthetic = self.frames_or_synthetic(frames, rng, (n - 1) * r + 1)
        idx = sample_frame_indices(len(frames), n, r, rng, mode=mode, start=start)
        return [frames[i] for i in idx], synthetic


@register_view_policy("video_eval")
class VideoEvalPolicy(VideoViewPolicy):
    """Deterministic clip for feature extraction: the centred window of `num_frames` frames at `sampling_rate`
    (loop-padded when short; a single image becomes a STATIC clip), every frame resized to `image_size / 0.875`
    and centre-cropped. `{"pixel_values_videos": [T, C, H, W]}`."""

    def __call__(self, frames, rng=None):
        if isinstance(frames, Image.Image):
            frames = [frames]
        idx = sample_frame_indices(len(frames), self.num_frames, self.sampling_rate, mode="center")
        clip = eval_clip_transform([frames[i] for i in idx], self.size, self.mean, self.std)
        return {"pixel_values_videos": clip, "synthetic_clip": len(frames) == 1}


@register_view_policy("video_masked")
class VideoMaskedPolicy(VideoViewPolicy):
    """One augmented clip plus its token mask (VideoMAE-style): `{"pixel_values_videos": [T, C, H, W],
    "bool_masked_pos": [N], "synthetic_clip": bool}`. The mask is drawn with `config.mask_type` ("tube": one spatial
    mask repeated over time; "random": space-time agnostic) and `config.mask_ratio` over the encoder's token grid."""

    def __init__(self, config):
        super().__init__(config)
        from ..modeling.backbones import video_patch_grid

        self.augment = self.clip_augment()
        self.grid = video_patch_grid(config.backbone_config)
        self.mask_type = getattr(config, "mask_type", "tube")
        self.mask_ratio = float(getattr(config, "mask_ratio", 0.9))

    def mask(self, rng) -> torch.Tensor:
        from ..modeling.masking import random_mask, tube_mask

        t, h, w = self.grid
        if self.mask_type == "tube":
            return torch.from_numpy(tube_mask((t, h, w), self.mask_ratio, rng=rng))
        return torch.from_numpy(random_mask(t * h * w, self.mask_ratio, rng=rng))

    def __call__(self, frames, rng):
        clip, synthetic = self.sample(frames, rng)
        return {"pixel_values_videos": self.augment(clip, rng), "bool_masked_pos": self.mask(rng),
                "synthetic_clip": synthetic}


# ----------------------------------------------------------------------------------------------------
# built-in data: moving digits
# ----------------------------------------------------------------------------------------------------
MOVING_DIGITS_FRAMES = 16
MOVING_DIGITS_CANVAS = 32
MOVING_DIGITS_SPRITE = 16


def moving_digit_clip(digit: np.ndarray, rng: np.random.Generator, num_frames: int = MOVING_DIGITS_FRAMES,
                      canvas: int = MOVING_DIGITS_CANVAS, sprite: int = MOVING_DIGITS_SPRITE) -> np.ndarray:
    """`[T, canvas, canvas]` uint8 frames of one real digit (`digit` uint8 `[h, w]`, upsampled to `sprite` px) moving
    in a straight line at a random speed (1.5-3 px / frame, random direction) and bouncing off the canvas borders,
    as in Moving MNIST (Srivastava et al. 2015)."""
    spr = np.asarray(Image.fromarray(digit, mode="L").resize((sprite, sprite), Image.BICUBIC), dtype=np.uint8)
    limit = canvas - sprite
    pos = rng.uniform(0, limit, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(1.5, 3.0)
    vel = np.array([math.cos(angle), math.sin(angle)]) * speed
    frames = np.zeros((num_frames, canvas, canvas), dtype=np.uint8)
    prev = None

    def step(pos, vel):
        pos = pos + vel
        for d in range(2):  # bounce off the borders
            if pos[d] < 0:
                pos[d], vel[d] = -pos[d], -vel[d]
            elif pos[d] > limit:
                pos[d], vel[d] = 2 * limit - pos[d], -vel[d]
        return pos, vel

    for t in range(num_frames):
        cell = (int(round(pos[0])), int(round(pos[1])))
        for _ in range(3):  # a bounce can land on the previous pixel position: keep moving (GIF drops repeats)
            if cell != prev:
                break
            pos, vel = step(pos, vel)
            cell = (int(round(pos[0])), int(round(pos[1])))
        x, y = cell
        frames[t, y:y + sprite, x:x + sprite] = spr
        prev = cell
        pos, vel = step(pos, vel)
    return frames


def save_clip_gif(frames: np.ndarray, path: str, duration_ms: int = 100) -> None:
    """Write `[T, H, W]` (gray) or `[T, H, W, 3]` uint8 frames as one lossless animated GIF (RGB on read)."""
    images = [Image.fromarray(f).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
              if f.ndim == 3 else Image.fromarray(f, mode="L").convert("P") for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0,
                   disposal=1, optimize=False)


def materialize_moving_digits(out: str) -> str:
    """Write `builtin:moving_digits` under `out` (`{train,test}/<digit>/<index>.gif`) and return `out`.

    One clip per real scikit-learn digit (1,797 8x8 UCI digits, upsampled to 16 px): the digit moves and bounces on a
    32 x 32 canvas for 16 frames (seeded by the digit's index), saved as a single animated GIF; label = the digit.
    The split is the one of `builtin:digits` (30 test clips per class: 1,497 train / 300 test)."""
    from sklearn.datasets import load_digits

    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(0)
    test_idx = set()
    for c in range(10):  # the same draws as builtin:digits, so both built-ins share one split
        idx = np.flatnonzero(labels == c)
        test_idx.update(rng.choice(idx, size=30, replace=False).tolist())
    tmp = out + f".tmp-{os.getpid()}"
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "test" if i in test_idx else "train"
        d = os.path.join(tmp, split, str(int(label)))
        os.makedirs(d, exist_ok=True)
        clip = moving_digit_clip(img, np.random.default_rng([7, i]))
        save_clip_gif(clip, os.path.join(d, f"{i:04d}.gif"))
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


__all__ = [
    "decode_clip", "sample_frame_indices", "multiscale_crop_box", "ClipAugment", "eval_clip_transform",
    "synthetic_camera_clip", "VideoViewPolicy", "VideoEvalPolicy", "VideoMaskedPolicy", "moving_digit_clip",
    "save_clip_gif", "materialize_moving_digits", "VIDEO_FILE_EXTENSIONS",
]
