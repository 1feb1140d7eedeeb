"""SemAIM inference preprocessing."""

from __future__ import annotations

from ..base import SSLImageProcessor


class SemAIMImageProcessor(SSLImageProcessor):
    """Resize / center-crop / ImageNet-normalize (the official evaluation transform). Training views (random
    resized crop 0.2-1, flip) come from `SemAIMConfig.augmentation` via the `single_view` policy."""


__all__ = ["SemAIMImageProcessor"]
