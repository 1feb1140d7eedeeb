"""Representation-quality metrics: weighted k-NN accuracy and linear-probe accuracy.

Two equivalent entry points share one implementation (:mod:`hf_ssl.metrics._core`):

* ``evaluate`` modules shipped with the package, loadable fully offline::

      from hf_ssl.metrics import load_metric
      knn = load_metric("knn_accuracy")
      knn.compute(predictions=test_emb, references=test_labels,
                  train_embeddings=train_emb, train_labels=train_labels, k=20)

* plain functions :func:`knn_accuracy` and :func:`linear_probe_accuracy` that take
  tensors/arrays directly (no Arrow round-trip, so preferable inside training loops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._core import knn_metrics, linear_probe_metrics

__all__ = ["METRICS_DIR", "available_metrics", "load_metric", "knn_accuracy", "linear_probe_accuracy"]

METRICS_DIR = Path(__file__).resolve().parent
"""Folder holding one ``<name>/<name>.py`` ``evaluate`` module script per metric."""


def available_metrics() -> list[str]:
    """Names of the local ``evaluate`` metric modules shipped with hf_ssl."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def load_metric(name: str, **kwargs: Any):
    """Load one of hf_ssl's local metric modules with ``evaluate.load`` (no network access).

    Args:
        name: ``"knn_accuracy"`` or ``"linear_probe"`` (see :func:`available_metrics`).
        **kwargs: forwarded to :func:`evaluate.load` (e.g. ``keep_in_memory=True``,
            ``experiment_id``, ``process_id``/``num_process`` for distributed evaluation).

    Returns:
        The instantiated :class:`evaluate.EvaluationModule`.
    """
    import evaluate  # imported lazily: importing evaluate is comparatively slow

    available = available_metrics()
    if name not in available:
        raise ValueError(f"Unknown hf_ssl metric {name!r}; available metrics: {', '.join(available)}.")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)


def knn_accuracy(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    test_labels: Any,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Weighted k-NN accuracy (cosine similarity, ``exp(sim / temperature)`` votes).

    Embeddings are ``[N, D]`` tensors/arrays/lists and labels ``[N]`` integer class ids.
    Returns ``{"knn_accuracy": float}`` plus ``"knn_top5"`` when there are >= 5 classes,
    exactly like ``load_metric("knn_accuracy").compute(...)``.
    """
    return knn_metrics(
        train_emb, train_labels, test_emb, test_labels,
        k=k, temperature=temperature, num_classes=num_classes, chunk_size=chunk_size,
    )


def linear_probe_accuracy(
    train_emb: Any,
    train_labels: Any,
    test_emb: Any,
    test_labels: Any,
    c: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Linear-probe accuracy: L-BFGS logistic regression (L2 weight decay ``c``) on standardised
    train embeddings, evaluated on the test embeddings.

    Returns ``{"linear_probe_accuracy": float}``, exactly like
    ``load_metric("linear_probe").compute(...)``.
    """
    return linear_probe_metrics(
        train_emb, train_labels, test_emb, test_labels,
        c=c, max_iter=max_iter, seed=seed, num_classes=num_classes,
    )


# vision-language metrics (zero-shot classification, cross-modal retrieval): plain-function entry points of the
# `zero_shot_accuracy` / `retrieval_recall` evaluate modules
from ._vl import retrieval_metrics as retrieval_recall  # noqa: E402
from ._vl import zero_shot_metrics as zero_shot_accuracy  # noqa: E402

__all__ += ["zero_shot_accuracy", "retrieval_recall"]
