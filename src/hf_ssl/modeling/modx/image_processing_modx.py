"""Mod-X inference preprocessing: the shared resize-shorter-side + center-crop + normalize processor."""

from ..base import SSLImageProcessor


class ModXImageProcessor(SSLImageProcessor):
    pass
