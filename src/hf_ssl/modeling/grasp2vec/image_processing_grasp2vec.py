"""Grasp2Vec inference preprocessing (object / scene images): the shared resize + center-crop + normalize processor."""

from ..base import SSLImageProcessor


class Grasp2VecImageProcessor(SSLImageProcessor):
    pass
