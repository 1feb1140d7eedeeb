"""TIPS inference preprocessing: the shared resize-shorter-side + center-crop + normalize processor (the released
models take pixels in [0, 1]: mean 0, std 1, set by `TIPSConfig`)."""

from ..base import SSLImageProcessor


class TIPSImageProcessor(SSLImageProcessor):
    pass
