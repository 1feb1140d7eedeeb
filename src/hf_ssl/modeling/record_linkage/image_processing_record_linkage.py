"""Inference preprocessing: the shared resize-shorter-side + center-crop + normalize processor."""

from ..base import SSLImageProcessor


class RecordLinkageImageProcessor(SSLImageProcessor):
    pass
