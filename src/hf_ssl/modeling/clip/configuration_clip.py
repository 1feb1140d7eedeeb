"""CLIP configuration (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision")."""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

from transformers import AutoConfig, PretrainedConfig

from ..base import SSLConfig

# the paper's text transformer (63M parameters, 12 layers, width 512, 8 heads, context 77, 49,152 BPE merges)
DEFAULT_TEXT_CONFIG = dict(model_type="clip_text_model", vocab_size=49408, hidden_size=512, intermediate_size=2048,
                           num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                           hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=2)


def resolve_text_config(text_config) -> PretrainedConfig:
    """A transformers text-encoder config from None (paper default), a dict with `model_type`, or a config."""
    if text_config is None:
        text_config = copy.deepcopy(DEFAULT_TEXT_CONFIG)
    if isinstance(text_config, PretrainedConfig):
        return text_config
    if not isinstance(text_config, dict):
        raise ValueError(f"text_config must be None, a dict or a transformers config, got {type(text_config)}")
    d = dict(text_config)
    model_type = d.pop("model_type", "clip_text_model")
    try:
        return AutoConfig.for_model(model_type, **d)
    except (KeyError, ValueError) as err:
        raise ValueError(f"Unknown text_config model_type {model_type!r}: {err}") from err


class CLIPSSLConfig(SSLConfig):
    r"""Configuration of :class:`CLIPForSelfSupervisedPretraining` (dual encoder, symmetric InfoNCE).

    Defaults follow the paper (Sec. 2.4-2.5, App. F) and the official `openai/CLIP` `model.py`.

    Args:
        backbone_config: image encoder (default `"resnet-50"`; any stock backbone, e.g. a ViT preset).
        text_config: text encoder, a transformers text-model config (dict with `model_type`, default the paper's
            12x512 CLIP text transformer, `clip_text_model`; `bert` etc. also work). Its pooled output (CLIP: the
            EOS token; BERT: pooler) is projected. `max_position_embeddings` is the context length.
        projection_dim: joint embedding width (paper 512 for ViT-B/32 and RN50 is 1024; default 512).
        init_temperature: initial softmax temperature (paper 0.07, i.e. logit scale log(1/0.07)).
        max_logit_scale: clamp of exp(logit_scale) (paper 100).
        tokenizer_name_or_path: local tokenizer folder; None uses the built-in offline byte-level BPE
            (`hf_ssl.training.text.build_tokenizer`, vocab <= `text_config.vocab_size`).
        tokenizer_vocab_size: target vocab of the built-in tokenizer (must be <= text vocab size).
        class_names / caption_templates: how captions are made for data without a text column (labels ->
            `template.format(class_names[label])`, a random template per sample) and the zero-shot prompts.
        text_column: name of the caption column of image-text data ("auto": text/caption/txt/sentence).
    """

    model_type = "hf_ssl_clip"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig}
    paper_title = "Learning Transferable Visual Models From Natural Language Supervision"
    paper_url = "https://arxiv.org/abs/2103.00020"
    citation = (
        "@inproceedings{radford2021learning,\n"
        "  title={Learning Transferable Visual Models From Natural Language Supervision},\n"
        "  author={Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and"
        " Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and"
        " Krueger, Gretchen and Sutskever, Ilya},\n"
        "  booktitle={International Conference on Machine Learning (ICML)},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # CLIP: "A random square crop from resized images is the only data augmentation used during training."
    default_augmentation = {
        "policy": "image_text",
        "crop_scale": [0.9, 1.0],
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        text_config=None,
        image_size: int = 224,
        projection_dim: int = 512,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        tokenizer_name_or_path: Optional[str] = None,
        tokenizer_vocab_size: int = 1024,
        class_names: Optional[Sequence[str]] = None,
        caption_templates: Optional[Sequence[str]] = None,
        text_column: str = "auto",
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        from ...training.text import DIGIT_NAMES, DIGIT_TEMPLATES

        self.text_config = resolve_text_config(text_config)
        self.projection_dim = projection_dim
        self.init_temperature = init_temperature
        self.max_logit_scale = max_logit_scale
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.class_names = list(class_names) if class_names is not None else list(DIGIT_NAMES)
        self.caption_templates = list(caption_templates) if caption_templates is not None else list(DIGIT_TEMPLATES)
        self.text_column = text_column
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    @property
    def context_length(self) -> int:
        return int(getattr(self.text_config, "max_position_embeddings", 77))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(projection_dim=self.projection_dim, init_temperature=self.init_temperature,
                             max_logit_scale=self.max_logit_scale)
        if math.log(1.0 / self.init_temperature) > math.log(self.max_logit_scale):
            raise ValueError(f"1 / init_temperature ({1 / self.init_temperature:.3g}) exceeds max_logit_scale "
                             f"({self.max_logit_scale})")
        vocab = getattr(self.text_config, "vocab_size", None)
        if self.tokenizer_name_or_path is None and vocab is not None and self.tokenizer_vocab_size > vocab:
            raise ValueError(f"tokenizer_vocab_size {self.tokenizer_vocab_size} > text_config.vocab_size {vocab}")
        if self.tokenizer_vocab_size < 259:
            raise ValueError("tokenizer_vocab_size must be >= 259 (byte alphabet + 3 special tokens)")
        if not self.class_names or not self.caption_templates:
            raise ValueError("class_names and caption_templates must be non-empty")
        if any("{}" not in t for t in self.caption_templates):
            raise ValueError("every caption template needs a '{}' placeholder for the class name")
        if self.context_length < 3:
            raise ValueError("text_config.max_position_embeddings (context length) must be >= 3")
