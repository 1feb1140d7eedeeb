"""Object-discovery evaluation of object-centric models: foreground adjusted Rand index (FG-ARI) and matched mIoU of
predicted instance masks against ground-truth instance masks that ship WITH the data.

Metrics (per frame, then averaged over all frames that contain foreground):

* FG-ARI (Greff et al. 2019; the standard of Slot Attention / SAVi / SMTC): the adjusted Rand index (Hubert & Arabie
  1985) between ground-truth instance ids and predicted segment ids over the ground-truth FOREGROUND pixels only
  (background pixels are ignored, so the metric scores how objects are separated, not where the background goes).
  `video_fg_ari` is the same over all foreground pixels of all frames of a clip at once: a segment must keep the
  same id over time to score (temporal consistency).
* mIoU: every ground-truth instance is matched one-to-one to a predicted segment (Hungarian on the IoU matrix,
  `scipy.optimize.linear_sum_assignment`); the mean IoU over ground-truth instances (unmatched ones count 0).

Data: a clip dataset laid out as `<root>/<split>/<label>/<clip file>` with the masks at
`<root>/masks/<split>/<label>/<stem>.tif` (one uint8 page per frame, 0 = background, k > 0 = instance k), as
`builtin:moving_digit_pairs` writes them. A model takes part by implementing
`predict_instance_masks(clips [B, T, C, H, W]) -> [B, T, H, W]` integer segment ids at the input resolution.

Entry points: :func:`evaluate_object_discovery` (Python), `hf-ssl evaluate <checkpoint> --dataset
builtin:moving_digit_pairs --object-discovery` (command line), and the `task_metrics` hook that `hf-ssl pretrain`
reports before and after training for models that define it.
"""

from __future__ import annotations

import glob
import os
from typing import Dict, Optional

import numpy as np
import torch
from PIL import Image


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
def _comb2(x):
    x = np.asarray(x, dtype=np.float64)
    return x * (x - 1.0) / 2.0


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index of two flat labelings (the definition of `sklearn.metrics.adjusted_rand_score`, including
    its conventions: 1.0 when both labelings are one cluster, or both put every sample in its own cluster)."""
    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"labelings differ in size: {t.shape} vs {p.shape}")
    n = t.size
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    nt, npred = ti.max() + 1 if n else 0, pi.max() + 1 if n else 0
    if n == 0 or (nt == npred == 1) or (nt == npred == n):
        return 1.0
    table = np.zeros((nt, npred), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    sum_cells = _comb2(table).sum()
    sum_rows = _comb2(table.sum(axis=1)).sum()
    sum_cols = _comb2(table.sum(axis=0)).sum()
    expected = sum_rows * sum_cols / _comb2(n)
    maximum = 0.5 * (sum_rows + sum_cols)
    if maximum == expected:
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def foreground_ari(true_ids, pred_ids, background: int = 0) -> Optional[float]:
    """ARI over the pixels whose ground-truth id is not `background`; None when there is no foreground."""
    t = np.asarray(true_ids).ravel()
    p = np.asarray(pred_ids).ravel()
    fg = t != background
    if not fg.any():
        return None
    return adjusted_rand_index(t[fg], p[fg])


def matched_miou(true_ids, pred_ids, background: int = 0) -> Optional[float]:
    """Mean over ground-truth instances of the IoU with their one-to-one (Hungarian, maximum total IoU) predicted
    segment; None when there is no ground-truth instance."""
    from scipy.optimize import linear_sum_assignment

    t = np.asarray(true_ids).ravel()
    p = np.asarray(pred_ids).ravel()
    gt = [k for k in np.unique(t) if k != background]
    if not gt:
        return None
    segs = np.unique(p)
    iou = np.zeros((len(gt), len(segs)))
    for i, k in enumerate(gt):
        a = t == k
        for j, s in enumerate(segs):
            b = p == s
            union = np.logical_or(a, b).sum()
            iou[i, j] = np.logical_and(a, b).sum() / union if union else 0.0
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(gt))


# ----------------------------------------------------------------------------------------------------
# data with masks
# ----------------------------------------------------------------------------------------------------
def clip_mask_path(clip_path: str) -> str:
    """`<root>/<split>/<label>/<stem>.<ext>` -> `<root>/masks/<split>/<label>/<stem>.tif`."""
    label_dir, name = os.path.split(os.path.abspath(clip_path))
    split_dir, label = os.path.split(label_dir)
    root, split = os.path.split(split_dir)
    return os.path.join(root, "masks", split, label, os.path.splitext(name)[0] + ".tif")


def clips_with_masks(source: str, split: str = "test"):
    """Sorted `(clip_path, mask_path)` of a dataset folder (or `builtin:<name>`) that carries instance masks."""
    if source.startswith("builtin:"):
        from .data import materialize_builtin

        source = materialize_builtin(source.split(":", 1)[1])
    files = sorted(f for f in glob.glob(os.path.join(source, split, "*", "*")) if os.path.isfile(f))
    pairs = [(f, clip_mask_path(f)) for f in files]
    pairs = [(f, m) for f, m in pairs if os.path.exists(m)]
    if not pairs:
        raise ValueError(f"{source!r} has no ground-truth instance masks for split {split!r} (expected "
                         f"<root>/masks/{split}/<label>/<stem>.tif next to <root>/{split}/<label>/<clip>); "
                         "object discovery needs data that carries its masks, e.g. builtin:moving_digit_pairs")
    return pairs


def _load_masks(path: str) -> np.ndarray:
    from PIL import ImageSequence

    with Image.open(path) as img:
        return np.stack([np.asarray(page.convert("L"), dtype=np.uint8) for page in ImageSequence.Iterator(img)])


def _prepare(clip_path: str, mask_path: str, config):
    """The evaluation window (centred, `num_frames` at `sampling_rate`) of one clip, every frame resized whole to
    `image_size` (bicubic; the masks nearest), normalised: (`[T, C, S, S]` tensor, `[T, S, S]` ids)."""
    from .video import decode_clip, sample_frame_indices

    frames = decode_clip(clip_path, {1: "L", 3: "RGB"}.get(config.num_channels, "RGB"))
    masks = _load_masks(mask_path)
    if len(masks) != len(frames):
        raise ValueError(f"{mask_path} has {len(masks)} mask pages for {len(frames)} frames of {clip_path}")
    idx = sample_frame_indices(len(frames), int(getattr(config, "num_frames", len(frames))),
                               int(getattr(config, "sampling_rate", 1)), mode="center")
    size = int(config.image_size)
    mean = np.asarray(config.image_mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(config.image_std, dtype=np.float32).reshape(-1, 1, 1)
    clip, ids = [], []
    for i in idx:
        arr = np.asarray(frames[i].resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        clip.append(torch.from_numpy((arr - mean) / std))
        ids.append(np.asarray(Image.fromarray(masks[i]).resize((size, size), Image.NEAREST)))
    return torch.stack(clip), np.stack(ids)


@torch.no_grad()
def evaluate_object_discovery(model, source: str = "builtin:moving_digit_pairs", split: str = "test",
                              batch_size: int = 32, max_clips: Optional[int] = None, device=None,
                              **predict_kwargs) -> Dict[str, float]:
    """FG-ARI / video FG-ARI / mIoU of `model.predict_instance_masks` on the clips of `source` / `split` against their
    ground-truth instance masks. Returns `{"fg_ari", "video_fg_ari", "miou", "num_clips", "num_frames"}`."""
    predict = getattr(model, "predict_instance_masks", None)
    if predict is None:
        raise ValueError(f"{type(model).__name__} does not predict instance masks (no `predict_instance_masks`); "
                         "object discovery applies to object-centric models such as SMTC")
    pairs = clips_with_masks(source, split)
    if max_clips:
        pairs = pairs[:max_clips]
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    frame_ari, frame_iou, clip_ari = [], [], []
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = [_prepare(c, m, model.config) for c, m in pairs[start:start + batch_size]]
            clips = torch.stack([c for c, _ in chunk]).to(device)
            pred = predict(clips, **predict_kwargs).cpu().numpy()
            for (_, truth), seg in zip(chunk, pred):
                if seg.shape != truth.shape:
                    raise ValueError(f"predicted masks {seg.shape} do not match the ground truth {truth.shape}")
                for t_ids, p_ids in zip(truth, seg):
                    a = foreground_ari(t_ids, p_ids)
                    if a is not None:
                        frame_ari.append(a)
                        frame_iou.append(matched_miou(t_ids, p_ids))
                v = foreground_ari(truth, seg)
                if v is not None:
                    clip_ari.append(v)
    finally:
        model.train(was_training)
    if not frame_ari:
        raise ValueError("no foreground pixels in the ground-truth masks")
    return {"fg_ari": float(np.mean(frame_ari)), "video_fg_ari": float(np.mean(clip_ari)),
            "miou": float(np.mean(frame_iou)), "num_clips": float(len(pairs)), "num_frames": float(len(frame_ari))}


__all__ = ["adjusted_rand_index", "foreground_ari", "matched_miou", "clip_mask_path", "clips_with_masks",
           "evaluate_object_discovery"]
