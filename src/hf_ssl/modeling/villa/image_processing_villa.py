"""ViLLA inference preprocessing: the shared resize-shorter-side + center-crop + normalize processor."""

from ..base import SSLImageProcessor


class ViLLAImageProcessor(SSLImageProcessor):
    pass
