"""ISR inference preprocessing of instance (person) crops."""

from __future__ import annotations

from ..base import SSLImageProcessor


class ISRImageProcessor(SSLImageProcessor):
    """Instance crops are resized straight to `image_size` x `image_size` (the released inference code resizes person
    crops to 224 x 224; nothing is cropped away), rescaled and normalised (the config's mean / std). Stock form:
    transformers' `BitImageProcessor`."""

    @classmethod
    def from_ssl_config(cls, config, **kwargs):
        size = config.image_size
        kwargs.setdefault("size", {"shortest_edge": size})
        return super().from_ssl_config(config, **kwargs)


__all__ = ["ISRImageProcessor"]
