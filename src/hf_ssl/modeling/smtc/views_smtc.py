"""SMTC views (official `Dataloader` + `Augment_GPU_pre` applied twice): `num_frames` frames `sampling_rate` apart at a
random offset, whole frames resized to `image_size` (no crop, no flip), then two independent photometric draws
(grayscale, colour jitter, Gaussian blur), each shared by all frames of its view: the student's and the teacher's view
of the same, pixel-aligned clip."""

from __future__ import annotations

from ...training.data import register_view_policy
from ...training.moving_digit_pairs import materialize_moving_digit_pairs  # noqa: F401  (registers the built-in)
from ...training.video import VideoViewPolicy


@register_view_policy("smtc")
class SMTCViewPolicy(VideoViewPolicy):
    """`{"pixel_values_videos": [student_view, teacher_view], "synthetic_clip": bool}`, each view `[T, C, H, W]`."""

    def __init__(self, config):
        super().__init__(config)
        self.augment = self.clip_augment(crop=self.aug.get("crop", "none"))

    def __call__(self, frames, rng):
        clip, synthetic = self.sample(frames, rng)
        return {"pixel_values_videos": [self.augment(clip, rng), self.augment(clip, rng)],
                "synthetic_clip": synthetic}


__all__ = ["SMTCViewPolicy"]
