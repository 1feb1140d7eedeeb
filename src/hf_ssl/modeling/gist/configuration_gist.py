"""GIST configuration (Lewis, Mu et al., "GIST: Generating Image-Specific Text for Fine-grained Object
Classification", arXiv:2307.11315)."""

from __future__ import annotations

from typing import Optional

from ..clip.configuration_clip import CLIPSSLConfig

# the official fine-tuning model: CLIP ViT-L/14 at 336 px (`contrastive_training_clip.py --clip_model ViT-L/14@336px`)
VIT_L14 = dict(model_type="vit", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096, patch_size=14)
# CLIP ViT-L/14's text transformer: 12 layers, width 768, 12 heads, context 77
TEXT_L14 = dict(model_type="clip_text_model", vocab_size=49408, hidden_size=768, intermediate_size=3072,
                num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=0, eos_token_id=1, pad_token_id=2)


class GISTConfig(CLIPSSLConfig):
    r"""Configuration of :class:`GISTForSelfSupervisedPretraining`: a CLIP dual encoder (every
    :class:`CLIPSSLConfig` argument) fine-tuned on images paired with image-specific generated texts.

    Defaults follow the official code (github.com/emu1729/GIST, `caption_matching.py`,
    `contrastive_training_clip.py`).

    Args:
        num_captions: how many of each image's matched texts are used for fine-tuning (official `--num_captions`,
            4 in the released run scripts); every training visit of an image pairs it with one of them, drawn
            uniformly (the official dataset enumerates all `num_captions` pairs per epoch).
        match_top_k: how many texts the matching step keeps per image (official: the top 5,
            `captions_top5.json`); `num_captions <= match_top_k`.
        match_logit_scale: the scale of the matching softmax, `softmax(scale * cos(image, text))` over the class's
            candidate texts (official 100).
        caption_format: how a matched text becomes a training caption; `{class_name}` and `{text}` are filled in
            (official `row['species'] + ': ' + caption`).
        text_column: the dataset column holding each image's texts, best match first ("auto": `gist_texts`,
            `matched_texts`, `texts`, `captions`, `text`, `caption`).
        class_name_column: a column with the class name ("auto": `class_name`, `species`, `category`; else the
            label through `class_names`).
    """

    model_type = "hf_ssl_gist"
    paper_title = "GIST: Generating Image-Specific Text for Fine-grained Object Classification"
    paper_url = "https://arxiv.org/abs/2307.11315"
    citation = (
        "@article{LewisMu2023,\n"
        "  title={GIST: Generating Image-Specific Text for Fine-grained Object Classification},\n"
        "  author={Lewis, Kathleen M. and Mu, Emily and Dalca, Adrian V. and Guttag, John},\n"
        "  journal={arXiv preprint arXiv:2307.11315},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = VIT_L14
    # official: RandomResizedCrop(336) (torchvision default scale 0.08-1) + RandomHorizontalFlip, then CLIP preprocess
    default_augmentation = {
        "policy": "gist_text",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        text_config=None,
        image_size: int = 336,
        projection_dim: int = 768,
        num_captions: int = 4,
        match_top_k: int = 5,
        match_logit_scale: float = 100.0,
        caption_format: str = "{class_name}: {text}",
        text_column: str = "auto",
        class_name_column: str = "auto",
        **kwargs,
    ):
        self.num_captions = num_captions
        self.match_top_k = match_top_k
        self.match_logit_scale = match_logit_scale
        self.caption_format = caption_format
        self.class_name_column = class_name_column
        super().__init__(backbone_config=backbone_config if backbone_config is not None else dict(VIT_L14),
                         text_config=text_config if text_config is not None else dict(TEXT_L14),
                         image_size=image_size, projection_dim=projection_dim, text_column=text_column, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(num_captions=self.num_captions, match_top_k=self.match_top_k,
                             match_logit_scale=self.match_logit_scale)
        if self.num_captions > self.match_top_k:
            raise ValueError(f"num_captions ({self.num_captions}) cannot exceed match_top_k ({self.match_top_k}): "
                             "fine-tuning uses the best num_captions of the matched texts")
        if "{text}" not in self.caption_format:
            raise ValueError(f"caption_format needs a '{{text}}' placeholder, got {self.caption_format!r}")
        try:
            self.caption_format.format(class_name="x", text="y")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"caption_format may only use {{class_name}} and {{text}}: {err}") from err


__all__ = ["GISTConfig"]
