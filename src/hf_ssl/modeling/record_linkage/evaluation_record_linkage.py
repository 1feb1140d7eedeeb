"""Record-linkage evaluation: pairwise precision / recall / F1 at a similarity threshold, the best F1 over
thresholds, and retrieval recall@k of the true entity; plus an end-to-end protocol on generated noisy records."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _prf(tp: float, predicted: float, actual: float):
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def linkage_metrics(query_embeddings: Any, reference_embeddings: Any, query_ids: Any, reference_ids: Any,
                    threshold: float = 0.5, k: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Link every query record to reference records by cosine similarity.

    * Pairwise linkage at `threshold`: a (query, reference) pair is predicted a match when its cosine similarity is
      >= threshold; true matches share the entity id. Returns `pairwise_precision`, `pairwise_recall`,
      `pairwise_f1` (precision 0 when nothing is predicted), and `best_f1` / `best_threshold` over all observed
      similarity values.
    * Retrieval: `recall@k` = fraction of queries (with a true match among the references) whose true entity is
      among the k most similar references (ties in the query's favour); `recall@1` is nearest-neighbour linkage
      accuracy, CLIPPINGS' main metric."""
    q = F.normalize(torch.as_tensor(np.asarray(query_embeddings, dtype=np.float64)), dim=-1)
    r = F.normalize(torch.as_tensor(np.asarray(reference_embeddings, dtype=np.float64)), dim=-1)
    qi = torch.as_tensor(np.asarray(query_ids)).view(-1)
    ri = torch.as_tensor(np.asarray(reference_ids)).view(-1)
    if q.dim() != 2 or r.dim() != 2 or q.shape[1] != r.shape[1] or q.shape[0] == 0 or r.shape[0] == 0:
        raise ValueError(f"embeddings must be non-empty [N, D] / [M, D] arrays, got {tuple(q.shape)} and "
                         f"{tuple(r.shape)}")
    if qi.shape[0] != q.shape[0] or ri.shape[0] != r.shape[0]:
        raise ValueError("need one entity id per query and per reference record")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    sims = q @ r.t()
    match = qi[:, None] == ri[None, :]
    actual = float(match.sum())
    pred = sims >= threshold
    p, rec, f1 = _prf(float((pred & match).sum()), float(pred.sum()), actual)
    out = {"pairwise_precision": p, "pairwise_recall": rec, "pairwise_f1": f1, "threshold": float(threshold)}
    # best F1 over thresholds: sweep the sorted similarities (predict the top-n pairs for every n)
    order = torch.argsort(sims.flatten(), descending=True)
    tp = torch.cumsum(match.flatten()[order].double(), 0)
    n = torch.arange(1, tp.shape[0] + 1, dtype=torch.float64)
    f1s = torch.where(tp > 0, 2 * tp / (n + actual), torch.zeros_like(tp))
    # only cut where the similarity changes (ties are predicted together)
    flat = sims.flatten()[order]
    valid = torch.ones_like(flat, dtype=torch.bool)
    valid[:-1] = flat[:-1] != flat[1:]
    best = int(torch.argmax(torch.where(valid, f1s, torch.full_like(f1s, -1.0))))
    out.update(best_f1=float(f1s[best]), best_threshold=float(flat[best]))
    has = match.any(1)
    if bool(has.any()):
        best_true = sims.masked_fill(~match, -float("inf")).max(1).values
        rank = (sims.masked_fill(match, -float("inf")) > best_true[:, None]).sum(1)
        for v in ([k] if isinstance(k, int) else k):
            if int(v) < 1:
                raise ValueError(f"k must be positive, got {v}")
            out[f"recall@{int(v)}"] = float((rank[has] < int(v)).float().mean())
    return out


@torch.no_grad()
def evaluate_linkage(model, source: str = "builtin:digits", split: str = "test", max_samples: Optional[int] = None,
                     seed: int = 0, typo_rate: Optional[float] = None, batch_size: int = 128,
                     threshold: Optional[float] = None) -> Dict[str, float]:
    """Two noisy observations of every record of `source`/`split` (two random training-policy crops and two texts
    with `typo_rate` errors, drawn from a fixed seed): observation A is linked to the observations B. Reports
    `linkage_metrics` of
    the pooled multimodal record embeddings and, as CLIPPINGS' unimodal baselines, of the image-only and text-only
    embeddings (`image_only_*`, `text_only_*`)."""
    from ...training.data import decode_image, load_image_stream
    from .views_record_linkage import RecordPairPolicy

    cfg = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    policy = RecordPairPolicy(cfg)
    if typo_rate is not None:
        policy.typo_rate = float(typo_rate)
    rng = np.random.default_rng(seed)
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    if max_samples:
        ds = ds.take(max_samples)
    mode = {1: "L", 3: "RGB"}.get(cfg.num_channels)
    pix, texts = ([], []), ([], [])
    for example in ds:
        try:
            img = decode_image(example["image"], mode)
        except ValueError:
            continue
        pix[0].append(policy.view(img, rng))
        pix[1].append(policy.view(img, rng))
        a, b = policy.observation_texts(img, example, rng)
        texts[0].append(a)
        texts[1].append(b)
    if len(pix[0]) < 2:
        raise ValueError("need at least 2 decodable records to evaluate linkage")
    feats = {"record": ([], []), "image": ([], []), "text": ([], [])}
    for start in range(0, len(pix[0]), batch_size):
        for obs in (0, 1):
            image = model.encode_image(torch.stack(pix[obs][start:start + batch_size]).to(device))
            ids, mask = policy.tokenize(texts[obs][start:start + batch_size])
            text = model.encode_text(ids.to(device), mask.to(device))
            feats["record"][obs].append(model.pool_record(image, text).cpu())
            feats["image"][obs].append(image.cpu())
            feats["text"][obs].append(text.cpu())
    ids = np.arange(len(pix[0]))
    thr = cfg.link_threshold if threshold is None else threshold
    out = {}
    for kind, prefix in (("record", ""), ("image", "image_only_"), ("text", "text_only_")):
        m = linkage_metrics(torch.cat(feats[kind][0]), torch.cat(feats[kind][1]), ids, ids, threshold=thr)
        out.update({f"{prefix}{key}": v for key, v in m.items()})
    model.train(was_training)
    return out
