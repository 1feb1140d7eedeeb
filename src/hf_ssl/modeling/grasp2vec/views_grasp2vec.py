"""Grasp2Vec's `"simulated_grasp"` view policy: a simulated grasp built from real images.

The paper's data are robot grasps: a camera image of the bin before the grasp (pre), after it (post), and of the
grasped object held up to the camera (outcome). Without a robot, a grasp is simulated from any image stream:

* the image of the current example is the grasped object; the other objects of the bin are drawn from a buffer of
  the previous `object_buffer_size` images of the worker's stream (so every object is a real image);
* pre-grasp scene: a `scene_size` canvas with a fixed noisy bin texture on which `k` objects (k uniform in
  `objects_per_scene`, the grasped one included) are pasted at random, non-overlapping where possible, each resized
  to a random side in `object_scale` x `scene_size` (pasting keeps the brighter pixel, for bright-on-dark images);
* post-grasp scene: the same canvas with the grasped object removed (the others untouched, as when a grasp lifts one
  object out of the bin);
* outcome: the grasped image alone, a random resized crop (`crop_scale`) at `image_size`, with the config's colour
  jitter / grayscale (off by default; a lighting change between the bin camera and the outcome shot);
* flips: each of the three images is flipped left-right / up-down independently (official preprocessing), and the
  grasped object's box in the pre-grasp scene (`grasp_box`, normalised x0, y0, x1, y1) follows the pre image's flips.

Returned keys: `pixel_values` (outcome, the exported encoder's input), `pre_grasp_pixel_values`,
`post_grasp_pixel_values`, `grasp_box`.
"""

from __future__ import annotations

from collections import deque
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

from ...training.data import ImageAugment, ViewPolicy, register_view_policy, to_normalized_tensor


def paste_objects(canvas: np.ndarray, objects: List[np.ndarray], boxes: List[Tuple[int, int, int, int]]) -> np.ndarray:
    """Paste `objects` (uint8 HxWxC) at `boxes` (x0, y0, x1, y1 pixels) onto a copy of `canvas`, keeping the
    brighter pixel."""
    out = canvas.copy()
    for obj, (x0, y0, x1, y1) in zip(objects, boxes):
        region = out[y0:y1, x0:x1]
        np.maximum(region, obj[: y1 - y0, : x1 - x0], out=region)
    return out


def place_boxes(sizes: List[int], scene: int, rng: np.random.Generator, attempts: int = 50):
    """Random top-left positions for squares of the given sides inside a `scene` canvas, rejecting overlaps (after
    `attempts` failed draws a square may overlap). Returns [(x0, y0, x1, y1)]."""
    boxes = []
    for s in sizes:
        best = None
        for _ in range(attempts):
            x, y = int(rng.integers(0, scene - s + 1)), int(rng.integers(0, scene - s + 1))
            cand = (x, y, x + s, y + s)
            if all(cand[2] <= b[0] or b[2] <= cand[0] or cand[3] <= b[1] or b[3] <= cand[1] for b in boxes):
                best = cand
                break
            best = best or cand
        boxes.append(best)
    return boxes


@register_view_policy("simulated_grasp")
class SimulatedGraspPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.scene = int(config.scene_size)
        self.k_range = tuple(int(v) for v in a.get("objects_per_scene", (2, 5)))
        self.scale_range = tuple(float(v) for v in a.get("object_scale", (0.25, 0.4)))
        self.buffer = deque(maxlen=int(a.get("object_buffer_size", 64)))
        self.noise = float(a.get("background_noise", 0.05))
        self.hflip = float(a.get("horizontal_flip", 0.5))
        self.vflip = float(a.get("vertical_flip", 0.5))
        # outcome view: random resized crop + the config's photometric jitter (flips are applied below)
        self.outcome_view = ImageAugment(config.image_size, a.get("crop_scale", (0.8, 1.0)), self.mean, self.std,
                                         horizontal_flip=0.0, color_jitter=float(a.get("color_jitter", 0.0)),
                                         color_jitter_strength=a.get("color_jitter_strength", (0.4, 0.4, 0.4, 0.1)),
                                         grayscale=float(a.get("grayscale", 0.0)))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def _flip(self, x: torch.Tensor, rng) -> Tuple[torch.Tensor, bool, bool]:
        h, v = bool(rng.random() < self.hflip), bool(rng.random() < self.vflip)
        if h:
            x = x.flip(-1)
        if v:
            x = x.flip(-2)
        return x, h, v

    def _object(self, img: Image.Image, side: int) -> np.ndarray:
        arr = np.asarray(img.convert(self.mode).resize((side, side), Image.BICUBIC), dtype=np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr

    def make_scenes(self, img: Image.Image, rng: np.random.Generator):
        """(pre uint8, post uint8, grasped box in pixels): the grasped object first among the pasted ones."""
        k = int(rng.integers(self.k_range[0], self.k_range[1] + 1))
        others = [self.buffer[int(i)] for i in rng.choice(len(self.buffer), size=min(k - 1, len(self.buffer)),
                                                          replace=False)] if self.buffer else []
        objs = [img] + others
        sizes = [max(2, int(round(self.scene * rng.uniform(*self.scale_range)))) for _ in objs]
        boxes = place_boxes(sizes, self.scene, rng)
        arrays = [self._object(o, s) for o, s in zip(objs, sizes)]
        c = 1 if self.mode == "L" else 3
        canvas = np.clip(rng.normal(0.0, self.noise, (self.scene, self.scene, 1)) * 255.0, 0, 255)
        canvas = np.repeat(canvas, c, axis=2).astype(np.uint8)
        pre = paste_objects(canvas, arrays, boxes)
        post = paste_objects(canvas, arrays[1:], boxes[1:])
        return pre, post, boxes[0]

    def _tensor(self, arr: np.ndarray) -> torch.Tensor:
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, mode=self.mode)
        return to_normalized_tensor(img, self._mean, self._std)

    def __call__(self, img, rng):
        pre, post, (x0, y0, x1, y1) = self.make_scenes(img, rng)
        self.buffer.append(img.copy())
        pre_t, h, v = self._flip(self._tensor(pre), rng)
        post_t, _, _ = self._flip(self._tensor(post), rng)
        outcome, _, _ = self._flip(self.outcome_view(img, rng), rng)
        s = float(self.scene)
        box = [x0 / s, y0 / s, x1 / s, y1 / s]
        if h:
            box = [1 - box[2], box[1], 1 - box[0], box[3]]
        if v:
            box = [box[0], 1 - box[3], box[2], 1 - box[1]]
        return {"pixel_values": outcome, "pre_grasp_pixel_values": pre_t, "post_grasp_pixel_values": post_t,
                "grasp_box": torch.tensor(box, dtype=torch.float32)}


__all__ = ["SimulatedGraspPolicy", "paste_objects", "place_boxes"]
