"""PixPro configuration."""

from __future__ import annotations

from ..base import SSLConfig


class PixProConfig(SSLConfig):
    r"""Configuration of :class:`PixProForSelfSupervisedPretraining`.

    Defaults follow the paper / official `zdaxie/PixPro` script `pixpro_base_r50_100ep.sh`:
    ResNet-50 encoder (C5 map), 2-layer 1x1-conv projector 2048 -> 4096 -> 256 with BN + ReLU,
    positive-pair distance threshold 0.7 (`--pixpro-pos-ratio`), PPM sharpness gamma 2 (`--pixpro-p`),
    one 1x1-conv transform layer (`--pixpro-transform-layer 1`), similarity clamp 0 (`--pixpro-clamp-value`),
    momentum 0.99 increased to 1 with a cosine schedule (`--pixpro-momentum 0.99`), instance branch off
    (`--pixpro-ins-loss-weight 0`).

    Args:
        backbone_config: the encoder (default `"resnet-50"`); its last feature map is the dense output.
        projection_hidden_dim: hidden channels of the 1x1-conv projector (paper 4096).
        projection_dim: output channels of the projector (paper 256).
        positive_distance_threshold: two feature-map cells (one per view) are a positive pair when the distance
            between their centres in the original image, divided by the larger cell diagonal of the two views,
            is below this value (paper 0.7).
        ppm_gamma: exponent of the PPM similarity `max(cos, clamp)^gamma` (paper 2).
        ppm_clamp_value: lower clamp of the PPM cosine similarity (paper 0).
        ppm_transform_layers: 0 (identity), 1 (1x1 conv) or 2 (conv-BN-ReLU-conv) value transform (paper 1).
        base_momentum: starting EMA momentum of the momentum encoder; it follows
            `1 - (1 - base) * (cos(pi k / K) + 1) / 2` up to 1 (paper 0.99).
    """

    model_type = "hf_ssl_pixpro"
    paper_title = "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning"
    paper_url = "https://arxiv.org/abs/2011.10043"
    citation = (
        "@inproceedings{xie2021propagate,\n"
        "  title={Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation"
        " Learning},\n"
        "  author={Xie, Zhenda and Lin, Yutong and Zhang, Zheng and Cao, Yue and Lin, Stephen and Hu, Han},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # official BYOL-style asymmetric augmentation: RandomResizedCrop(224, scale 0.08-1), flip, ColorJitter
    # (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur (1.0 / 0.1), solarize (0 / 0.2); here symmetric blur 0.5
    default_augmentation = {
        "policy": "pixpro",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        projection_hidden_dim: int = 4096,
        projection_dim: int = 256,
        positive_distance_threshold: float = 0.7,
        ppm_gamma: float = 2.0,
        ppm_clamp_value: float = 0.0,
        ppm_transform_layers: int = 1,
        base_momentum: float = 0.99,
        feature_pooling: str = "mean",
        augmentation=None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.positive_distance_threshold = positive_distance_threshold
        self.ppm_gamma = ppm_gamma
        self.ppm_clamp_value = ppm_clamp_value
        self.ppm_transform_layers = ppm_transform_layers
        self.base_momentum = base_momentum
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(projection_hidden_dim=self.projection_hidden_dim, projection_dim=self.projection_dim,
                             positive_distance_threshold=self.positive_distance_threshold, ppm_gamma=self.ppm_gamma)
        self._check_range("base_momentum", self.base_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("ppm_clamp_value", self.ppm_clamp_value, -1.0, 1.0, high_inclusive=True)
        if self.ppm_transform_layers not in (0, 1, 2):
            raise ValueError(f"ppm_transform_layers must be 0, 1 or 2, got {self.ppm_transform_layers!r}")


__all__ = ["PixProConfig"]
