"""Zero-shot classification and retrieval evaluation of a CLIP model on a labelled image stream."""

from __future__ import annotations

from typing import Dict, Optional

import torch


@torch.no_grad()
def zero_shot_evaluate(model, source: str = "builtin:digits", split: str = "test", tokenizer=None,
                       class_names=None, templates=None, batch_size: int = 128,
                       max_samples: Optional[int] = None) -> Dict[str, float]:
    """Zero-shot accuracy (prompt ensemble over `templates` x `class_names`, default the config's) and
    image->text / text->image recall@{1,5} of each image against one templated caption of its class
    (`templates[0]`), on `source`/`split` (deterministic eval preprocessing)."""
    from ...metrics._vl import retrieval_metrics, zero_shot_metrics
    from ...training.data import SSLDataCollator, labeled_eval_dataset
    from ...training.text import load_tokenizer

    cfg = model.config
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                            context_length=cfg.context_length)
    was_training = model.training
    model.eval()
    class_names = list(class_names or cfg.class_names)
    templates = list(templates or cfg.caption_templates)
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(labeled_eval_dataset(source, split, cfg, max_samples=max_samples),
                                         batch_size=batch_size, collate_fn=SSLDataCollator())
    feats, labels = [], []
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        feats.append(model.encode_image(batch["pixel_values"].to(device)).cpu())
        labels.append(batch["labels"])
    image = torch.cat(feats)
    labels = torch.cat(labels)
    classes = model.zero_shot_classifier(tokenizer, class_names, templates).cpu()
    out = zero_shot_metrics(image, labels, classes)
    enc = tokenizer([templates[0].format(class_names[int(y)]) for y in labels], padding="max_length",
                    truncation=True, max_length=cfg.context_length, return_tensors="pt")
    text = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).cpu()
    out.update(retrieval_metrics(image, text, k=(1, 5)))
    model.train(was_training)
    return out
