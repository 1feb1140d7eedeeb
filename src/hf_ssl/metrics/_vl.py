"""Numeric core of the vision-language metrics (zero-shot accuracy, retrieval recall@k), shared by the
`evaluate` modules `zero_shot_accuracy` / `retrieval_recall` and usable directly on tensors/arrays."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _as_2d(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.detach().float().cpu()
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {tuple(t.shape)}")
    return t


def zero_shot_metrics(image_embeddings: Any, labels: Any, class_embeddings: Any) -> Dict[str, float]:
    """Zero-shot classification: each image takes the class whose (prompt-ensembled) text embedding is most
    cosine-similar. Returns `zero_shot_accuracy` and, with >= 5 classes, `zero_shot_top5`."""
    img = F.normalize(_as_2d(image_embeddings, "image embeddings"), dim=-1)
    cls = F.normalize(_as_2d(class_embeddings, "class_embeddings"), dim=-1)
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"image embeddings have width {img.shape[1]} but class embeddings {cls.shape[1]}")
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if labels.shape != (img.shape[0],):
        raise ValueError(f"need one label per image: {img.shape[0]} images, labels shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= cls.shape[0]:
        raise ValueError(f"labels must be in [0, {cls.shape[0]}) (one class embedding per class)")
    scores = img @ cls.t()
    out = {"zero_shot_accuracy": float((scores.argmax(1) == labels).float().mean())}
    if cls.shape[0] >= 5:
        top5 = scores.topk(5, dim=1).indices
        out["zero_shot_top5"] = float((top5 == labels[:, None]).any(1).float().mean())
    return out


def _recall(scores: torch.Tensor, k: int) -> float:
    """Row i's correct item is column i; recall@k = fraction of rows whose correct column ranks in the top k."""
    correct = scores.diagonal()[:, None]
    rank = (scores > correct).sum(1)  # items strictly better than the match (ties count in its favour)
    return float((rank < k).float().mean())


def retrieval_metrics(image_embeddings: Any, text_embeddings: Any, k: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Image->text and text->image recall@k for paired embeddings (row i of each is a matching pair), cosine
    similarity. Returns `image_to_text_recall@k`, `text_to_image_recall@k` for every k and `mean_recall`."""
    img = F.normalize(_as_2d(image_embeddings, "image embeddings"), dim=-1)
    txt = F.normalize(_as_2d(text_embeddings, "text embeddings"), dim=-1)
    if img.shape != txt.shape:
        raise ValueError(f"image and text embeddings must be paired [N, D]; got {tuple(img.shape)}, {tuple(txt.shape)}")
    ks = [int(v) for v in ([k] if isinstance(k, int) else k)]
    if not ks or any(v < 1 for v in ks):
        raise ValueError(f"k must be positive integers, got {k}")
    scores = img @ txt.t()
    out = {}
    for v in ks:
        out[f"image_to_text_recall@{v}"] = _recall(scores, v)
        out[f"text_to_image_recall@{v}"] = _recall(scores.t(), v)
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


__all__ = ["zero_shot_metrics", "retrieval_metrics"]
