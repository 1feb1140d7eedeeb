"""Composed image retrieval evaluation (CIRR protocol): every (reference, relative caption) query ranks the gallery
of all target images of the evaluation set; recall@k = fraction of queries whose target is among the k best
(a gallery image identical to the target counts as a hit). Triplets come from the model's view policy on a labelled
stream with a fixed seed (class and geometric edits on the built-in digits)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch


def composed_recall_at_k(query: torch.Tensor, gallery: torch.Tensor, target_index: torch.Tensor,
                         k: Sequence[int] = (1, 5, 10), same_as_target: Optional[torch.Tensor] = None
                         ) -> Dict[str, float]:
    """`query` `[Q, D]`, `gallery` `[G, D]` (cosine), `target_index` `[Q]`. `same_as_target` `[Q, G]` (bool, optional)
    marks gallery items identical to the target, which count as hits. Returns `recall@k` for every k."""
    q = torch.nn.functional.normalize(query.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query width {q.shape[1]} != gallery width {g.shape[1]}")
    target_index = torch.as_tensor(target_index).long()
    if target_index.shape != (q.shape[0],) or int(target_index.max()) >= g.shape[0] or int(target_index.min()) < 0:
        raise ValueError("target_index needs one gallery index per query")
    sims = q @ g.t()
    hit = torch.zeros_like(sims, dtype=torch.bool)
    hit[torch.arange(len(q)), target_index] = True
    if same_as_target is not None:
        hit |= same_as_target.bool()
    best_hit = sims.masked_fill(~hit, float("-inf")).max(1).values
    rank = (sims.masked_fill(hit, float("-inf")) > best_hit[:, None]).sum(1)  # non-hits strictly better
    return {f"recall@{int(v)}": float((rank < int(v)).float().mean()) for v in k}


@torch.no_grad()
def composed_retrieval_evaluate(model, source: str = "builtin:digits", split: str = "test",
                                k: Sequence[int] = (1, 5, 10), batch_size: int = 128,
                                max_samples: Optional[int] = None, seed: int = 0) -> Dict[str, float]:
    """Recall@k of the composed query (`model.compose`) and of the text-only branch over the set's targets."""
    from ...training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream

    cfg = model.config
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    if max_samples:
        ds = ds.take(max_samples)
    data = SSLViewDataset(ds, build_view_generator(cfg), seed=seed, image_mode={1: "L", 3: "RGB"}[cfg.num_channels])
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=SSLDataCollator())
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    queries, text_only, targets, ids = [], [], [], []
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        ref = batch["pixel_values"].to(device)
        tok, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        queries.append(model.compose(ref, tok, mask).cpu())
        text_only.append(model.text_only_query(tok, mask).cpu())
        targets.append(model.encode_image(batch["target_pixel_values"].to(device)).cpu())
        ids.append(batch["target_ids"])
    model.train(was_training)
    gallery, ids = torch.cat(targets), torch.cat(ids)
    same = ids[:, None] == ids[None, :]
    index = torch.arange(len(gallery))
    out = {f"composed_{key}": v for key, v in
           composed_recall_at_k(torch.cat(queries), gallery, index, k, same).items()}
    out.update({f"text_only_{key}": v for key, v in
                composed_recall_at_k(torch.cat(text_only), gallery, index, k, same).items()})
    return out
