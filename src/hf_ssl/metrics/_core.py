"""Numeric core of the representation-quality metrics (k-NN and linear probe).

This module is the single implementation shared by the plain-Python helpers in
:mod:`hf_ssl.metrics` and by the ``evaluate`` metric scripts in
``hf_ssl/metrics/<name>/<name>.py`` (which import it as ``hf_ssl.metrics._core``
because ``evaluate`` copies those scripts into its own cache directory).

All functions accept embeddings as ``torch.Tensor``, ``numpy.ndarray`` or nested
lists of shape ``[N, D]`` and integer labels of shape ``[N]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["knn_scores", "knn_metrics", "fit_linear_probe", "linear_probe_metrics"]

# Upper bound on the number of similarity entries materialised at once (64M floats = 256 MiB).
_MAX_SIM_ELEMENTS = 1 << 26


def _to_embeddings(x: Any, name: str) -> torch.Tensor:
    """Convert ``x`` to a 2-D float tensor ``[N, D]`` or raise a clear ``ValueError``."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        if isinstance(x, np.ndarray) and x.dtype == object:  # ragged rows, e.g. from `datasets`
            try:
                x = np.stack([np.asarray(row, dtype=np.float32) for row in x])
            except ValueError as err:
                raise ValueError(f"`{name}` rows must all have the same dimension.") from err
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (ValueError, TypeError) as err:
            raise ValueError(f"`{name}` must be a rectangular [N, D] array of numbers ({err}).") from err
    if t.ndim != 2:
        raise ValueError(f"`{name}` must have shape [N, D], got shape {tuple(t.shape)}.")
    if not t.is_floating_point() or t.dtype == torch.float16 or t.dtype == torch.bfloat16:
        t = t.float()
    return t


def _to_labels(y: Any, name: str, n: int) -> torch.Tensor:
    """Convert ``y`` to a 1-D int64 tensor of length ``n`` with non-negative values."""
    try:
        t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a sequence of integer class ids ({err}).") from err
    t = t.reshape(-1) if t.ndim == 2 and 1 in t.shape else t
    if t.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D sequence of class ids, got shape {tuple(t.shape)}.")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"`{name}` must contain integer class ids.")
    t = t.long()
    if t.numel() != n:
        raise ValueError(f"`{name}` has {t.numel()} entries but the embeddings have {n} rows.")
    if n and int(t.min()) < 0:
        raise ValueError(f"`{name}` must contain non-negative class ids.")
    return t


def _prepare(train_emb, train_labels, query_emb, query_labels, num_classes):
    """Validate and convert a (train, query) pair; returns tensors and the number of classes."""
    train = _to_embeddings(train_emb, "train_embeddings")
    query = _to_embeddings(query_emb, "predictions")
    if train.shape[0] == 0:
        raise ValueError("The train/reference set is empty: `train_embeddings` needs at least one row.")
    if query.shape[0] == 0:
        raise ValueError("There are no query embeddings to evaluate.")
    if train.shape[1] != query.shape[1]:
        raise ValueError(
            f"Embedding dimensions differ: train_embeddings has D={train.shape[1]}, "
            f"query embeddings have D={query.shape[1]}."
        )
    y_train = _to_labels(train_labels, "train_labels", train.shape[0])
    y_query = _to_labels(query_labels, "references", query.shape[0])
    max_label = int(max(y_train.max(), y_query.max()))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(f"Found class id {max_label} but num_classes={num_classes}.")
    return train, y_train, query.to(train.device, train.dtype), y_query.to(train.device), int(num_classes)


def _fraction(correct: torch.Tensor) -> float:
    """Fraction of ``True`` entries as an exact Python float (count / total)."""
    return int(correct.sum()) / correct.numel()


@torch.no_grad()
def knn_scores(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    query_emb: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Weighted k-NN class scores ``[Q, num_classes]`` (already validated tensor inputs).

    Features are L2-normalised, neighbours are the ``k`` train samples with highest
    cosine similarity and each neighbour votes for its class with weight
    ``exp(sim / temperature)``. Weights are shifted by the per-query maximum similarity,
    ``exp((sim - sim_max) / temperature)``, which rescales all votes of a query by the same
    factor (identical ranking) but can neither overflow nor underflow to all-zero.
    ``k`` is clipped to the train-set size; queries are processed in chunks so that at most
    ``chunk_size x N_train`` similarities exist at any time.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    n_train = train_emb.shape[0]
    k = min(int(k), n_train)
    if chunk_size is None:
        chunk_size = max(1, _MAX_SIM_ELEMENTS // n_train)
    train = F.normalize(train_emb, dim=1)
    query = F.normalize(query_emb, dim=1)
    scores = torch.empty(query.shape[0], num_classes, dtype=train.dtype, device=train.device)
    for start in range(0, query.shape[0], chunk_size):
        sim = query[start : start + chunk_size] @ train.T  # [B, N]
        top_sim, top_idx = sim.topk(k, dim=1)  # sorted, descending
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=train.dtype, device=train.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores[start : start + chunk_size] = votes
    return scores


def knn_metrics(
    train_emb: Any,
    train_labels: Any,
    query_emb: Any,
    query_labels: Any,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Weighted k-NN accuracy of ``query_emb`` against the labelled ``train_emb`` bank.

    Returns ``{"knn_accuracy": top-1}`` plus ``"knn_top5"`` when there are at least 5 classes.
    The prediction is the class with the largest summed vote (ties -> smallest class id).
    """
    train, y_train, query, y_query, num_classes = _prepare(
        train_emb, train_labels, query_emb, query_labels, num_classes
    )
    scores = knn_scores(train, y_train.to(train.device), query, num_classes, k, temperature, chunk_size)
    result = {"knn_accuracy": _fraction(scores.argmax(dim=1) == y_query)}
    if num_classes >= 5:
        top5 = scores.topk(5, dim=1).indices
        result["knn_top5"] = _fraction((top5 == y_query[:, None]).any(dim=1))
    return result


def fit_linear_probe(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    c: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Fit a multinomial logistic regression on standardised features with full-batch L-BFGS.

    Minimises ``mean cross-entropy + c / 2 * ||W||_F^2`` (the bias is not penalised), i.e.
    ``c`` is an L2 weight-decay coefficient: larger means *stronger* regularisation (the
    opposite of scikit-learn's ``C``). Returns ``(linear, mean, std)``; predict with
    ``linear((x - mean) / std)``. The result is deterministic for a given ``seed``.
    """
    if c < 0:
        raise ValueError(f"c (L2 weight decay) must be >= 0, got {c}.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
    with torch.no_grad():
        x = train_emb.float()
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        # constant features stay at 0; "constant" is relative to the largest spread, so the probe does not depend on
        # the features' overall scale (a random-init encoder in eval mode can emit features of size 1e-13)
        std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
        x = (x - mean) / std
    generator = torch.Generator(device="cpu").manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 1e-3)
        linear.bias.zero_()
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )
    labels = train_labels.to(x.device)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), labels) + 0.5 * c * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    linear.requires_grad_(False)
    return linear, mean, std


def linear_probe_metrics(
    train_emb: Any,
    train_labels: Any,
    query_emb: Any,
    query_labels: Any,
    c: float = 1e-4,
    max_iter: int = 100,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Linear-probe accuracy: fit on (``train_emb``, ``train_labels``), score on the queries.

    See :func:`fit_linear_probe` for the optimisation details. Returns
    ``{"linear_probe_accuracy": float}``.
    """
    train, y_train, query, y_query, num_classes = _prepare(
        train_emb, train_labels, query_emb, query_labels, num_classes
    )
    linear, mean, std = fit_linear_probe(train, y_train, num_classes, c=c, max_iter=max_iter, seed=seed)
    with torch.no_grad():
        pred = linear((query.float() - mean) / std).argmax(dim=1)
    return {"linear_probe_accuracy": _fraction(pred == y_query)}
