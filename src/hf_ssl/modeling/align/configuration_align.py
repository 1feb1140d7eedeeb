"""ALIGN configuration (Jia et al., "Scaling Up Visual and Vision-Language Representation Learning With Noisy Text
Supervision", ICML 2021)."""

from __future__ import annotations

import copy
from typing import Optional

from transformers import AutoConfig

from ..backbones import feature_dim, resolve_backbone_config
from ..clip.configuration_clip import CLIPSSLConfig, resolve_text_config


def efficientnet_config(width_coefficient: float, depth_coefficient: float, image_size: int) -> dict:
    """A stock transformers `EfficientNetConfig` dict; `hidden_dim` is the width of the final 1x1 conv
    (EfficientNet's 1280 channels scaled by the width coefficient and rounded to a multiple of 8, as
    `round_filters` does), i.e. the pooled feature width."""
    filters = 1280 * width_coefficient
    hidden = max(8, int(filters + 4) // 8 * 8)
    if hidden < 0.9 * filters:
        hidden += 8
    return dict(model_type="efficientnet", width_coefficient=width_coefficient, depth_coefficient=depth_coefficient,
                image_size=image_size, hidden_dim=hidden)


# the paper's image tower: EfficientNet-L2 (width 4.3, depth 5.3; 5504-d globally pooled features) at 289 px
EFFICIENTNET_L2 = efficientnet_config(4.3, 5.3, 289)
# the paper's text tower: BERT-Large (24 layers, 1024 wide, 16 heads), context 64 tokens, [CLS] pooling
DEFAULT_TEXT_CONFIG = dict(model_type="bert", vocab_size=100_000, hidden_size=1024, num_hidden_layers=24,
                           num_attention_heads=16, intermediate_size=4096, max_position_embeddings=64,
                           pad_token_id=2)


class ALIGNConfig(CLIPSSLConfig):
    r"""Configuration of :class:`ALIGNForSelfSupervisedPretraining`.

    Paper defaults (Sec. 4 and 5 of the paper): EfficientNet-L2 image encoder with global pooling (no projection:
    the pooled feature is the image embedding), BERT-Large text encoder whose [CLS] embedding goes through a fully
    connected layer with linear activation to the image embedding width, normalized softmax loss in both
    directions with a learnable temperature initialised to 1.0 and label smoothing 0.1, 289 x 289 random crops of
    346 x 346 resized images with random horizontal flips, text context 64 tokens.

    Args (beyond :class:`CLIPSSLConfig`):
        text_config: a transformers text-encoder config (default BERT-Large; `bert`-style models are pooled at the
            first token, the [CLS] position, never through BERT's tanh pooler).
        projection_dim: joint embedding width; `None` (default) = the image feature width (the paper: the text
            side is projected to the image embedding, the image side is not projected).
        image_projection: add a linear image projection (needed when `projection_dim` differs from the image
            feature width; the paper has none).
        init_temperature: initial softmax temperature (paper 1.0; learnable).
        label_smoothing: label smoothing of both cross entropies (paper 0.1).
        min_temperature: lower clamp of the learned temperature (1 / `max_logit_scale`; see DEVIATIONS).
    """

    model_type = "hf_ssl_align"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig}
    paper_title = "Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision"
    paper_url = "https://arxiv.org/abs/2102.05918"
    citation = (
        "@inproceedings{jia2021scaling,\n"
        "  title={Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision},\n"
        "  author={Jia, Chao and Yang, Yinfei and Xia, Ye and Chen, Yi-Ting and Parekh, Zarana and Pham, Hieu and"
        " Le, Quoc and Sung, Yun-Hsuan and Li, Zhen and Duerig, Tom},\n"
        "  booktitle={International Conference on Machine Learning (ICML)},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = EFFICIENTNET_L2
    # 289 crops of 346-px resized images ((289/346)^2 = 0.70 of the area) + random horizontal flip
    default_augmentation = {
        "policy": "image_text",
        "crop_scale": [0.7, 0.7],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(self, backbone_config=None, text_config=None, image_size: int = 289,
                 projection_dim: Optional[int] = None, image_projection: bool = False,
                 init_temperature: float = 1.0, label_smoothing: float = 0.1, max_logit_scale: float = 100.0,
                 num_channels: int = 3, **kwargs):
        backbone = resolve_backbone_config(copy.deepcopy(backbone_config), self.default_backbone,
                                           image_size=image_size, num_channels=num_channels)
        self.image_projection = bool(image_projection)
        self.label_smoothing = label_smoothing
        if text_config is None:
            text_config = copy.deepcopy(DEFAULT_TEXT_CONFIG)
        text_config = resolve_text_config(text_config)
        if projection_dim is None:
            projection_dim = feature_dim(backbone)
        super().__init__(backbone_config=backbone, text_config=text_config, image_size=image_size,
                         projection_dim=projection_dim, init_temperature=init_temperature,
                         max_logit_scale=max_logit_scale, num_channels=num_channels, **kwargs)

    @property
    def min_temperature(self) -> float:
        return 1.0 / self.max_logit_scale

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)
        if not self.image_projection and self.projection_dim != feature_dim(self.backbone_config):
            raise ValueError(
                f"projection_dim={self.projection_dim} differs from the image feature width "
                f"{feature_dim(self.backbone_config)}; ALIGN does not project images: set image_projection=True "
                "or projection_dim=None")
