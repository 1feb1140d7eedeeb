"""Segmentation evaluation of DenseCLIP: mean IoU / pixel accuracy (mmseg's protocol: per-class intersection and
union accumulated over the whole set, classes absent from both prediction and ground truth left out of the mean),
on a labelled stream turned into segmentation pairs by the model's view policy with a fixed seed."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch


def segmentation_metrics(predictions, references, num_classes: int, ignore_index: int = 255) -> Dict[str, float]:
    """`predictions`, `references`: integer maps of the same shape (any leading dims). Returns `mean_iou`,
    `pixel_accuracy`, `mean_accuracy` and `iou_<c>` per class."""
    pred = torch.as_tensor(np.asarray(predictions)).long().reshape(-1)
    ref = torch.as_tensor(np.asarray(references)).long().reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"predictions and references differ in size: {pred.numel()} vs {ref.numel()}")
    valid = ref != ignore_index
    pred, ref = pred[valid], ref[valid]
    if ref.numel() == 0:
        raise ValueError("no labelled pixels (all are ignore_index)")
    if int(ref.max()) >= num_classes or int(ref.min()) < 0:
        raise ValueError(f"reference class ids must be in [0, {num_classes})")
    pred = pred.clamp(0, num_classes - 1)
    inter = torch.bincount(ref[pred == ref], minlength=num_classes).double()
    area_pred = torch.bincount(pred, minlength=num_classes).double()
    area_ref = torch.bincount(ref, minlength=num_classes).double()
    union = area_pred + area_ref - inter
    present = union > 0
    iou = inter / union.clamp_min(1)
    acc = inter / area_ref.clamp_min(1)
    out = {"mean_iou": float(iou[present].mean()), "pixel_accuracy": float(inter.sum() / ref.numel()),
           "mean_accuracy": float(acc[area_ref > 0].mean())}
    out.update({f"iou_{c}": float(iou[c]) for c in range(num_classes) if present[c]})
    return out


@torch.no_grad()
def evaluate_segmentation(model, source: str = "builtin:digits", split: str = "test", batch_size: int = 64,
                          max_samples: Optional[int] = None, seed: int = 0) -> Dict[str, float]:
    """mIoU of `model.predict_segmentation` on `source`/`split` (pasted canvases / segmentation maps from the
    model's view policy, seeded so every call sees the same pairs)."""
    from ...training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream

    cfg = model.config
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    if max_samples:
        ds = ds.take(max_samples)
    data = SSLViewDataset(ds, build_view_generator(cfg), seed=seed, image_mode={1: "L", 3: "RGB"}[cfg.num_channels])
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=SSLDataCollator())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, refs = [], []
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        preds.append(model.predict_segmentation(batch["pixel_values"].to(device)).cpu())
        refs.append(batch["segmentation_labels"])
    model.train(was_training)
    return segmentation_metrics(torch.cat(preds), torch.cat(refs), cfg.num_labels_segmentation, cfg.ignore_index)
