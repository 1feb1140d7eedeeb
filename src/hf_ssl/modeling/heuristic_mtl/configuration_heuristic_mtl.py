"""Configuration of heuristic multi-task pre-training (Qian, "Heuristic Vision Pre-Training with Self-Supervised and
Supervised Multi-Task Learning", arXiv:2310.07510, 2023)."""

from __future__ import annotations

from ..backbones import backbone_family, feature_stride
from ..base import SSLConfig

CLASSIFICATION_LOSSES = ("bce", "ce")

# Swin-B (Liu et al. 2021): the paper's vanilla backbone
SWIN_BASE = dict(model_type="swin", embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7,
                 patch_size=4)


class HeuristicMTLConfig(SSLConfig):
    r"""Configuration of :class:`HeuristicMTLForSelfSupervisedPretraining`.

    One backbone, several pretext heads trained jointly; every head is optional and contributes only when its
    inputs exist in the batch (and its weight is > 0).

    Args:
        backbone_config: the shared encoder (default Swin-B, the paper's backbone; ViT works too; ConvNets only with
            `mim_weight=0`, since masked image modeling replaces patch embeddings by a mask token).
        contrastive_weight / mim_weight / classification_weight / segmentation_weight: the task weights of the
            total loss `sum_t w_t L_t` (over the tasks present in the batch).
        projection_hidden_dim / projection_dim: the contrastive projection MLP (Linear-BN-ReLU-Linear).
        projection_batch_norm: BatchNorm1d in the projector's hidden layer.
        contrastive_temperature: temperature of the NT-Xent loss over both views of the (gathered) batch.
        mask_ratio / mask_patch_size: SimMIM masking of view 1 (ratio of masked `mask_patch_size` cells).
        num_classes: classes of the classification head (the paper trains a multi-label tag classifier).
        classification_loss: `"bce"` (multi-label sigmoid BCE, the paper's multi-label supervision; integer labels
            are turned into one-hot targets) or `"ce"` (single-label softmax cross entropy).
        num_segmentation_classes: classes of the optional dense head (0 = no segmentation head); used when the
            batch carries `segmentation_labels [B, H, W]` aligned with view 1 (-1 = ignore).
    """

    model_type = "hf_ssl_heuristic_mtl"
    paper_title = "Heuristic Vision Pre-Training with Self-Supervised and Supervised Multi-Task Learning"
    paper_url = "https://arxiv.org/abs/2310.07510"
    citation = (
        "@article{qian2023heuristic,\n"
        "  title={Heuristic Vision Pre-Training with Self-Supervised and Supervised Multi-Task Learning},\n"
        "  author={Qian, Zhiming},\n"
        "  journal={arXiv preprint arXiv:2310.07510},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = SWIN_BASE
    default_augmentation = {
        "policy": "heuristic_mtl",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.1,
    }

    def __init__(
        self,
        backbone_config=None,
        contrastive_weight: float = 1.0,
        mim_weight: float = 1.0,
        classification_weight: float = 1.0,
        segmentation_weight: float = 1.0,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 256,
        projection_batch_norm: bool = True,
        contrastive_temperature: float = 0.2,
        mask_ratio: float = 0.6,
        mask_patch_size: int = 32,
        num_classes: int = 1000,
        classification_loss: str = "bce",
        num_segmentation_classes: int = 0,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.contrastive_weight = contrastive_weight
        self.mim_weight = mim_weight
        self.classification_weight = classification_weight
        self.segmentation_weight = segmentation_weight
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.projection_batch_norm = projection_batch_norm
        self.contrastive_temperature = contrastive_temperature
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self.num_classes = num_classes
        self.classification_loss = classification_loss
        self.num_segmentation_classes = num_segmentation_classes
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    @property
    def uses_mim(self) -> bool:
        return self.mim_weight > 0

    @property
    def model_patch_size(self) -> int:
        return int(getattr(self.backbone_config, "patch_size", 1))

    @property
    def encoder_stride(self) -> int:
        return feature_stride(self.backbone_config)

    def patch_grid(self, image_size=None):
        size = image_size or self.image_size
        return size // self.model_patch_size, size // self.model_patch_size

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_non_negative(contrastive_weight=self.contrastive_weight, mim_weight=self.mim_weight,
                                 classification_weight=self.classification_weight,
                                 segmentation_weight=self.segmentation_weight)
        if not any(getattr(self, n) > 0 for n in ("contrastive_weight", "mim_weight", "classification_weight",
                                                   "segmentation_weight")):
            raise ValueError("at least one task weight must be > 0")
        self._check_positive(projection_hidden_dim=self.projection_hidden_dim, projection_dim=self.projection_dim,
                             contrastive_temperature=self.contrastive_temperature, num_classes=self.num_classes)
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        if self.classification_loss not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification_loss must be one of {CLASSIFICATION_LOSSES}, "
                             f"got {self.classification_loss!r}")
        if not isinstance(self.num_segmentation_classes, int) or self.num_segmentation_classes < 0:
            raise ValueError(f"num_segmentation_classes must be an integer >= 0, got {self.num_segmentation_classes!r}")
        family = backbone_family(self.backbone_config)
        if self.uses_mim:
            if family not in ("vit", "swin"):
                raise ValueError("masked image modeling needs a ViT or Swin backbone (a mask token replaces patch "
                                 f"embeddings), got model_type {self.backbone_config.model_type!r}; set mim_weight=0 "
                                 "for ConvNets")
            self._check_positive(mask_patch_size=self.mask_patch_size)
            if self.mask_patch_size % self.model_patch_size:
                raise ValueError(f"mask_patch_size {self.mask_patch_size} must be a multiple of the encoder patch "
                                 f"size {self.model_patch_size}")
            if self.image_size % self.mask_patch_size:
                raise ValueError(f"image_size {self.image_size} must be divisible by mask_patch_size "
                                 f"{self.mask_patch_size}")
            if self.image_size % self.encoder_stride:
                raise ValueError(f"image_size {self.image_size} must be divisible by the encoder stride "
                                 f"{self.encoder_stride}")


__all__ = ["HeuristicMTLConfig", "SWIN_BASE", "CLASSIFICATION_LOSSES"]
