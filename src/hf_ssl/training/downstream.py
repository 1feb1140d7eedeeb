"""Downstream adaptation: PEFT LoRA on a stock `AutoModelForImageClassification` built from an exported
encoder, trained with the plain `transformers.Trainer`. The saved adapter loads with plain peft:
`PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(encoder_dir, num_labels=...), dir)`.
"""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace
from typing import Dict, List, Optional

import numpy as np
import torch

from .data import (SSLDataCollator, SSLViewDataset, ViewPolicy, build_view_generator, load_image_stream,
                   register_view_policy)

logger = logging.getLogger(__name__)


def default_lora_targets(model_type: str) -> List[str]:
    """LoRA targets per encoder family: ViT attention query/value projections (LoRA paper's choice);
    ConvNets: every convolution in the residual stages (peft's Conv2d LoRA)."""
    if model_type in ("vit", "deit", "dinov2", "vit_mae", "vit_msn"):
        return ["query", "value"]
    if model_type in ("swin", "swinv2"):
        return ["query", "value"]
    if model_type in ("resnet", "regnet", "convnext", "convnextv2", "bit"):
        return ["convolution"] if model_type in ("resnet", "regnet", "bit") else ["pwconv1", "pwconv2"]
    raise ValueError(f"No default LoRA targets for {model_type!r}; pass target_modules explicitly.")


def _processor_settings(encoder_dir: str, config) -> SimpleNamespace:
    """Resolution/normalization for the fine-tuning views, read from the exported processor config."""
    path = os.path.join(encoder_dir, "preprocessor_config.json")
    pp = json.load(open(path)) if os.path.exists(path) else {}
    crop = pp.get("crop_size") or pp.get("size") or {}
    size = crop.get("height") or crop.get("shortest_edge") or getattr(config, "image_size", 224)
    channels = getattr(config, "num_channels", 3)
    return SimpleNamespace(
        image_size=int(size), num_channels=channels,
        image_mean=pp.get("image_mean", [0.485, 0.456, 0.406][:channels]),
        image_std=pp.get("image_std", [0.229, 0.224, 0.225][:channels]),
        augmentation={"policy": "finetune", "crop_scale": [0.5, 1.0], "horizontal_flip": 0.0},
        backbone_config=config,
    )


class LabeledCollator(SSLDataCollator):
    """Batches `pixel_values`/`labels` for a stock classification model and keeps a count of skipped images."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, examples):
        batch = super().__call__(examples)
        self.skipped += int(batch.pop("num_skipped"))
        return batch


def build_lora_classifier(encoder_dir: str, num_labels: int, r: int = 8, alpha: int = 16, dropout: float = 0.1,
                          target_modules: Optional[List[str]] = None, id2label: Optional[Dict[int, str]] = None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(encoder_dir)
    id2label = id2label or {i: str(i) for i in range(num_labels)}
    model = AutoModelForImageClassification.from_pretrained(
        encoder_dir, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules or default_lora_targets(config.model_type),
                      modules_to_save=["classifier"])
    return get_peft_model(model, lora), config


def finetune_with_lora(encoder_dir: str, dataset: str = "builtin:digits", output_dir: str = "hf-ssl-runs/lora",
                       max_steps: int = 200, learning_rate: float = 1e-3, batch_size: int = 64, r: int = 8,
                       alpha: int = 16, dropout: float = 0.1, target_modules: Optional[List[str]] = None,
                       eval_split: str = "test", push_to_hub: Optional[str] = None, seed: int = 0,
                       num_workers: int = 0, disable_tqdm: bool = False) -> Dict[str, float]:
    """Fine-tune an exported encoder with a LoRA adapter on a labeled image dataset; saves the adapter
    (and the classifier head, trained in full) to `output_dir` and returns test accuracy."""
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(seed)
    train_stream = load_image_stream(dataset, split="train", seed=seed)
    label_feature = train_stream.features.get("label") if train_stream.features else None
    names = getattr(label_feature, "names", None)
    if names is None:
        raise ValueError("finetune needs a labeled dataset with a ClassLabel `label` column")
    id2label = {i: n for i, n in enumerate(names)}
    model, config = build_lora_classifier(encoder_dir, len(names), r, alpha, dropout, target_modules, id2label)
    model.print_trainable_parameters()
    settings = _processor_settings(encoder_dir, config)
    mode = {1: "L", 3: "RGB"}.get(settings.num_channels)
    train_ds = SSLViewDataset(train_stream, FinetunePolicy(settings), seed=seed, with_labels=True, image_mode=mode)
    collator = LabeledCollator()
    args = TrainingArguments(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
                             learning_rate=learning_rate, weight_decay=0.01, warmup_steps=int(0.05 * max_steps),
                             logging_steps=max(1, max_steps // 10), save_strategy="no", report_to="none",
                             remove_unused_columns=False, dataloader_num_workers=num_workers,
                             dataloader_pin_memory=torch.cuda.is_available(), seed=seed, disable_tqdm=disable_tqdm,
                             accelerator_config={"dispatch_batches": False})
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator)
    trainer.train()
    model.save_pretrained(output_dir)
    metrics = {"accuracy": evaluate_classifier(model, dataset, eval_split, settings, batch_size),
               "skipped_images": collator.skipped}
    with open(os.path.join(output_dir, "finetune_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if push_to_hub:
        model.push_to_hub(push_to_hub)
    return metrics


@torch.no_grad()
def evaluate_classifier(model, dataset: str, split: str, settings, batch_size: int = 128) -> float:
    stream = load_image_stream(dataset, split=split, shuffle_buffer=0, shard_by_node=False)
    mode = {1: "L", 3: "RGB"}.get(settings.num_channels)
    ds = SSLViewDataset(stream, build_view_generator(settings, "eval"), with_labels=True, image_mode=mode)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=LabeledCollator())
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for batch in loader:
        if "pixel_values" not in batch:
            continue
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
        total += len(batch["labels"])
    return correct / max(total, 1)


@register_view_policy("finetune")
class FinetunePolicy(ViewPolicy):
    """Light supervised augmentation for fine-tuning: random resized crop (scale 0.5-1) and optional flip."""

    def __init__(self, config):
        super().__init__(config)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.5, 1.0)))

    def __call__(self, img, rng):
        return {"pixel_values": self.view(img, rng)}


__all__ = ["finetune_with_lora", "build_lora_classifier", "default_lora_targets", "evaluate_classifier"]
