"""GeneCIS conditional image similarity evaluation (Vaze et al., CVPR 2023): the `genecis` evaluate module
(`genecis.py`) and its numeric core, annotation loader, dual-encoder scorers and a generated digit benchmark
(`core.py`, documented there)."""

from .core import (SCORERS, TASKS, GeneCISSample, evaluate_genecis, genecis_recall, genecis_scores,
                   load_annotation_image, load_genecis_annotations, make_digit_genecis)

__all__ = ["TASKS", "SCORERS", "GeneCISSample", "genecis_recall", "genecis_scores", "evaluate_genecis",
           "load_annotation_image", "load_genecis_annotations", "make_digit_genecis"]
