"""CMD configuration (Bi et al., Cross-level Multi-instance Distillation, arXiv:2401.08860 / IEEE TIP 2025)."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig


class CMDConfig(SSLConfig):
    r"""Configuration of :class:`CMDForSelfSupervisedPretraining`.

    Defaults follow the official code (`BiQiWHU/CMD`, `main_esvit.py` + its fine-grained run scripts), which builds on
    EsViT/DINO: ViT-S/16 (`deit_small`), 2 global crops of scale (0.4, 1) at 224 + 8 local crops of scale (0.05, 0.4)
    at 96, 65536 prototypes in both the image (CLS) head and the region (patch) head.

    Args:
        backbone_config: the stock encoder (default `"vit-small"`; a ViT is required: instances are its patch tokens).
        head_out_dim / head_hidden_dim / head_bottleneck_dim: DINO heads for the image level and the region level
            (65536 / 2048 / 256). `norm_last_layer`: False in the official fine-grained runs.
        mil_attention_dim: width `L` of the gated-attention MIL scorer `w^T (tanh(V h) * sigmoid(U h))`
            (Ilse et al. 2018 use 128).
        student_temperature: 0.1. teacher_temperature: 0.07 (official fine-grained runs), reached linearly from
            `teacher_temperature_warmup` (0.04) over `teacher_temperature_warmup_steps` (official: 30 of 300 epochs).
        center_momentum: 0.9 (one center for the image head, one for the region head, both all-reduced).
        teacher_momentum: 0.996, raised to 1 by a half-cosine.
        image_loss_weight / region_loss_weight: intra-level (teacher <-> student) image- and region-level terms,
            0.5 / 0.5 per view pair as officially. inter_level_weight: weight of the inter-level image <-> MIL-bag term
            (official 1.0). inter_level_target: `"image"` (default) distils the image-level distribution, held as a
            stop-gradient target, into the MIL bag; `"both"` lets the gradient reach both sides.
        image_feature: the token the image-level head reads: `"cls"` (official ViT) or `"mean"` of the patch tokens
            (what EsViT/CMD use for Swin backbones, whose image feature is the average pool).
    """

    model_type = "hf_ssl_cmd"
    paper_title = "Cross-level Multi-instance Distillation for Self-supervised Fine-grained Visual Categorization"
    paper_url = "https://arxiv.org/abs/2401.08860"
    citation = (
        "@article{bi2025cmd,\n"
        "  title={Cross-level Multi-instance Distillation for Self-supervised Fine-grained Visual Categorization},\n"
        "  author={Bi, Qi and Ji, Wei and Yi, Jingjun and Zhan, Haolan and Xia, Gui-Song},\n"
        "  journal={IEEE Transactions on Image Processing},\n"
        "  year={2025},\n"
        "  note={arXiv:2401.08860}\n"
        "}"
    )
    default_backbone = "vit-small"
    default_augmentation = {
        "policy": "multi_crop",
        "num_global": 2,
        "num_local": 8,
        "global_scale": [0.4, 1.0],
        "local_scale": [0.05, 0.4],
        "local_size": 96,
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.1,
    }

    def __init__(self, backbone_config=None, head_out_dim: int = 65536, head_hidden_dim: int = 2048,
                 head_bottleneck_dim: int = 256, norm_last_layer: bool = False, mil_attention_dim: int = 128,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.07,
                 teacher_temperature_warmup: float = 0.04, teacher_temperature_warmup_steps: int = 0,
                 center_momentum: float = 0.9, teacher_momentum: float = 0.996, image_loss_weight: float = 0.5,
                 region_loss_weight: float = 0.5, inter_level_weight: float = 1.0, inter_level_target: str = "image",
                 image_feature: str = "cls", feature_pooling: str = "cls", **kwargs):
        self.head_out_dim = head_out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.mil_attention_dim = mil_attention_dim
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_warmup = teacher_temperature_warmup
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.image_loss_weight = image_loss_weight
        self.region_loss_weight = region_loss_weight
        self.inter_level_weight = inter_level_weight
        self.inter_level_target = inter_level_target
        self.image_feature = image_feature
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError("CMD treats the patch tokens of a ViT as MIL instances: backbone_config must be a ViT, "
                             f"got model_type {self.backbone_config.model_type!r}")
        self._check_positive(student_temperature=self.student_temperature,
                             teacher_temperature=self.teacher_temperature,
                             teacher_temperature_warmup=self.teacher_temperature_warmup,
                             head_out_dim=self.head_out_dim, head_hidden_dim=self.head_hidden_dim,
                             head_bottleneck_dim=self.head_bottleneck_dim, mil_attention_dim=self.mil_attention_dim)
        if not isinstance(self.teacher_temperature_warmup_steps, int) or self.teacher_temperature_warmup_steps < 0:
            raise ValueError("teacher_temperature_warmup_steps must be an integer >= 0, got "
                             f"{self.teacher_temperature_warmup_steps!r}")
        self._check_range("center_momentum", self.center_momentum, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        for name in ("image_loss_weight", "region_loss_weight", "inter_level_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_loss_weight + self.region_loss_weight + self.inter_level_weight <= 0:
            raise ValueError("at least one of image_loss_weight, region_loss_weight, inter_level_weight must be > 0")
        if self.image_feature not in ("cls", "mean"):
            raise ValueError(f"image_feature must be 'cls' or 'mean', got {self.image_feature!r}")
        if self.inter_level_target not in ("image", "both"):
            raise ValueError(f"inter_level_target must be 'image' or 'both', got {self.inter_level_target!r}")
        if self.augmentation.get("policy") == "multi_crop" and int(self.augmentation.get("num_global", 2)) < 2:
            raise ValueError("CMD's teacher-student distillation needs at least 2 global crops (augmentation num_global)")


__all__ = ["CMDConfig"]
