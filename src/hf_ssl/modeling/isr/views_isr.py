"""ISR views: two frames of one clip, the instances detected in each, one augmented crop per instance.

Detector (a STAND-IN for the paper's pedestrian detector / tracker output): connected components (8-connectivity,
`scipy.ndimage.label`) of the ink (`grey > ink_threshold`) of a frame; components smaller than `min_instance_area`
pixels are dropped, the `max_instances` largest are kept, each becomes a square crop around its bounding box
(+ `crop_margin`; outside the frame is black). Two touching digits give ONE merged component, a broken stroke may give
a fragment: exactly the kind of noisy detections ISR's reliability weighting is designed to absorb. A frame without
any component yields the whole frame as its one instance.

Training example (`isr` policy): `{"pixel_values": [2K crops [C, S, S]] (frame A's K slots, then frame B's),
"instance_mask": [2, K] bool (True = a real detection; padded slots are zeros), "synthetic_clip": bool}`. The
collator turns `pixel_values` into a list of 2K `[B, C, S, S]` batches (the multi-crop layout). Evaluation
(`isr_eval`): the largest instance of the middle frame of a clip (or of a single image), resized to `image_size`,
normalised: `{"pixel_values": [C, S, S]}`; for `builtin:moving_digit_pairs` both instances of a clip share the clip's
class, so its label is the crop's label.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ...training.data import ImageAugment, _augment_kwargs, register_view_policy, to_normalized_tensor
from ...training.moving_digit_pairs import materialize_moving_digit_pairs  # noqa: F401  (registers the built-in)
from ...training.video import VideoViewPolicy

Box = Tuple[int, int, int, int]


def detect_instances(frame: Image.Image, ink_threshold: int = 40, min_area: int = 12, max_instances: int = 4,
                     margin: int = 2) -> List[Box]:
    """Square crop boxes `(left, top, right, bottom)` of the `max_instances` largest ink components of `frame`,
    largest first (ties: top-left first). No component: `[(0, 0, W, H)]`."""
    from scipy import ndimage

    gray = np.asarray(frame.convert("L"), dtype=np.uint8)
    labels, count = ndimage.label(gray > ink_threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return [(0, 0, frame.width, frame.height)]
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    comps = [(int(areas[k]), slices[k][0].start, slices[k][1].start, k) for k in range(count) if areas[k] >= min_area]
    if not comps:
        return [(0, 0, frame.width, frame.height)]
    comps.sort(key=lambda c: (-c[0], c[1], c[2]))
    boxes = []
    for _, _, _, k in comps[:max_instances]:
        ys, xs = slices[k]
        y0, y1, x0, x1 = ys.start - margin, ys.stop + margin, xs.start - margin, xs.stop + margin
        side = max(y1 - y0, x1 - x0)
        cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
        left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
        boxes.append((left, top, left + side, top + side))
    return boxes


def crop_instance(frame: Image.Image, box: Box) -> Image.Image:
    """The crop of `box` (may extend beyond the frame: black there)."""
    return frame.crop(box)


@register_view_policy("isr")
class ISRViewPolicy(VideoViewPolicy):
    """Two frames `g ~ U{min_frame_gap..max_frame_gap}` apart (clipped to the clip), detections in each, one
    independently augmented crop per detection, padded to `max_instances` per frame."""

    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        self.crop_view = ImageAugment(self.size, a.get("crop_scale", (0.5, 1.0)), self.mean, self.std,
                                      **_augment_kwargs(a))
        self.k = int(config.max_instances)
        self.detect_kwargs = dict(ink_threshold=int(config.ink_threshold), min_area=int(config.min_instance_area),
                                  max_instances=self.k, margin=int(config.crop_margin))
        self.gaps = (int(config.min_frame_gap), int(config.max_frame_gap))
        self.channels = int(config.num_channels)

    def frame_pair(self, frames: Sequence[Image.Image], rng: np.random.Generator):
        frames, synthetic = self.frames_or_synthetic(frames, rng, self.gaps[1] + 1)
        n = len(frames)
        gap = int(rng.integers(self.gaps[0], self.gaps[1] + 1))
        gap = min(gap, n - 1)
        start = int(rng.integers(0, n - gap))
        return frames[start], frames[start + gap], synthetic

    def __call__(self, frames, rng):
        frame_a, frame_b, synthetic = self.frame_pair(frames, rng)
        crops, mask = [], torch.zeros(2, self.k, dtype=torch.bool)
        for f, frame in enumerate((frame_a, frame_b)):
            boxes = detect_instances(frame, **self.detect_kwargs)
            for slot in range(self.k):
                if slot < len(boxes):
                    crops.append(self.crop_view(crop_instance(frame, boxes[slot]), rng))
                    mask[f, slot] = True
                else:
                    crops.append(torch.zeros(self.channels, self.size, self.size))
        return {"pixel_values": crops, "instance_mask": mask, "synthetic_clip": synthetic}


@register_view_policy("isr_eval")
class ISREvalPolicy(VideoViewPolicy):
    """Deterministic: the largest detected instance of the middle frame (a single image: of that image), its square
    crop resized to `image_size` (bicubic), normalised. `{"pixel_values": [C, S, S]}`."""

    def __init__(self, config):
        super().__init__(config)
        self.detect_kwargs = dict(ink_threshold=int(config.ink_threshold), min_area=int(config.min_instance_area),
                                  max_instances=1, margin=int(config.crop_margin))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, frames, rng=None):
        if isinstance(frames, Image.Image):
            frames = [frames]
        frame = frames[len(frames) // 2]
        box = detect_instances(frame, **self.detect_kwargs)[0]
        crop = crop_instance(frame, box).resize((self.size, self.size), Image.BICUBIC)
        return {"pixel_values": to_normalized_tensor(crop, self._mean, self._std)}


__all__ = ["detect_instances", "crop_instance", "ISRViewPolicy", "ISREvalPolicy"]
