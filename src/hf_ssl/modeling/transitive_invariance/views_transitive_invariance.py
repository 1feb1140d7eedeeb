"""Transitive-invariance views: track the object through the clip and return the first and the last patch of the
track (the intra-instance edge of the paper's graph).

Tracking uses only the pixels of the clip: the object is initialised as the bounding box of the bright ("ink")
pixels of the first frame, then followed frame to frame by zero-mean normalised cross-correlation (NCC) template
matching inside a search window around its previous position, with a slowly interpolated template (the role of the
KCF tracker the paper uses on real videos). No generator state (e.g. the moving-digits trajectory) is read."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ...training.data import register_view_policy
from ...training.video import VideoViewPolicy, eval_clip_transform, sample_frame_indices

Box = Tuple[int, int, int, int]  # left, top, width, height


def frames_to_gray(frames: Sequence) -> np.ndarray:
    """`[T, H, W]` float32 luminance in [0, 1] of PIL frames (or a `[T, H, W(, C)]` uint8 array)."""
    if isinstance(frames, np.ndarray):
        arr = frames.astype(np.float32)
        if arr.ndim == 4:
            arr = arr.mean(axis=-1)
        return arr / 255.0
    return np.stack([np.asarray(f.convert("L"), dtype=np.float32) / 255.0 for f in frames])


def ink_box(frame: np.ndarray, threshold: float = 0.35) -> Box:
    """Bounding box of the pixels brighter than `threshold * max` of a `[H, W]` frame (the whole frame if it is
    blank)."""
    h, w = frame.shape
    peak = float(frame.max())
    if peak <= 0:
        return 0, 0, w, h
    ys, xs = np.nonzero(frame >= threshold * peak)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _ncc(window: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation of `template` `[h, w]` at every valid offset of `window`."""
    h, w = template.shape
    views = np.lib.stride_tricks.sliding_window_view(window, (h, w))  # [H-h+1, W-w+1, h, w]
    t = template - template.mean()
    tn = np.sqrt((t * t).sum())
    v = views - views.mean(axis=(-1, -2), keepdims=True)
    vn = np.sqrt((v * v).sum(axis=(-1, -2)))
    score = (v * t).sum(axis=(-1, -2)) / (vn * tn + 1e-8)
    return np.where(vn > 1e-6, score, -1.0)


def track_box(frames: np.ndarray, init_box: Box, search_radius: int = 6, template_update: float = 0.1) -> List[Box]:
    """Follow `init_box` through `frames` `[T, H, W]` by NCC template matching within +-`search_radius` px of the
    previous position; the template is interpolated `template <- (1 - a) template + a patch` after every frame
    (`a = template_update`). Ties go to the smallest displacement. Returns one box per frame."""
    x, y, w, h = init_box
    t_count, height, width = frames.shape
    template = frames[0, y:y + h, x:x + w].astype(np.float64)
    boxes = [(x, y, w, h)]
    for t in range(1, t_count):
        x0, y0 = max(0, x - search_radius), max(0, y - search_radius)
        x1, y1 = min(width - w, x + search_radius), min(height - h, y + search_radius)
        window = frames[t, y0:y1 + h, x0:x1 + w].astype(np.float64)
        if template.std() < 1e-6 or window.shape[0] < h or window.shape[1] < w:
            boxes.append((x, y, w, h))
            continue
        score = _ncc(window, template)
        best = score.max()
        cand = np.argwhere(score >= best - 1e-9)  # [(dy, dx)]: prefer the smallest move among ties
        moves = np.abs(cand[:, 0] + y0 - y) + np.abs(cand[:, 1] + x0 - x)
        dy, dx = cand[int(np.argmin(moves))]
        x, y = int(x0 + dx), int(y0 + dy)
        patch = frames[t, y:y + h, x:x + w].astype(np.float64)
        template = (1 - template_update) * template + template_update * patch
        boxes.append((x, y, w, h))
    return boxes


def square_patch_box(box: Box, scale: float) -> Tuple[float, float, float, float]:
    """(left, top, right, bottom) of the square of side `scale * max(w, h)` centred on `box` (may leave the frame:
    PIL pads with black)."""
    x, y, w, h = box
    side = scale * max(w, h)
    cx, cy = x + w / 2, y + h / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def _crop(frame: Image.Image, box) -> Image.Image:
    left, top, right, bottom = (int(round(v)) for v in box)
    return frame.crop((left, top, right, bottom))


@register_view_policy("transitive_invariance")
class TransitiveInvariancePolicy(VideoViewPolicy):
    """`{"pixel_values": [first_patch, last_patch], "track_displacement": float, "synthetic_clip": bool}`.

    A window of `num_frames` frames at `sampling_rate` is sampled, the object of its first frame is tracked to the
    last frame, and a square patch (`patch_scale` x the tracked box) is cut around the first and the last box; each
    patch is then augmented independently (random resized crop with `crop_scale`, optional colour ops) and resized to
    `image_size`. A single image becomes a flagged synthetic camera-motion clip first."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.6, 1.0)))
        self.patch_scale = float(config.patch_scale)
        self.search_radius = int(config.search_radius)
        self.template_update = float(config.template_update)
        self.ink_threshold = float(config.ink_threshold)

    def track(self, frames: Sequence[Image.Image]) -> List[Box]:
        gray = frames_to_gray(frames)
        return track_box(gray, ink_box(gray[0], self.ink_threshold), self.search_radius, self.template_update)

    def __call__(self, frames, rng):
        clip, synthetic = self.sample(frames, rng)
        boxes = self.track(clip)
        first = _crop(clip[0], square_patch_box(boxes[0], self.patch_scale))
        last = _crop(clip[-1], square_patch_box(boxes[-1], self.patch_scale))
        moved = float(np.hypot(boxes[-1][0] - boxes[0][0], boxes[-1][1] - boxes[0][1]))
        return {"pixel_values": [self.view(first, rng), self.view(last, rng)], "track_displacement": moved,
                "synthetic_clip": synthetic}


@register_view_policy("transitive_invariance_eval")
class TransitiveInvarianceEvalPolicy(VideoViewPolicy):
    """Deterministic clip for feature extraction: `{"pixel_values": [T, C, H, W]}`, the centred window of
    `num_frames` frames, every frame resized to `image_size / 0.875` and centre-cropped (a single image becomes a
    static clip). The model embeds a clip as the mean of its frames' image features."""

    def __call__(self, frames, rng=None):
        if isinstance(frames, Image.Image):
            frames = [frames]
        idx = sample_frame_indices(len(frames), self.num_frames, self.sampling_rate, mode="center")
        clip = eval_clip_transform([frames[i] for i in idx], self.size, self.mean, self.std)
        return {"pixel_values": clip}


__all__ = ["frames_to_gray", "ink_box", "track_box", "square_patch_box", "TransitiveInvariancePolicy",
           "TransitiveInvarianceEvalPolicy"]
