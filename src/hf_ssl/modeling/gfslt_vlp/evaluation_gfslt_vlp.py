"""Video->text retrieval and zero-shot classification of a GFSLT-VLP model on a labelled clip stream."""

from __future__ import annotations

from typing import Dict, Optional

import torch


@torch.no_grad()
def video_text_evaluate(model, source: str = "builtin:moving_digits", split: str = "test", batch_size: int = 64,
                        max_samples: Optional[int] = None) -> Dict[str, float]:
    """Video<->text recall@{1,5,10} of every clip against its own sentence (the `gfslt_vlp_eval` policy: centred
    clip, sentence from the text column or generated from the label and the measured motion; identical sentences tie
    in favour of the match), and zero-shot accuracy over `config.class_names` with the `caption_templates` ensemble.
    Returns the `retrieval_metrics` keys (`image_to_text_*` = video->text) plus `zero_shot_accuracy`."""
    from ...metrics._vl import retrieval_metrics, zero_shot_metrics
    from ...training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream
    from .views_gfslt_vlp import load_gfslt_tokenizer

    cfg = model.config
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    if max_samples:
        ds = ds.take(max_samples)
    mode = {1: "L", 3: "RGB"}.get(cfg.num_channels)
    data = SSLViewDataset(ds, build_view_generator(cfg, "gfslt_vlp_eval"), with_labels=True, image_mode=mode)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=SSLDataCollator())
    videos, texts, labels = [], [], []
    for batch in loader:
        if "pixel_values_videos" not in batch:
            continue
        videos.append(model.encode_video(batch["pixel_values_videos"].to(device)).cpu())
        texts.append(model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
        labels.append(batch["labels"])
    video, text, labels = torch.cat(videos), torch.cat(texts), torch.cat(labels)
    out = retrieval_metrics(video, text, k=(1, 5, 10))
    tokenizer = load_gfslt_tokenizer(cfg)
    classes = model.zero_shot_classifier(tokenizer, cfg.class_names, cfg.caption_templates).cpu()
    out.update(zero_shot_metrics(video, labels, classes))
    model.train(was_training)
    return out


__all__ = ["video_text_evaluate"]
