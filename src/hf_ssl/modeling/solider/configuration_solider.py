"""SOLIDER configuration (Chen et al., CVPR 2023)."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig

# Swin-T (official `swin_tiny_patch4_window7_224`: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7)
SWIN_TINY = dict(model_type="swin", embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                 patch_size=4)


class SOLIDERConfig(SSLConfig):
    r"""Configuration of :class:`SOLIDERForSelfSupervisedPretraining`.

    Defaults follow the official code (`tinyvision/SOLIDER`, `main_solider.py`, `run_solider.sh`).

    Args:
        backbone_config: a stock transformers Swin (`model_type="swin"`, the paper's backbone; default Swin-T). The
            semantic controller modulates the tokens after every stage that ends with patch merging.
        head_out_dim / head_hidden_dim / head_bottleneck_dim / norm_last_layer: DINO head (65536 / 2048 / 256 / True).
        student_temperature 0.1; teacher_temperature 0.04 (from `teacher_temperature_warmup` over
            `teacher_temperature_warmup_steps`, default none); center_momentum 0.9; teacher_momentum 0.996 -> 1.
        num_parts: semantic parts the foreground tokens are clustered into (`--partnum 3`); the semantic head predicts
            `num_parts + 1` classes (0 = background). part_head_layers: MLP depth of that head (`--parthead_nlayers 3`).
        semantic_loss_weight: weight of the token classification loss (`--semantic_loss 1.0`); each image's token
            losses are also multiplied by its sampled lambda, as officially.
        foreground_min_fraction: an image gets pseudo labels only if more than this fraction of its tokens falls in
            the high-norm (foreground) cluster (official 0.5).
        kmeans_iterations: Lloyd iterations of the per-image k-means (k-means++ start, fixed seed).
        semantic_weight: lambda used at inference (`get_image_features` default and `export_encoder`), official
            demo 1.0. semantic_weight_sampling: how training draws lambda per image: `"binary"` (official: 0 or 1
            with probability 1/2) or `"uniform"` (U[0, 1]).
        mask_part_views: add the official extra student views: global crops of foreground images with one randomly
            chosen part erased, whose tokens must still be classified into the erased part.
    """

    model_type = "hf_ssl_solider"
    paper_title = ("Beyond Appearance: a Semantic Controllable Self-Supervised Learning Framework for Human-Centric "
                   "Visual Tasks")
    paper_url = "https://arxiv.org/abs/2303.17602"
    citation = (
        "@inproceedings{chen2023beyond,\n"
        "  title={Beyond Appearance: a Semantic Controllable Self-Supervised Learning Framework for Human-Centric "
        "Visual Tasks},\n"
        "  author={Chen, Weihua and Xu, Xianzhe and Jia, Jian and Luo, Hao and Wang, Yaohua and Wang, Fan and Jin, "
        "Rong and Sun, Xiuyu},\n"
        "  booktitle={CVPR},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = SWIN_TINY
    default_augmentation = {
        "policy": "multi_crop",
        "num_global": 2,
        "num_local": 8,
        "global_scale": [0.8, 1.0],
        "local_scale": [0.05, 0.8],
        "local_size": 96,
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.1,
    }

    def __init__(self, backbone_config=None, head_out_dim: int = 65536, head_hidden_dim: int = 2048,
                 head_bottleneck_dim: int = 256, norm_last_layer: bool = True, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04, teacher_temperature_warmup: float = 0.04,
                 teacher_temperature_warmup_steps: int = 0, center_momentum: float = 0.9,
                 teacher_momentum: float = 0.996, num_parts: int = 3, part_head_layers: int = 3,
                 semantic_loss_weight: float = 1.0, foreground_min_fraction: float = 0.5, kmeans_iterations: int = 10,
                 semantic_weight: float = 1.0, semantic_weight_sampling: str = "binary", mask_part_views: bool = True,
                 **kwargs):
        self.head_out_dim = head_out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_warmup = teacher_temperature_warmup
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.num_parts = num_parts
        self.part_head_layers = part_head_layers
        self.semantic_loss_weight = semantic_loss_weight
        self.foreground_min_fraction = foreground_min_fraction
        self.kmeans_iterations = kmeans_iterations
        self.semantic_weight = semantic_weight
        self.semantic_weight_sampling = semantic_weight_sampling
        self.mask_part_views = mask_part_views
        kwargs.setdefault("feature_pooling", "mean")  # Swin's global average pool (the only pooling Swin has)
        super().__init__(backbone_config=backbone_config, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.backbone_config.model_type != "swin":
            raise ValueError("SOLIDER's semantic controller modulates the stages of a Swin transformer: "
                             f"backbone_config must be a transformers `swin` config, got "
                             f"{self.backbone_config.model_type!r}")
        if len(self.backbone_config.depths) < 2:
            raise ValueError("SOLIDER needs a Swin with at least 2 stages (the controller acts after patch merging)")
        if backbone_family(self.backbone_config) != "swin":
            raise ValueError("backbone must be a Swin family model")
        self._check_positive(student_temperature=self.student_temperature,
                             teacher_temperature=self.teacher_temperature,
                             teacher_temperature_warmup=self.teacher_temperature_warmup,
                             head_out_dim=self.head_out_dim, head_hidden_dim=self.head_hidden_dim,
                             head_bottleneck_dim=self.head_bottleneck_dim, part_head_layers=self.part_head_layers,
                             kmeans_iterations=self.kmeans_iterations)
        if not isinstance(self.num_parts, int) or self.num_parts < 1:
            raise ValueError(f"num_parts must be an integer >= 1, got {self.num_parts!r}")
        if not isinstance(self.teacher_temperature_warmup_steps, int) or self.teacher_temperature_warmup_steps < 0:
            raise ValueError("teacher_temperature_warmup_steps must be an integer >= 0, got "
                             f"{self.teacher_temperature_warmup_steps!r}")
        self._check_range("center_momentum", self.center_momentum, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("foreground_min_fraction", self.foreground_min_fraction, 0.0, 1.0)
        self._check_range("semantic_weight", self.semantic_weight, 0.0, 1.0, high_inclusive=True)
        if self.semantic_loss_weight < 0:
            raise ValueError(f"semantic_loss_weight must be >= 0, got {self.semantic_loss_weight}")
        if self.semantic_weight_sampling not in ("binary", "uniform"):
            raise ValueError("semantic_weight_sampling must be 'binary' (official) or 'uniform', got "
                             f"{self.semantic_weight_sampling!r}")
        if int(self.augmentation.get("num_global", 2)) < 2:
            raise ValueError("SOLIDER's DINO training needs at least 2 global crops (augmentation num_global)")


__all__ = ["SOLIDERConfig", "SWIN_TINY"]
