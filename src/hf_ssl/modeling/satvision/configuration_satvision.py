"""SatVision-TOA configuration (Spradlin et al., 2024): SimMIM pretraining of a SwinV2 on 14-band MODIS TOA data."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family, feature_stride
from ..base import SSLConfig

# official `mim_pretrain_swinv2_satvision_giant_128_window08_patch8_onecycle_100ep.yaml` (SwinV2-giant, 14 bands)
SATVISION_GIANT = dict(model_type="swinv2", embed_dim=512, depths=[2, 2, 42, 2], num_heads=[16, 32, 64, 128],
                       window_size=8, patch_size=4)


class SatVisionConfig(SSLConfig):
    r"""Configuration of :class:`SatVisionForSelfSupervisedPretraining`.

    Defaults follow the official SatVision-TOA code (`nasa-nccs-hpda/satvision-toa`:
    `satvision_toa/models/mim.py`, `examples/pretrain_runs/configs/mim_pretrain_swinv2_satvision_giant_128_window08_
    patch8_onecycle_100ep.yaml`), which is SimMIM (Xie et al., CVPR 2022) on 14-band MODIS top-of-atmosphere chips.

    Args:
        backbone_config: the encoder: SwinV2 (default: SwinV2-giant, embed 512, depths [2, 2, 42, 2], heads
            [16, 32, 64, 128], window 8, patch 4) or a ViT. Built with a learned `mask_token`
            (`use_mask_token=True`) that replaces the embeddings of masked patches.
        image_size: chip size (official 128).
        num_channels: number of bands (official 14: MODIS TOA reflectance + brightness-temperature bands).
        mask_patch_size: side of the square masking unit in pixels; masks are drawn on the coarse
            `image_size / mask_patch_size` grid and upsampled to the encoder's patch grid (official 8; SimMIM's
            ImageNet recipe uses 32).
        mask_ratio: fraction of masking units masked, exactly `ceil(n * mask_ratio)` (official and SimMIM: 0.6).
        image_mean, image_std: per-band normalization. Default for multi-band data: mean 0, std 1 per band (the
            official chips are already min-max scaled per band); ImageNet statistics for 3 channels.
        feature_pooling: pooling for ViT features (`"mean"`: SimMIM's ViT fine-tuning uses mean pooling).
    """

    model_type = "hf_ssl_satvision"
    paper_title = "SatVision-TOA: A Geospatial Foundation Model for Coarse-Resolution All-Sky Remote Sensing Imagery"
    paper_url = "https://arxiv.org/abs/2411.17000"
    citation = (
        "@article{spradlin2024satvision,\n"
        "  title={SatVision-TOA: A Geospatial Foundation Model for Coarse-Resolution All-Sky Remote Sensing Imagery},\n"
        "  author={Spradlin, Caleb S. and Caraballo-Vega, Jordan A. and Li, Jian and Carroll, Mark L. and Gong, Jie "
        "and Montesano, Paul M.},\n"
        "  journal={arXiv preprint arXiv:2411.17000},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = SATVISION_GIANT
    # official `MimTransform`: MinMaxEmissiveScaleReflectance, RandomResizedCropNP(scale=(0.67, 1), ratio=(3/4, 4/3)),
    # resize to IMG_SIZE, MimMaskGenerator; no flip (flip is available here, off by default)
    default_augmentation = {
        "policy": "multiband_masked",
        "crop_scale": [0.67, 1.0],
        "crop_ratio": [0.75, 1.3333],
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "rescale_factor": 1.0,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 128,
        num_channels: int = 14,
        mask_patch_size: int = 8,
        mask_ratio: float = 0.6,
        image_mean=None,
        image_std=None,
        feature_pooling: str = "mean",
        **kwargs,
    ):
        self.mask_patch_size = mask_patch_size
        self.mask_ratio = mask_ratio
        if num_channels != 3:
            image_mean = image_mean if image_mean is not None else [0.0] * num_channels
            image_std = image_std if image_std is not None else [1.0] * num_channels
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels,
                         image_mean=image_mean, image_std=image_std, feature_pooling=feature_pooling, **kwargs)

    @property
    def model_patch_size(self) -> int:
        return int(self.backbone_config.patch_size)

    @property
    def encoder_stride(self) -> int:
        return feature_stride(self.backbone_config)

    def patch_grid(self, image_size: Optional[int] = None):
        size = image_size or self.image_size
        return size // self.model_patch_size, size // self.model_patch_size

    def validate_ssl(self) -> None:
        super().validate_ssl()
        family = backbone_family(self.backbone_config)
        if family not in ("swin", "vit"):
            raise ValueError(f"SatVision/SimMIM needs a SwinV2 or ViT backbone (a mask token replaces patch "
                             f"embeddings), got model_type {self.backbone_config.model_type!r}")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        self._check_positive(mask_patch_size=self.mask_patch_size)
        if self.mask_patch_size % self.model_patch_size:
            raise ValueError(f"mask_patch_size {self.mask_patch_size} must be a multiple of the encoder patch size "
                             f"{self.model_patch_size}")
        if self.image_size % self.mask_patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by mask_patch_size {self.mask_patch_size}")
        if self.image_size % self.encoder_stride:
            raise ValueError(f"image_size {self.image_size} must be divisible by the encoder stride {self.encoder_stride}")


__all__ = ["SatVisionConfig", "SATVISION_GIANT"]
