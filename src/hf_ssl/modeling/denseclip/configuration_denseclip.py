"""DenseCLIP configuration (Rao et al., "DenseCLIP: Language-Guided Dense Prediction with Context-Aware Prompting")."""

from __future__ import annotations

from typing import Optional, Sequence

from ..clip.configuration_clip import CLIPSSLConfig


class DenseCLIPConfig(CLIPSSLConfig):
    r"""Configuration of :class:`DenseCLIPForSemanticSegmentation`: a CLIP dual encoder (all of
    :class:`CLIPSSLConfig`'s arguments) plus the DenseCLIP segmentation parts. Defaults follow the official
    ADE20K semantic-FPN ResNet-50 config (`segmentation/configs/denseclip_fpn_res50_512x512_80k.py`).

    Args:
        segmentation_class_names: one name per segmentation class; the text side embeds each (with the learnable
            contexts) and the score map has one channel per class. Default: `["background"] + class_names`.
        num_context_tokens: learnable context vectors M inserted after the start token (official 13 - 5 = 8).
        class_token_length: token length of a tokenized class name including start/end tokens (official 5);
            M + class_token_length must fit the text encoder's context length.
        context_decoder_width / _heads / _layers / _dropout: the vision-to-language context decoder (official
            256, 4, 3, 0.1).
        gamma_init: initial value of the learnable per-channel scale of the context-decoder update
            (`t <- t + gamma * decoder(t, visual context)`, official 1e-4).
        score_map_temperature: tau dividing the score map in the auxiliary loss (official 0.07).
        identity_loss_weight: weight of the auxiliary score-map cross entropy (official 0.4).
        fpn_channels: width of the FPN neck and semantic-FPN head (official 256).
        decoder_dropout: dropout before the classifier of the semantic-FPN head (official 0.1).
        freeze_text_encoder: keep the text encoder and its projection frozen (official: text encoder lr 0).
        backbone_lr_multiplier: learning-rate multiplier of the image encoder in `param_groups` (official 0.1).
        ignore_index: label value excluded from the losses (mmseg 255).
        vit_feature_layers: for ViT encoders, the 4 blocks whose tokens feed the FPN (official [3, 5, 7, 11] for
            12 blocks); None picks evenly spaced blocks ending at the last one.
    """

    model_type = "hf_ssl_denseclip"
    paper_title = "DenseCLIP: Language-Guided Dense Prediction with Context-Aware Prompting"
    paper_url = "https://arxiv.org/abs/2112.01518"
    citation = (
        "@inproceedings{rao2022denseclip,\n"
        "  title={DenseCLIP: Language-Guided Dense Prediction with Context-Aware Prompting},\n"
        "  author={Rao, Yongming and Zhao, Wenliang and Chen, Guangyi and Tang, Yansong and Zhu, Zheng and"
        " Huang, Guan and Zhou, Jie and Lu, Jiwen},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  year={2022}\n"
        "}"
    )
    # mmseg's ADE20K pipeline: random resize (ratio 0.5-2), random crop, flip, photometric distortion; the pasted
    # segmentation policy (views_denseclip.py) places objects at random scales/positions on a canvas
    default_augmentation = {
        "policy": "pasted_segmentation",
        "eval_policy": "eval",
        "paste_scale": [0.4, 0.9],
        "objects_per_canvas": 2,
        "foreground_threshold": 0.25,
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        segmentation_class_names: Optional[Sequence[str]] = None,
        num_context_tokens: int = 8,
        class_token_length: int = 5,
        context_decoder_width: int = 256,
        context_decoder_heads: int = 4,
        context_decoder_layers: int = 3,
        context_decoder_dropout: float = 0.1,
        gamma_init: float = 1e-4,
        score_map_temperature: float = 0.07,
        identity_loss_weight: float = 0.4,
        fpn_channels: int = 256,
        decoder_dropout: float = 0.1,
        freeze_text_encoder: bool = True,
        backbone_lr_multiplier: float = 0.1,
        ignore_index: int = 255,
        vit_feature_layers: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        self.segmentation_class_names = list(segmentation_class_names) if segmentation_class_names else None
        self.num_context_tokens = num_context_tokens
        self.class_token_length = class_token_length
        self.context_decoder_width = context_decoder_width
        self.context_decoder_heads = context_decoder_heads
        self.context_decoder_layers = context_decoder_layers
        self.context_decoder_dropout = context_decoder_dropout
        self.gamma_init = gamma_init
        self.score_map_temperature = score_map_temperature
        self.identity_loss_weight = identity_loss_weight
        self.fpn_channels = fpn_channels
        self.decoder_dropout = decoder_dropout
        self.freeze_text_encoder = freeze_text_encoder
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.ignore_index = ignore_index
        self.vit_feature_layers = list(vit_feature_layers) if vit_feature_layers is not None else None
        super().__init__(**kwargs)
        if self.segmentation_class_names is None:
            self.segmentation_class_names = ["background"] + list(self.class_names)

    @property
    def num_labels_segmentation(self) -> int:
        return len(self.segmentation_class_names)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(class_token_length=self.class_token_length,
                             context_decoder_width=self.context_decoder_width,
                             context_decoder_heads=self.context_decoder_heads,
                             score_map_temperature=self.score_map_temperature, fpn_channels=self.fpn_channels)
        if self.num_context_tokens < 0 or self.context_decoder_layers < 0:
            raise ValueError("num_context_tokens and context_decoder_layers must be >= 0")
        if self.class_token_length < 3:
            raise ValueError("class_token_length must be >= 3 (start token, at least one name token, end token)")
        if self.num_context_tokens + self.class_token_length > self.context_length:
            raise ValueError(f"num_context_tokens ({self.num_context_tokens}) + class_token_length "
                             f"({self.class_token_length}) exceed the text context length ({self.context_length})")
        if self.context_decoder_width % self.context_decoder_heads:
            raise ValueError("context_decoder_width must be divisible by context_decoder_heads")
        for name in ("context_decoder_dropout", "decoder_dropout"):
            self._check_range(name, getattr(self, name), 0.0, 1.0)
        if self.identity_loss_weight < 0 or self.gamma_init < 0 or self.backbone_lr_multiplier < 0:
            raise ValueError("identity_loss_weight, gamma_init and backbone_lr_multiplier must be >= 0")
        if self.segmentation_class_names is not None and len(self.segmentation_class_names) < 2:
            raise ValueError("segmentation_class_names needs at least 2 classes")
        if not 0 <= self.ignore_index or self.ignore_index < (len(self.segmentation_class_names or self.class_names)):
            raise ValueError("ignore_index must be a non-negative value outside the class range")
        aug = self.augmentation
        if aug.get("policy") == "pasted_segmentation":
            lo, hi = aug.get("paste_scale", [0.4, 0.9])
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"augmentation['paste_scale'] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")
            if int(aug.get("objects_per_canvas", 1)) < 1:
                raise ValueError("augmentation['objects_per_canvas'] must be >= 1")
            self._check_range("augmentation['foreground_threshold']", float(aug.get("foreground_threshold", 0.25)),
                              0.0, 1.0, low_inclusive=False)
        if self.vit_feature_layers is not None:
            if len(self.vit_feature_layers) != 4:
                raise ValueError("vit_feature_layers must list 4 block indices")
            depth = getattr(self.backbone_config, "num_hidden_layers", None)
            if depth is not None and any(not 0 <= i < depth for i in self.vit_feature_layers):
                raise ValueError(f"vit_feature_layers must be block indices in [0, {depth})")
