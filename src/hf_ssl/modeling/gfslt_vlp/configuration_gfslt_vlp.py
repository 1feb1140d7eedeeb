"""GFSLT-VLP configuration (Zhou et al., "Gloss-free Sign Language Translation: Improving from Visual-Language
Pretraining", ICCV 2023)."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

from transformers import AutoConfig, PretrainedConfig

from ..clip.configuration_clip import CLIPSSLConfig
from ..video_base import VideoSSLConfig

# the official text encoder is the (trimmed) mBART-large-cc25 encoder: 12 layers, width 1024, 16 heads, FFN 4096;
# here a stock CLIPTextModel of the same size (EOS pooling, like the official pooling at the sentence's last token)
DEFAULT_TEXT_CONFIG = dict(model_type="clip_text_model", vocab_size=1024, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=12, num_attention_heads=16, max_position_embeddings=64,
                           hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=2)
# the official text decoder (`pretrain_models/mytran/config.json`): a 3-layer mBART decoder, width 1024, 8 heads,
# FFN 4096, pre-norm, scaled embeddings, dropout 0.1, untied output layer
DEFAULT_DECODER_CONFIG = dict(model_type="mbart", d_model=1024, decoder_layers=3, decoder_attention_heads=8,
                              decoder_ffn_dim=4096, activation_function="relu", dropout=0.1, attention_dropout=0.0,
                              activation_dropout=0.0, scale_embedding=True, tie_word_embeddings=False)
MOTION_TEMPLATES = [
    "a {} moving up", "a {} moving down", "a {} moving to the left", "a {} moving to the right",
    "a {} moving up and to the left", "a {} moving up and to the right", "a {} moving down and to the left",
    "a {} moving down and to the right",
]


def resolve_decoder_config(decoder_config, text_config: PretrainedConfig) -> PretrainedConfig:
    """A stock causal text-decoder config (mBART by default) whose vocabulary and special tokens are the text
    encoder's (the decoder reconstructs the sentences the text encoder reads)."""
    if isinstance(decoder_config, PretrainedConfig):
        cfg = decoder_config
    else:
        if decoder_config is not None and not isinstance(decoder_config, dict):
            raise ValueError(f"decoder_config must be None, a dict or a transformers config, "
                             f"got {type(decoder_config)}")
        d = copy.deepcopy(DEFAULT_DECODER_CONFIG)
        d.update(copy.deepcopy(decoder_config or {}))
        model_type = d.pop("model_type", "mbart")
        d.setdefault("encoder_layers", 0)
        try:
            cfg = AutoConfig.for_model(model_type, **d)
        except (KeyError, ValueError) as err:
            raise ValueError(f"Unknown decoder_config model_type {model_type!r}: {err}") from err
    for key in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(text_config, key, None)
        if value is not None:
            setattr(cfg, key, value)
    cfg.decoder_start_token_id = getattr(text_config, "bos_token_id", 0)
    cfg.is_decoder = True
    cfg.add_cross_attention = True
    cfg.is_encoder_decoder = False
    cfg.use_cache = False
    return cfg


class GFSLTVLPConfig(VideoSSLConfig, CLIPSSLConfig):
    r"""Configuration of :class:`GFSLTVLPForSelfSupervisedPretraining` (a video CLIP + masked sentence
    reconstruction). It is both a :class:`VideoSSLConfig` (clip encoder, `num_frames`, `video_eval` policy) and a
    :class:`CLIPSSLConfig` (text encoder, offline tokenizer, logit scale, zero-shot prompts).

    Defaults follow the official code (zhoubenjia/GFSLT-VLP: `models.py` `SLRCLIP` / `TextCLIP` / `ImageCLIP` /
    `Text_Decoder`, `train_vlp_v2.py`, `utils.py` `NoiseInjecting` / `KLLoss`, `pretrain_models/mytran/config.json`).

    Args:
        backbone_config: the visual encoder over the frame sequence, a stock video transformer (default
            `"videomae-base"`; official: per-frame ResNet-18 + temporal 1-D convolutions + a 3-layer mBART encoder
            with a CLS token, not one transformers model).
        text_config: the text encoder (default a 12 x 1024 CLIPTextModel, the size of the official mBART-cc25
            encoder); pooled at the EOS token.
        decoder_config: the text decoder, a stock causal decoder with cross-attention (default official: mBART,
            3 layers, width 1024, 8 heads, FFN 4096); vocabulary / special tokens are copied from `text_config`.
        projection_dim: joint space width (official `embed_dim` 1024). The visual head is a bias-free linear map
            (official `head_type='linear'`); the text side has no head by default (official `'identy'`).
        text_projection: add a bias-free linear head on the text side too (then `projection_dim` is free).
        init_temperature: initial temperature of the learnable logit scale (official log(1/0.07)).
        contrastive_loss: `"clip"` (symmetric InfoNCE, `clip_contrastive_loss`, over the DDP-gathered batch) or
            `"kl_soft"` (the official `KLLoss`: KL divergence to `softmax(10 * I)` targets, both directions).
        mask_ratio: the text noise rate (official `--noise-rate` 0.15).
        mask_type: `"omit_last"` (official default: the last ceil(U(0, rate) * n) words are masked) or `"omit"`
            (a random int(n * (1 - rate)) words are kept).
        decoder_condition: what the text decoder cross-attends to: `"text"` (official V2: the text encoder's states of
            the masked sentence, without gradient into the text encoder) or `"visual"` (the clip's visual tokens, so
            the reconstruction also trains the visual encoder).
        mlm_loss_tokens: `"all"` (official: cross entropy on every target token) or `"masked"` (only the masked ones).
        mlm_weight: weight of the masked sentence reconstruction (official `--loss-lambda` 1.0).
        mlm_label_smoothing: label smoothing of the reconstruction loss (official 0.2).
        class_names / caption_templates: zero-shot prompts (`template.format(class name)`).
    """

    model_type = "hf_ssl_gfslt_vlp"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig, "decoder_config": AutoConfig}
    paper_title = "Gloss-free Sign Language Translation: Improving from Visual-Language Pretraining"
    paper_url = "https://arxiv.org/abs/2307.14768"
    citation = (
        "@inproceedings{zhou2023gloss,\n"
        "  title={Gloss-free Sign Language Translation: Improving from Visual-Language Pretraining},\n"
        "  author={Zhou, Benjia and Chen, Zhigang and Clap{\\'e}s, Albert and Wan, Jun and Liang, Yanyan and "
        "Escalera, Sergio and Lei, Zhen and Zhang, Du},\n"
        "  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "videomae-base"
    default_augmentation = {
        "policy": "gfslt_vlp",
        "eval_policy": "video_eval",
        "crop": "resized",
        "crop_scale": [0.64, 1.0],
        "horizontal_flip": 0.0,
        "color_jitter": 0.5,
        "color_jitter_strength": [0.5, 0.0, 0.5, 0.0],
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, text_config=None, decoder_config=None, num_frames: int = 16,
                 sampling_rate: int = 1, image_size: int = 224, projection_dim: int = 1024,
                 text_projection: bool = False, init_temperature: float = 0.07, max_logit_scale: float = 100.0,
                 contrastive_loss: str = "clip", mask_ratio: float = 0.15, mask_type: str = "omit_last",
                 decoder_condition: str = "text", mlm_loss_tokens: str = "all", mlm_weight: float = 1.0,
                 mlm_label_smoothing: float = 0.2, tokenizer_vocab_size: int = 1024,
                 class_names: Optional[Sequence[str]] = None, caption_templates: Optional[Sequence[str]] = None,
                 **kwargs):
        from ..clip.configuration_clip import resolve_text_config

        text_config = resolve_text_config(copy.deepcopy(DEFAULT_TEXT_CONFIG) if text_config is None else text_config)
        self.decoder_config = resolve_decoder_config(decoder_config, text_config)
        self.text_projection = bool(text_projection)
        self.contrastive_loss = contrastive_loss
        self.mask_ratio = mask_ratio
        self.mask_type = mask_type
        self.decoder_condition = decoder_condition
        self.mlm_loss_tokens = mlm_loss_tokens
        self.mlm_weight = mlm_weight
        self.mlm_label_smoothing = mlm_label_smoothing
        super().__init__(backbone_config=backbone_config, num_frames=num_frames, sampling_rate=sampling_rate,
                         text_config=text_config, image_size=image_size, projection_dim=projection_dim,
                         init_temperature=init_temperature, max_logit_scale=max_logit_scale,
                         tokenizer_vocab_size=tokenizer_vocab_size, class_names=class_names,
                         caption_templates=caption_templates if caption_templates is not None else MOTION_TEMPLATES,
                         **kwargs)

    @property
    def text_hidden_size(self) -> int:
        return int(getattr(self.text_config, "hidden_size", None) or self.text_config.d_model)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.contrastive_loss not in ("clip", "kl_soft"):
            raise ValueError(f"contrastive_loss must be 'clip' or 'kl_soft', got {self.contrastive_loss!r}")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        if self.mask_type not in ("omit_last", "omit"):
            raise ValueError(f"mask_type must be 'omit_last' or 'omit', got {self.mask_type!r}")
        if self.decoder_condition not in ("text", "visual"):
            raise ValueError(f"decoder_condition must be 'text' or 'visual', got {self.decoder_condition!r}")
        if self.mlm_loss_tokens not in ("all", "masked"):
            raise ValueError(f"mlm_loss_tokens must be 'all' or 'masked', got {self.mlm_loss_tokens!r}")
        self._check_non_negative(mlm_weight=self.mlm_weight)
        self._check_range("mlm_label_smoothing", self.mlm_label_smoothing, 0.0, 1.0)
        if not self.text_projection and self.projection_dim != self.text_hidden_size:
            raise ValueError(f"without a text projection (official identity head) projection_dim "
                             f"({self.projection_dim}) must equal the text hidden size ({self.text_hidden_size}); "
                             f"set text_projection=True for another width")
        vocab = getattr(self.text_config, "vocab_size", None)
        dec = self.decoder_config
        if getattr(dec, "vocab_size", None) != vocab:
            raise ValueError(f"decoder vocab_size {getattr(dec, 'vocab_size', None)} != text vocab_size {vocab}")
        positions = getattr(dec, "max_position_embeddings", None)
        if positions is not None and positions < self.context_length:
            raise ValueError(f"decoder max_position_embeddings ({positions}) < context length ({self.context_length})")


__all__ = ["GFSLTVLPConfig", "MOTION_TEMPLATES", "resolve_decoder_config"]
