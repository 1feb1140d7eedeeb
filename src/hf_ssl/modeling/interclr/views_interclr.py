"""The `"interclr"` view policy: two MoCo v2 views plus a stable per-image `sample_index` for the memory bank.

The official code indexes its memory bank by the dataset index. A shuffled stream has no stable position, so the
index is derived from the image content (CRC32 of the decoded pixels and size): the same image gets the same index in
every epoch, on every worker and process, whatever the shuffle. The model takes it modulo `memory_bank_size`. A
dataset that already knows a stable integer id can pass `sample_index` itself instead.
"""

from __future__ import annotations

import zlib

from ...training.data import ViewPolicy, register_view_policy


def stable_image_index(img) -> int:
    """A non-negative 31-bit id of a PIL image that depends only on its pixels, size and mode."""
    header = f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode()
    return zlib.crc32(img.tobytes(), zlib.crc32(header)) & 0x7FFFFFFF


@register_view_policy("interclr")
class InterCLRViewPolicy(ViewPolicy):
    """Two independently augmented views (query, key) and `sample_index` (see module docstring)."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.2, 1.0)))

    def __call__(self, img, rng):
        return {"pixel_values": [self.view(img, rng), self.view(img, rng)], "sample_index": stable_image_index(img)}


__all__ = ["InterCLRViewPolicy", "stable_image_index"]
