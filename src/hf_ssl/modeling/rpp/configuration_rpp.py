"""Configuration of Rethinking Positive Pairs / SimLAP (Wu et al., "Rethinking Positive Pairs in Contrastive Learning",
arXiv 2024)."""

from __future__ import annotations

import copy
from typing import Optional

from ..base import SSLConfig

GATE_CONDITIONS = ("features", "labels")


class RPPConfig(SSLConfig):
    r"""Configuration of :class:`RPPForSelfSupervisedPretraining`.

    Defaults follow the authors' SimLAP code (github.com/erow/vitookit `vitookit/evaluation/simlap.py` and
    github.com/erow/FastSSL `model/simlap.py` with `configs/simclr_ffcv.gin`): ResNet-50, a 2-layer projection
    2048-2048-256 ending in LayerNorm, a 2-layer gate MLP of width 1024 and temperature 0.1.

    Args:
        backbone_config: the encoder (default preset `"resnet-50"`).
        image_size: training/inference resolution.
        projection_hidden_dim: hidden width of the projection head (official `mlp_dim=2048`).
        projection_dim: output width = the dimension the gate filters (official `out_dim=256`).
        rpp_temperature: tau of the (gated) InfoNCE; logits are scaled by 1/tau (official `temperature=0.1`).
        gate_condition: what the pair-conditioned feature filter is computed from. `"features"` (default, the
            self-supervised setting): the mean of the two images' pooled encoder features, stop-gradient.
            `"labels"` (the paper's setting): the mean of two learned class embeddings; the batch must then carry
            `pair_labels` `[B, 2]` (class of the anchor image and of its partner) and the labels also define the
            positives and the excluded candidates.
        gate_hidden_dim: hidden width of the gate MLP (official `mlp_dim=1024`): `ReLU-BN-Linear(in, 1024)-ReLU-BN-
            Linear(1024, projection_dim)`, then a sigmoid.
        gate_embedding_dim: width of the class embeddings in `"labels"` mode (official `in_dim=512`).
        num_classes: number of classes in `"labels"` mode (official 1000).
        gate_penalty_weight: weight of an optional penalty pushing the gates towards 0/1 (mean Bernoulli entropy of
            the gates). 0 (default) = the released code, which trains without it.
        feature_pooling: ViT pooling for `get_image_features`.
        augmentation: the `"arbitrary_pair"` view policy: `arbitrary_pair_prob` (probability that the partner is a
            different image, default 1.0 = the paper's arbitrary pairs; otherwise it is another augmentation of the
            same image), `pair_buffer_size` (how many recent images the partner is drawn from), the crop/jitter
            settings shared by both views and `partner_solarize` (solarization of the partner view only).
    """

    model_type = "hf_ssl_rpp"
    paper_title = "Rethinking Positive Pairs in Contrastive Learning"
    paper_url = "https://arxiv.org/abs/2410.18200"
    citation = (
        "@article{wu2024rethinking,\n"
        "  title={Rethinking Positive Pairs in Contrastive Learning},\n"
        "  author={Wu, Jiantao and Atito, Sara and Feng, Zhenhua and Mo, Shentong and Kittler, Josef and Awais,"
        " Muhammad},\n"
        "  journal={arXiv preprint arXiv:2410.18200},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # FastSSL dataset/ffcv_transform.py `MultiviewPipeline` (the SimLAP/SimCLR ImageNet recipe): RandomResizedCrop
    # scale 0.4-1, flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.1, Gaussian blur (kernel 3, sigma
    # 0.1-2) always, solarize p=0.2 on the second view only.
    default_augmentation = {
        "policy": "arbitrary_pair",
        "arbitrary_pair_prob": 1.0,
        "pair_buffer_size": 256,
        "crop_scale": [0.4, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.1,
        "gaussian_blur": 1.0,
        "solarize": 0.0,
        "partner_solarize": 0.2,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 224,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 256,
        rpp_temperature: float = 0.1,
        gate_condition: str = "features",
        gate_hidden_dim: int = 1024,
        gate_embedding_dim: int = 512,
        num_classes: int = 1000,
        gate_penalty_weight: float = 0.0,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.rpp_temperature = rpp_temperature
        self.gate_condition = gate_condition
        self.gate_hidden_dim = gate_hidden_dim
        self.gate_embedding_dim = gate_embedding_dim
        self.num_classes = num_classes
        self.gate_penalty_weight = gate_penalty_weight
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=copy.deepcopy(dict(augmentation or {})), **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(rpp_temperature=self.rpp_temperature)
        if self.gate_condition not in GATE_CONDITIONS:
            raise ValueError(f"gate_condition must be one of {GATE_CONDITIONS}, got {self.gate_condition!r}")
        for name in ("projection_hidden_dim", "projection_dim", "gate_hidden_dim", "gate_embedding_dim",
                     "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.gate_penalty_weight is None or self.gate_penalty_weight < 0:
            raise ValueError(f"gate_penalty_weight must be >= 0, got {self.gate_penalty_weight}")
        a = self.augmentation
        prob = float(a.get("arbitrary_pair_prob", 1.0))
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augmentation['arbitrary_pair_prob'] must be in [0, 1], got {prob}")
        size = a.get("pair_buffer_size", 256)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"augmentation['pair_buffer_size'] must be an integer >= 1, got {size!r}")
        scale = a.get("crop_scale", [0.4, 1.0])
        if not 0.0 < float(scale[0]) <= float(scale[1]) <= 1.0:
            raise ValueError(f"augmentation['crop_scale'] must satisfy 0 < min <= max <= 1, got {list(scale)}")
        for key in ("partner_solarize", "gaussian_blur", "solarize", "grayscale", "color_jitter", "horizontal_flip"):
            value = float(a.get(key, 0.0))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation['{key}'] must be a probability in [0, 1], got {value}")


__all__ = ["RPPConfig", "GATE_CONDITIONS"]
