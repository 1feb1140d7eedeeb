"""RSPNet views (official `_diff_speed`): two windows of one video; the query clip is the first window at speed a,
the positive and the negative keys are the second window at speed a and at the other speed b (a, b = normal / fast,
drawn per clip). Each window is augmented once (one clip-consistent draw), so the two keys differ only in speed."""

from __future__ import annotations

import numpy as np
import torch

from ...training.data import register_view_policy, to_normalized_tensor
from ...training.video import VideoViewPolicy, sample_frame_indices


@register_view_policy("rspnet")
class RSPNetViewPolicy(VideoViewPolicy):
    """`{"pixel_values_videos": [query, positive_key, negative_key], "clip_speeds": [speed_q_and_pos, speed_neg],
    "synthetic_clip": bool}`; each clip `[T, C, H, W]`, speeds in playback speed-ups (1 = normal)."""

    def __init__(self, config):
        super().__init__(config)
        self.augment = self.clip_augment()
        self.speeds = list(config.speeds)

    def window(self, frames, rng, fast: int):
        """Frames of one random window long enough for the fast clip, and the index lists of the normal and the fast
        clip inside it (normal: the first T frames of the window, fast: every `fast`-th frame, as officially)."""
        t, r = self.num_frames, self.sampling_rate
        span = t * fast  # official: windows of diff_speed x T frames
        start_idx = sample_frame_indices(len(frames), span, r, rng)  # loop-padded when the video is short
        normal = np.arange(t)
        quick = np.arange(t) * fast
        return [frames[i] for i in start_idx], normal, quick

    def __call__(self, frames, rng):
        fast = int(self.speeds[int(rng.integers(len(self.speeds)))])
        t, r = self.num_frames, self.sampling_rate
        frames, synthetic = self.frames_or_synthetic(frames, rng, (t * fast - 1) * r + 1)
        first, normal, quick = self.window(frames, rng, fast)
        second, _, _ = self.window(frames, rng, fast)
        q_fast = bool(rng.random() < 0.5)  # which speed the query / positive use (official: half of the batch each)
        q_idx, n_idx = (quick, normal) if q_fast else (normal, quick)
        q_clip = self.augment([first[i] for i in q_idx], rng)
        # one augmentation draw for the whole second window, so both keys see the same crop / colour
        params = self.augment.draw(second[0].width, second[0].height, rng, second[0].mode)

        def keys(idx):
            return torch.stack([to_normalized_tensor(self.augment.apply(second[i], params), self.augment.mean,
                                                     self.augment.std) for i in idx])

        speeds = [fast if q_fast else 1, 1 if q_fast else fast]
        return {"pixel_values_videos": [q_clip, keys(q_idx), keys(n_idx)],
                "clip_speeds": torch.tensor(speeds, dtype=torch.long), "synthetic_clip": synthetic}


__all__ = ["RSPNetViewPolicy"]
