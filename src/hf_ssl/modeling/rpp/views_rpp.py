"""The `"arbitrary_pair"` view policy: an anchor view of each image and a view of its partner, an arbitrary image.

SimLAP (Wu et al.) learns from arbitrary positive pairs: the official code draws the partner's class at random from
the batch (`y2 = y1[randperm]`) and treats every sample of that class as a positive. Without labels the pair is built
here, in the data pipeline: with probability `arbitrary_pair_prob` the partner is a uniformly drawn image among the
`pair_buffer_size` most recently seen images of this worker (a different image, in general of another class),
otherwise another augmentation of the same image (the classical positive pair). Both views get the same random crop,
flip, colour jitter, grayscale and blur settings; the partner view alone is solarized with `partner_solarize` (the
asymmetric second view of the authors' pipeline).

Each example carries `pair_ids` `[2]` (int64): content ids of the anchor image and of the partner image (a hash of
the decoded pixels, the same on every worker, process and epoch), which define the positives (candidates showing the
partner image) and the excluded candidates (those showing the anchor image) in the loss.
"""

from __future__ import annotations

import hashlib
from typing import List, Tuple

import torch

from ...training.data import ImageAugment, ViewPolicy, register_view_policy


def image_content_id(img) -> int:
    """A non-negative 63-bit id of a PIL image that depends only on its mode, size and pixels."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFFFFFFFFFF


@register_view_policy("arbitrary_pair")
class ArbitraryPairPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        scale = a.get("crop_scale", (0.4, 1.0))
        common = {k: a[k] for k in ("horizontal_flip", "color_jitter", "color_jitter_strength", "grayscale",
                                    "gaussian_blur") if k in a}
        self.anchor_view = ImageAugment(config.image_size, scale, self.mean, self.std,
                                        solarize=float(a.get("solarize", 0.0)), **common)
        self.partner_view = ImageAugment(config.image_size, scale, self.mean, self.std,
                                         solarize=float(a.get("partner_solarize", 0.0)), **common)
        self.arbitrary_prob = float(a.get("arbitrary_pair_prob", 1.0))
        self.buffer_size = int(a.get("pair_buffer_size", 256))
        self.buffer: List[Tuple[object, int]] = []  # recent (image, id), a ring of at most buffer_size entries
        self._next = 0

    def choose_partner(self, img, img_id: int, rng):
        """(partner image, partner id): a random recent image w.p. `arbitrary_pair_prob`, else the image itself."""
        if self.buffer and rng.random() < self.arbitrary_prob:
            return self.buffer[int(rng.integers(len(self.buffer)))]
        return img, img_id

    def remember(self, img, img_id: int) -> None:
        if len(self.buffer) < self.buffer_size:
            self.buffer.append((img, img_id))
        else:
            self.buffer[self._next] = (img, img_id)
        self._next = (self._next + 1) % self.buffer_size

    def __call__(self, img, rng):
        img_id = image_content_id(img)
        partner, partner_id = self.choose_partner(img, img_id, rng)
        self.remember(img, img_id)
        views = [self.anchor_view(img, rng), self.partner_view(partner, rng)]
        return {"pixel_values": views, "pair_ids": torch.tensor([img_id, partner_id], dtype=torch.long)}


__all__ = ["ArbitraryPairPolicy", "image_content_id"]
