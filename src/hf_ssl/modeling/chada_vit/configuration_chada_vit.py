"""ChAda-ViT configuration (Bourriez et al., CVPR 2024)."""

from __future__ import annotations

from ..backbones import BACKBONE_PRESETS, backbone_family
from ..base import SSLConfig


class ChAdaViTConfig(SSLConfig):
    r"""Configuration of :class:`ChAdaViTForSelfSupervisedPretraining`.

    Defaults follow the official code (`nicoboou/chada_vit`, `src/backbones/vit/chada_vit.py`, DINO method) and
    DINO (Caron et al. 2021) for the self-distillation settings.

    Args:
        backbone_config: a ViT that embeds ONE channel at a time (its `num_channels` is forced to 1; default
            `"vit-tiny"`, the official 192-wide, 12-layer encoder).
        num_channels: channel slots of the input (`pixel_values [B, num_channels, H, W]`); images with fewer channels
            are zero-padded and marked absent in `channel_mask [B, num_channels]`.
        max_channels: size of the learned channel-embedding table (official `max_number_channels=10`); channel slot
            `c` gets embedding `c`, so `num_channels <= max_channels`.
        head_out_dim / head_hidden_dim / head_bottleneck_dim: DINO head (65536 / 2048 / 256, weight-normalised last
            layer with its norm fixed).
        student_temperature / teacher_temperature / teacher_temperature_warmup / teacher_temperature_warmup_steps:
            DINO sharpening (0.1; 0.04 reached from `teacher_temperature_warmup` over the warm-up steps).
        center_momentum: 0.9. teacher_momentum: 0.996 raised to 1 by a half-cosine.
        augmentation: `policy="chada_multi_crop"`: DINO multi-crop (2 global crops of scale (0.4, 1), `num_local`
            local crops of scale (0.05, 0.4) at `local_size`), applied to all channels of an image alike, and
            `channel_subset_prob`: the probability of keeping only a random non-empty subset of the image's channels
            (the rest padded and masked) so one batch mixes channel counts, as ChAda-ViT's mixed-channel training.
    """

    model_type = "hf_ssl_chada_vit"
    paper_title = ("ChAda-ViT: Channel Adaptive Attention for Joint Representation Learning of Heterogeneous "
                   "Microscopy Images")
    paper_url = "https://arxiv.org/abs/2311.15264"
    citation = (
        "@inproceedings{bourriez2024chada,\n"
        "  title={ChAda-ViT: Channel Adaptive Attention for Joint Representation Learning of Heterogeneous "
        "Microscopy Images},\n"
        "  author={Bourriez, Nicolas and Bendidi, Ihab and Cohen, Ethan and Watkinson, Gabriel and Sanchez, Maxime "
        "and Bollot, Guillaume and Genovesio, Auguste},\n"
        "  booktitle={CVPR},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "vit-tiny"
    default_augmentation = {
        "policy": "chada_multi_crop",
        "num_global": 2,
        "num_local": 8,
        "global_scale": [0.4, 1.0],
        "local_scale": [0.05, 0.4],
        "local_size": 96,
        "channel_subset_prob": 0.5,
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(self, backbone_config=None, max_channels: int = 10, head_out_dim: int = 65536,
                 head_hidden_dim: int = 2048, head_bottleneck_dim: int = 256, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.04, teacher_temperature_warmup: float = 0.04,
                 teacher_temperature_warmup_steps: int = 0, center_momentum: float = 0.9,
                 teacher_momentum: float = 0.996, feature_pooling: str = "cls", **kwargs):
        if backbone_config is None:
            backbone_config = self.default_backbone
        if isinstance(backbone_config, str) and backbone_config in BACKBONE_PRESETS:
            backbone_config = dict(BACKBONE_PRESETS[backbone_config])
        if isinstance(backbone_config, dict):
            backbone_config = dict(backbone_config)
            backbone_config.setdefault("num_channels", 1)
        self.max_channels = max_channels
        self.head_out_dim = head_out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_warmup = teacher_temperature_warmup
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    def _check_backbone_channels(self) -> None:
        bb = getattr(self.backbone_config, "num_channels", 1)
        if bb != 1:
            raise ValueError(f"ChAda-ViT's encoder embeds one channel at a time: backbone_config.num_channels must be "
                             f"1, got {bb} (the data's channel count is `num_channels`={self.num_channels})")

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"ChAda-ViT needs a ViT backbone, got model_type {self.backbone_config.model_type!r}")
        if not isinstance(self.max_channels, int) or self.max_channels < 1:
            raise ValueError(f"max_channels must be an integer >= 1, got {self.max_channels!r}")
        if self.num_channels > self.max_channels:
            raise ValueError(f"num_channels={self.num_channels} exceeds max_channels={self.max_channels} (the size of "
                             "the channel-embedding table)")
        self._check_positive(student_temperature=self.student_temperature,
                             teacher_temperature=self.teacher_temperature,
                             teacher_temperature_warmup=self.teacher_temperature_warmup,
                             head_out_dim=self.head_out_dim, head_hidden_dim=self.head_hidden_dim,
                             head_bottleneck_dim=self.head_bottleneck_dim)
        if not isinstance(self.teacher_temperature_warmup_steps, int) or self.teacher_temperature_warmup_steps < 0:
            raise ValueError("teacher_temperature_warmup_steps must be an integer >= 0, got "
                             f"{self.teacher_temperature_warmup_steps!r}")
        self._check_range("center_momentum", self.center_momentum, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        p = float(self.augmentation.get("channel_subset_prob", 0.0))
        self._check_range("augmentation['channel_subset_prob']", p, 0.0, 1.0, high_inclusive=True)
        if int(self.augmentation.get("num_global", 2)) < 2:
            raise ValueError("ChAda-ViT's DINO training needs at least 2 global crops")


__all__ = ["ChAdaViTConfig"]
