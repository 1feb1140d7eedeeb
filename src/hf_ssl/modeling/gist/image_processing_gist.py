"""GIST inference preprocessing: the shared resize-shorter-side + center-crop + normalize processor."""

from ..base import SSLImageProcessor


class GISTImageProcessor(SSLImageProcessor):
    pass
