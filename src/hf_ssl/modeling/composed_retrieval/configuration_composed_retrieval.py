"""Composed image retrieval with sentence-level prompts (Bai et al., "Sentence-level Prompts Benefit Composed Image
Retrieval", ICLR 2024 - SPRC) on the hf_ssl CLIP dual encoder."""

from __future__ import annotations

from typing import Optional, Sequence

from ..clip.configuration_clip import CLIPSSLConfig

DEFAULT_RELATIVE_TEMPLATES = ["change it to a {}.", "make it a {}.", "replace it with a {}.",
                              "turn it into the number {}.", "show a {} instead."]


class ComposedRetrievalConfig(CLIPSSLConfig):
    r"""Configuration of :class:`ComposedRetrievalForSelfSupervisedPretraining`: a CLIP dual encoder (every
    :class:`CLIPSSLConfig` argument) plus SPRC's sentence-level prompt generator and losses. Defaults follow the
    official `blip2_qformer_cir_align_prompt.py` / `blip_fine_tune_2.py`.

    Args:
        num_prompt_tokens: length N of the sentence-level prompt (official 32 Q-Former queries).
        caption_length: token length of the relative caption (official `max_txt_len` 32); N + caption_length must
            fit the text encoder's context length.
        prompt_generator_layers / _heads / _mlp_ratio: the prompt generator (our stand-in for the BLIP-2 Q-Former):
            learnable queries and caption tokens share self-attention, queries cross-attend to the reference image.
        rtc_loss_weight: weight of the text-only (learnable prompt) retrieval loss `loss_rtc` (official 0.4).
        align_loss_weight: weight of the text prompt alignment loss `loss_align` (official 0.4).
        freeze_image_encoder: keep the image backbone frozen (official: `freeze_vit=True`); the visual projection
            still trains.
        relative_caption_templates: captions of the generated class-edit triplets ("change it to a {}.").
        gather_negatives: score queries against the targets of every process (DDP), like one process on the global
            batch; False keeps per-process negatives.
    """

    model_type = "hf_ssl_composed_retrieval"
    paper_title = "Sentence-level Prompts Benefit Composed Image Retrieval"
    paper_url = "https://arxiv.org/abs/2310.05473"
    citation = (
        "@inproceedings{bai2024sentence,\n"
        "  title={Sentence-level Prompts Benefit Composed Image Retrieval},\n"
        "  author={Bai, Yang and Xu, Xinxing and Liu, Yong and Khan, Salman and Khan, Fahad and Zuo, Wangmeng and"
        " Goh, Rick Siow Mong and Feng, Chun-Mei},\n"
        "  booktitle={International Conference on Learning Representations (ICLR)},\n"
        "  year={2024}\n"
        "}"
    )
    default_augmentation = {
        "policy": "composed_triplet",
        "crop_scale": [0.9, 1.0],
        "horizontal_flip": 0.0,  # a flip would contradict geometric edit captions
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "edit_kinds": ["class", "geometric"],
    }

    def __init__(
        self,
        num_prompt_tokens: int = 32,
        caption_length: int = 32,
        prompt_generator_layers: int = 4,
        prompt_generator_heads: int = 8,
        prompt_generator_mlp_ratio: float = 4.0,
        rtc_loss_weight: float = 0.4,
        align_loss_weight: float = 0.4,
        freeze_image_encoder: bool = True,
        relative_caption_templates: Optional[Sequence[str]] = None,
        gather_negatives: bool = True,
        **kwargs,
    ):
        self.num_prompt_tokens = num_prompt_tokens
        self.caption_length = caption_length
        self.prompt_generator_layers = prompt_generator_layers
        self.prompt_generator_heads = prompt_generator_heads
        self.prompt_generator_mlp_ratio = prompt_generator_mlp_ratio
        self.rtc_loss_weight = rtc_loss_weight
        self.align_loss_weight = align_loss_weight
        self.freeze_image_encoder = freeze_image_encoder
        self.relative_caption_templates = list(relative_caption_templates or DEFAULT_RELATIVE_TEMPLATES)
        self.gather_negatives = gather_negatives
        super().__init__(**kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(num_prompt_tokens=self.num_prompt_tokens, caption_length=self.caption_length,
                             prompt_generator_layers=self.prompt_generator_layers,
                             prompt_generator_heads=self.prompt_generator_heads,
                             prompt_generator_mlp_ratio=self.prompt_generator_mlp_ratio)
        if self.caption_length < 3:
            raise ValueError("caption_length must be >= 3 (start, one token, end)")
        if self.num_prompt_tokens + self.caption_length > self.context_length:
            raise ValueError(f"num_prompt_tokens ({self.num_prompt_tokens}) + caption_length ({self.caption_length}) "
                             f"exceed the text context length ({self.context_length})")
        width = getattr(self.text_config, "hidden_size", None)
        if width is not None and width % self.prompt_generator_heads:
            raise ValueError(f"text hidden size {width} must be divisible by prompt_generator_heads "
                             f"{self.prompt_generator_heads}")
        if self.rtc_loss_weight < 0 or self.align_loss_weight < 0:
            raise ValueError("rtc_loss_weight and align_loss_weight must be >= 0")
        if not self.relative_caption_templates or any("{}" not in t for t in self.relative_caption_templates):
            raise ValueError("relative_caption_templates must be non-empty, each with a '{}' placeholder")
        kinds = self.augmentation.get("edit_kinds", ["class", "geometric"])
        if not kinds or any(k not in ("class", "geometric") for k in kinds):
            raise ValueError(f"augmentation['edit_kinds'] must be a non-empty subset of ['class', 'geometric'], "
                             f"got {kinds}")
