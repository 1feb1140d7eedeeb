"""Image-text view policy: one augmented image + its tokenized caption.

Captions come from the example's text column (`text`, `caption`, `txt`, `sentence`, or `config.text_column`);
for image-classification data without text (e.g. the built-in digits), from the label:
`random template`.format(`class_names[label]`) - the built-in default image-text dataset. `SSLViewDataset` passes
the raw example to policies that set `wants_example = True`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ...training.data import LABEL_KEYS, ViewPolicy, register_view_policy

TEXT_KEYS = ("text", "caption", "captions", "txt", "sentence", "sentences")


@register_view_policy("image_text")
class ImageTextPolicy(ViewPolicy):
    wants_example = True
    fallback_caption = "a photo."  # only when an image comes without any text or label (e.g. bare images)

    def __init__(self, config):
        super().__init__(config)
        from ...training.text import load_tokenizer

        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.9, 1.0)))
        self.tokenizer = load_tokenizer(config.tokenizer_name_or_path, vocab_size=config.tokenizer_vocab_size,
                                        context_length=config.context_length)
        vocab = getattr(config.text_config, "vocab_size", None)
        if vocab is not None and len(self.tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but text_config.vocab_size is {vocab}")
        self.templates = list(config.caption_templates)
        self.class_names = list(config.class_names)
        self.text_column = config.text_column

    def caption(self, example: Optional[Dict[str, Any]], rng: np.random.Generator) -> str:
        if example:
            keys = TEXT_KEYS if self.text_column == "auto" else (self.text_column,)
            for key in keys:
                value = example.get(key)
                if isinstance(value, (list, tuple)):  # several captions per image: sample one
                    value = value[int(rng.integers(len(value)))] if value else None
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if isinstance(value, str) and value.strip():
                    return value
            for key in LABEL_KEYS:
                if example.get(key) is not None:
                    label = int(example[key])
                    name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
                    return self.templates[int(rng.integers(len(self.templates)))].format(name)
        return self.fallback_caption

    def tokenize(self, texts):
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.config.context_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        ids, mask = self.tokenize([self.caption(example, rng)])
        return {"pixel_values": self.view(img, rng), "input_ids": ids[0], "attention_mask": mask[0]}
