"""Representation evaluation: feature extraction (with progress bars) and the k-NN / linear-probe protocol
through the project's local `evaluate` modules (`hf_ssl/metrics`)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def extract_features(model, dataset, batch_size: int = 256, device=None, num_workers: int = 0,
                     desc: str = "features", disable_progress: bool = False,
                     feature_fn=None) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of a labeled `SSLViewDataset`: `model.get_input_features` on the model's main
    input (`main_input_name`; images for most methods, clips for video methods), else `get_image_features`.
    `feature_fn(inputs)` replaces that feature path (a method's task metric on transformed inputs)."""
    from .data import SSLDataCollator

    device = device or next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=SSLDataCollator(),
                                         num_workers=num_workers)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=disable_progress):
            key = getattr(model, "main_input_name", "pixel_values")
            key = key if key in batch else "pixel_values"
            if key not in batch:
                continue
            fn = feature_fn or getattr(model, "get_input_features", None) or model.get_image_features
            f = fn(batch[key].to(device))
            feats.append(f.float().cpu())
            labels.append(batch["labels"])
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("No decodable labeled images in the evaluation dataset")
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def knn_and_linear_metrics(train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                           k: int = 20, temperature: float = 0.07, linear_probe: bool = False) -> Dict[str, float]:
    from ..metrics import load_metric

    (xtr, ytr), (xte, yte) = train, test
    out = load_metric("knn_accuracy").compute(
        predictions=xte, references=yte, train_embeddings=xtr, train_labels=ytr, k=k, temperature=temperature
    )
    if linear_probe:
        out.update(load_metric("linear_probe").compute(
            predictions=xte, references=yte, train_embeddings=xtr, train_labels=ytr
        ))
    return {key: float(v) for key, v in out.items()}


def evaluate_representations(model, train_dataset, test_dataset, batch_size: int = 256, k: int = 20,
                             temperature: float = 0.07, linear_probe: bool = False, device=None,
                             disable_progress: bool = False) -> Dict[str, float]:
    train = extract_features(model, train_dataset, batch_size, device, desc="k-NN bank",
                             disable_progress=disable_progress)
    test = extract_features(model, test_dataset, batch_size, device, desc="k-NN queries",
                            disable_progress=disable_progress)
    return knn_and_linear_metrics(train, test, k=k, temperature=temperature, linear_probe=linear_probe)


def few_shot_metrics(train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                     shots=(1, 2, 4, 8, 16), trials: int = 5, k: int = 20, temperature: float = 0.07,
                     seed: int = 0) -> Dict[str, float]:
    """Few-shot protocol of the DINOv2-radiology study (Baharoon et al., 2023, "Towards General Purpose Vision
    Foundation Models for Medical Image Analysis: An Experimental Study of DINOv2 on Radiology Benchmarks"):
    for each `n` in `shots`, `trials` times draw `n` labeled training images per class (without replacement,
    seeded), fit the k-NN (k capped at the support size) and the linear probe on those only, and score the whole
    test split. Returns `fewshot_{n}_{knn|linear}_accuracy` (mean over trials) and `..._std`. Classes with fewer
    than `n` training images contribute all they have."""
    (xtr, ytr), (xte, yte) = train, test
    classes = np.unique(ytr)
    rng = np.random.default_rng(seed)
    out: Dict[str, float] = {}
    for n in shots:
        if n < 1:
            raise ValueError(f"few-shot sizes must be >= 1, got {n}")
        knn, lin = [], []
        for _ in range(trials):
            idx = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:n] for c in classes])
            support = (xtr[idx], ytr[idx])
            m = knn_and_linear_metrics(support, (xte, yte), k=min(k, len(idx)), temperature=temperature,
                                       linear_probe=True)
            knn.append(m["knn_accuracy"])
            lin.append(m["linear_probe_accuracy"])
        out[f"fewshot_{n}_knn_accuracy"] = float(np.mean(knn))
        out[f"fewshot_{n}_knn_accuracy_std"] = float(np.std(knn))
        out[f"fewshot_{n}_linear_accuracy"] = float(np.mean(lin))
        out[f"fewshot_{n}_linear_accuracy_std"] = float(np.std(lin))
    return out
