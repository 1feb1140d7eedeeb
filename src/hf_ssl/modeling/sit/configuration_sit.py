"""SiT configuration (Atito, Awais, Kittler, "SiT: Self-supervised vIsion Transformer")."""

from __future__ import annotations

from typing import Optional, Sequence

from ..backbones import backbone_family
from ..base import SSLConfig

DROP_TYPES = ("zeros", "noise", "rand", "other")
LOSS_WEIGHTINGS = ("uncertainty", "fixed")
RECONSTRUCTION_REGIONS = ("all", "corrupted")


class SiTConfig(SSLConfig):
    r"""Configuration of :class:`SiTForSelfSupervisedPretraining`.

    Defaults: the paper (arXiv:2104.03602 v1: rotation + contrastive + reconstruction tasks, uncertainty
    weighting) and the official code `Sara-Ahmed/SiT` (`main.py`, `datasets/datasets_utils.py`) for the
    corruption generator and the contrastive loss form.

    Args:
        backbone_config: a ViT-family transformers config (default `"vit-small"`, official `--model vit_small`).
        projection_hidden_dim, projection_dim: contrastive head MLP on the contrastive token (official
            `CLSHead(embed_dim, out_dim=256)`; hidden 2048).
        contrastive_temperature: softmax temperature (official `--simclr_temp 0.2`).
        loss_weighting: `"uncertainty"` (paper: homoscedastic uncertainty weighting of Kendall et al.,
            `L = sum_i exp(-s_i) L_i + s_i` with learned `s_i = log sigma_i^2`) or `"fixed"`.
        rotation_weight, contrastive_weight, reconstruction_weight: weights for `loss_weighting="fixed"`
            (official `--lmbda 1` for reconstruction).
        reconstruction_region: `"all"` (paper: l1 reconstruction of the whole clean image) or `"corrupted"`
            (the later official code: l1 on the corrupted pixels only).
        drop_perc: upper bound of the corrupted image fraction (official `--drop_perc 0.5`; the drawn fraction is
            uniform in [min(0.5, drop_perc), drop_perc]).
        drop_types: corruption types drawn uniformly per view: `zeros` (random drop), `noise` (Gaussian noise),
            `rand` (blocks copied from elsewhere in the same image), `other` (blocks from another image).
        drop_align: block alignment in pixels (official `--drop_align 1`); `max_block_size`: maximum block side as
            a fraction of the image side (official `max_block_sz=0.3`).
        rotation: whether the rotation task (and token) is used.
    """

    model_type = "hf_ssl_sit"
    paper_title = "SiT: Self-supervised vIsion Transformer"
    paper_url = "https://arxiv.org/abs/2104.03602"
    citation = (
        "@article{atito2021sit,\n"
        "  title={SiT: Self-supervised vIsion Transformer},\n"
        "  author={Atito, Sara and Awais, Muhammad and Kittler, Josef},\n"
        "  journal={arXiv preprint arXiv:2104.03602},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = "vit-small"
    # official DataAugmentationSiT: RandomResizedCrop, flip, colour jitter, grayscale, blur, solarize
    default_augmentation = {
        "policy": "sit",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 256,
        contrastive_temperature: float = 0.2,
        loss_weighting: str = "uncertainty",
        rotation_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reconstruction_region: str = "all",
        drop_perc: float = 0.5,
        drop_types: Sequence[str] = ("zeros", "noise", "rand", "other"),
        drop_align: int = 1,
        max_block_size: float = 0.3,
        rotation: bool = True,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.loss_weighting = loss_weighting
        self.rotation_weight = rotation_weight
        self.contrastive_weight = contrastive_weight
        self.reconstruction_weight = reconstruction_weight
        self.reconstruction_region = reconstruction_region
        self.drop_perc = drop_perc
        self.drop_types = list(drop_types) if drop_types is not None else None
        self.drop_align = drop_align
        self.max_block_size = max_block_size
        self.rotation = rotation
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(
                f"SiT needs a ViT-family backbone (extra tokens + patch-token reconstruction), got model_type "
                f"{self.backbone_config.model_type!r}. Use e.g. backbone_config='vit-small'."
            )
        self._check_positive(projection_hidden_dim=self.projection_hidden_dim, projection_dim=self.projection_dim,
                             contrastive_temperature=self.contrastive_temperature)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        for name in ("rotation_weight", "contrastive_weight", "reconstruction_weight"):
            value = getattr(self, name)
            if value is None or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.reconstruction_region not in RECONSTRUCTION_REGIONS:
            raise ValueError(f"reconstruction_region must be one of {RECONSTRUCTION_REGIONS}, "
                             f"got {self.reconstruction_region!r}")
        self._check_range("drop_perc", self.drop_perc, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        self._check_range("max_block_size", self.max_block_size, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        if not self.drop_types or any(t not in DROP_TYPES for t in self.drop_types):
            raise ValueError(f"drop_types must be a non-empty subset of {DROP_TYPES}, got {self.drop_types!r}")
        if not isinstance(self.drop_align, int) or self.drop_align < 1 or self.drop_align > self.image_size:
            raise ValueError(f"drop_align must be an integer in [1, image_size], got {self.drop_align!r}")
        if self.image_size % self.drop_align:
            raise ValueError(f"image_size {self.image_size} must be divisible by drop_align {self.drop_align}")


__all__ = ["SiTConfig"]
