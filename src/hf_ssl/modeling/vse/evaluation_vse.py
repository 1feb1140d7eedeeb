"""Caption <-> image retrieval (recall@k) and zero-shot evaluation of joint-embedding models (VSE++ and the
models built on it) on a labelled image stream with templated captions."""

from __future__ import annotations

from typing import Dict, Optional

import torch


@torch.no_grad()
def retrieval_evaluate(model, source: str = "builtin:digits", split: str = "test", tokenizer=None,
                       batch_size: int = 128, max_samples: Optional[int] = None, k=(1, 5, 10)) -> Dict[str, float]:
    """Image->caption and caption->image recall@k (each image against one templated caption of its class,
    `caption_templates[0]`, so captions of the same class tie: ties count in the query's favour) plus zero-shot
    accuracy (prompt ensemble over the config's templates), with deterministic eval preprocessing."""
    from ...metrics._vl import retrieval_metrics, zero_shot_metrics
    from ...training.data import SSLDataCollator, labeled_eval_dataset
    from ...training.text import load_tokenizer

    cfg = model.config
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                            context_length=cfg.context_length)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(labeled_eval_dataset(source, split, cfg, max_samples=max_samples),
                                         batch_size=batch_size, collate_fn=SSLDataCollator())
    images, labels = [], []
    for batch in loader:
        if "pixel_values" in batch:
            images.append(model.encode_image(batch["pixel_values"].to(device)).cpu())
            labels.append(batch["labels"])
    image, labels = torch.cat(images), torch.cat(labels)
    captions = [cfg.caption_templates[0].format(cfg.class_names[int(y)]) for y in labels]
    texts = []
    for start in range(0, len(captions), batch_size):
        enc = tokenizer(captions[start:start + batch_size], padding="max_length", truncation=True,
                        max_length=cfg.context_length, return_tensors="pt")
        texts.append(model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).cpu())
    out = retrieval_metrics(image, torch.cat(texts), k=k)
    out.update(zero_shot_metrics(image, labels, model.zero_shot_classifier(tokenizer).cpu()))
    model.train(was_training)
    return out
