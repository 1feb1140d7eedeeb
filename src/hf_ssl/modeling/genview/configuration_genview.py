"""GenView configuration (Li et al., ECCV 2024)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig

QUALITY_SCORERS = ("momentum", "external", "none")


class GenViewConfig(SSLConfig):
    r"""Configuration of :class:`GenViewForSelfSupervisedPretraining`.

    Defaults are the official MoCo v3 + GenView ResNet-50 recipe (`xiaojieli0903/genview`,
    `configs_genview/mocov3/mocov3_resnet50_8xb512-amp-coslr-100e_in1k_singleview_clipmask.py`,
    `mmpretrain/models/selfsup/mocov3.py`).

    Args:
        backbone_config: encoder (default `"resnet-50"`; ViTs work too).
        projection_hidden_dim / projection_dim: MoCo v3 projector 4096 / 256 (2 layers, BN, last BN without
            affine parameters, no biases).
        predictor_hidden_dim: MoCo v3 predictor 4096 -> `projection_dim` (2 layers, BN, no last BN).
        contrastive_temperature: 1.0 for ResNet (official), 0.2 for ViT; the loss is scaled by `2 * temperature`.
        teacher_momentum: base momentum of the momentum encoder, 0.99 (official `base_momentum=0.01`), raised to 1
            by a half-cosine over training.
        quality_weighting: quality-driven contrastive loss (official `adjust_loss=True`): each positive pair is
            weighted by `exp(gamma * (sim_fg - sim_bg))`, normalized to mean 1 over the global batch.
        quality_gamma: `gamma` (official 1).
        quality_scorer: where the foreground/background features come from. `"momentum"` (default offline): the
            momentum encoder's last feature map with a foreground direction tracked online (first principal
            direction of the feature tokens, see the package docstring); `"external"`: a frozen callable set with
            `model.set_quality_scorer(fn)` returning patch tokens `[B, N, D]` (e.g. the paper's CLIP ConvNeXt)
            together with `model.set_foreground_direction(vector)` (the paper's PCA vector); `"none"`: weight 1.
        foreground_direction_momentum: EMA momentum of the online foreground direction (`"momentum"` scorer).
        augmentation: `policy="genview"`; MoCo v3 asymmetric views (crop scale (0.2, 1), jitter 0.8 with
            (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur (1.0, 0.1), solarize (0, 0.2), flip 0.5); `generator`: an
            import path `"package.module:function"` of an image-to-image callable `fn(image, noise_level, rng)`
            used to make the second view's source (GenView's adaptive view generation; None = no generation);
            `generation_prob` (1.0); `noise_levels` (0, 100, 200, 300, 400) and `foreground_thresholds`
            (0.1, 0.2, 0.3, 0.4): the noise level grows with the image's foreground proportion.
    """

    model_type = "hf_ssl_genview"
    paper_title = "GenView: Enhancing View Quality with Pretrained Generative Model for Self-Supervised Learning"
    paper_url = "https://arxiv.org/abs/2403.12003"
    citation = (
        "@inproceedings{li2024genview,\n"
        "  title={GenView: Enhancing View Quality with Pretrained Generative Model for Self-Supervised Learning},\n"
        "  author={Li, Xiaojie and Yang, Yibo and Li, Xiangtai and Wu, Jianlong and Yu, Yue and Ghanem, Bernard and "
        "Zhang, Min},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "resnet-50"
    default_augmentation = {
        "policy": "genview",
        "crop_scale": [0.2, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "view_gaussian_blur": [1.0, 0.1],
        "view_solarize": [0.0, 0.2],
        "generator": None,
        "generation_prob": 1.0,
        "noise_levels": [0, 100, 200, 300, 400],
        "foreground_thresholds": [0.1, 0.2, 0.3, 0.4],
    }

    def __init__(self, backbone_config=None, projection_hidden_dim: int = 4096, projection_dim: int = 256,
                 predictor_hidden_dim: int = 4096, contrastive_temperature: float = 1.0,
                 teacher_momentum: float = 0.99, quality_weighting: bool = True, quality_gamma: float = 1.0,
                 quality_scorer: str = "momentum", foreground_direction_momentum: float = 0.9,
                 feature_pooling: str = "cls", **kwargs):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.predictor_hidden_dim = predictor_hidden_dim
        self.contrastive_temperature = contrastive_temperature
        self.teacher_momentum = teacher_momentum
        self.quality_weighting = quality_weighting
        self.quality_gamma = quality_gamma
        self.quality_scorer = quality_scorer
        self.foreground_direction_momentum = foreground_direction_momentum
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        backbone_family(self.backbone_config)
        self._check_positive(contrastive_temperature=self.contrastive_temperature,
                             projection_dim=self.projection_dim, projection_hidden_dim=self.projection_hidden_dim,
                             predictor_hidden_dim=self.predictor_hidden_dim)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("foreground_direction_momentum", self.foreground_direction_momentum, 0.0, 1.0)
        if self.quality_scorer not in QUALITY_SCORERS:
            raise ValueError(f"quality_scorer must be one of {QUALITY_SCORERS}, got {self.quality_scorer!r}")
        if self.quality_gamma < 0:
            raise ValueError(f"quality_gamma must be >= 0, got {self.quality_gamma}")
        a = self.augmentation
        levels, thresholds = list(a.get("noise_levels", [])), list(a.get("foreground_thresholds", []))
        if len(levels) != len(thresholds) + 1:
            raise ValueError("augmentation['noise_levels'] needs exactly one more entry than "
                             f"augmentation['foreground_thresholds'], got {levels} and {thresholds}")
        if sorted(thresholds) != thresholds or any(not 0 <= t <= 1 for t in thresholds):
            raise ValueError(f"augmentation['foreground_thresholds'] must be increasing in [0, 1], got {thresholds}")
        generator: Optional[str] = a.get("generator")
        if generator is not None and (not isinstance(generator, str) or ":" not in generator):
            raise ValueError("augmentation['generator'] must be an import path 'package.module:function', "
                             f"got {generator!r}")
        self._check_range("augmentation['generation_prob']", float(a.get("generation_prob", 1.0)), 0.0, 1.0,
                          high_inclusive=True)


__all__ = ["GenViewConfig"]
