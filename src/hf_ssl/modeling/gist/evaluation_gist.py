"""GIST evaluation: linear probe on the joint-space image embeddings (the paper's protocol) and zero-shot
classification with class prompts written in the training caption format ("<class>: <template>")."""

from __future__ import annotations

from typing import Dict, Optional

import torch


@torch.no_grad()
def gist_evaluate(model, source: str = "builtin:digits_gist", train_split: str = "train", test_split: str = "test",
                  batch_size: int = 128, max_samples: Optional[int] = None, tokenizer=None) -> Dict[str, float]:
    """`linear_probe_accuracy` of a logistic-regression probe on the L2-normalised joint image embeddings
    (official `linear_probe.py` trains a linear layer on the CLIP image embeddings of the train split) and
    `zero_shot_accuracy` with the prompt ensemble `caption_format(class_name, template(class_name))`."""
    from ...metrics import load_metric
    from ...metrics._vl import zero_shot_metrics
    from ...training.data import SSLDataCollator, labeled_eval_dataset
    from ...training.text import load_tokenizer
    from .views_gist import format_caption

    cfg = model.config
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                            context_length=cfg.context_length)
    was_training = model.training
    model.eval()
    device = model.logit_scale.device

    def embed(split):
        loader = torch.utils.data.DataLoader(labeled_eval_dataset(source, split, cfg, max_samples=max_samples),
                                             batch_size=batch_size, collate_fn=SSLDataCollator())
        feats, labels = [], []
        for batch in loader:
            if "pixel_values" in batch:
                feats.append(model.encode_image(batch["pixel_values"].to(device)).cpu())
                labels.append(batch["labels"])
        return torch.cat(feats), torch.cat(labels)

    try:
        xtr, ytr = embed(train_split)
        xte, yte = embed(test_split)
        out = {k: float(v) for k, v in load_metric("linear_probe").compute(
            predictions=xte.numpy(), references=yte.numpy(), train_embeddings=xtr.numpy(),
            train_labels=ytr.numpy()).items()}
        templates = [lambda name, t=t: format_caption(cfg.caption_format, name, t.format(name))
                     for t in cfg.caption_templates]
        weights = []
        for name in cfg.class_names:
            emb = model.encode_text(*model._tokenize(tokenizer, [f(name) for f in templates]))
            weights.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        out.update(zero_shot_metrics(xte, yte, torch.stack(weights).cpu()))
    finally:
        model.train(was_training)
    return out


__all__ = ["gist_evaluate"]
