"""NeRF-MAE configuration (Irshad et al., "NeRF-MAE: Masked AutoEncoders for Self-Supervised 3D Representation
Learning for Neural Radiance Fields", ECCV 2024)."""

from __future__ import annotations

from typing import Optional

from ..backbones import check_volume_backbone, with_volume_depth
from ..base import SSLConfig


class NeRFMAEConfig(SSLConfig):
    r"""Configuration of :class:`NeRFMAEForSelfSupervisedPretraining`.

    Defaults follow the paper / official code (`zubair-irshad/NeRF-MAE`, `nerf_mae/train_mae3d.sh`,
    `nerf_mae/model/mae/swin_mae3d.py`) where they carry over to a plain 3-D ViT.

    Args:
        backbone_config: a VideoMAE-style 3-D ViT (default `"vit3d-base"`: 768 wide, 12 layers, 16^3 patches); the
            volume is fed as a clip along depth. The paper uses a 3-D Swin-S (patch 4^3, window 4^3) on 160^3 grids.
        image_size: grid side (paper: 160); `volume_depth` (default = image_size) is the depth.
        num_channels: 4 = RGB + density (radiance grids, the paper's input); any count for generic volumes.
        density_channel: index of the density / alpha channel (paper: 3); `None` for generic intensity volumes,
            which use plain masked-patch MSE.
        mask_ratio: fraction of 3-D patches masked (paper / official `--masking_prob 0.75`).
        alpha_threshold: colour is supervised only at voxels whose target alpha exceeds this (official 0.01).
        color_loss_region: `"masked"` (the paper: the loss covers masked patches only) or `"all"` (the released
            code's `forward_loss`: colour on every occupied voxel, density on masked patches).
        norm_pix_loss: per-patch normalised targets for generic volumes (MAE); ignored when `density_channel` is set.
        decoder_hidden_size / decoder_depth / decoder_num_heads: transformer decoder (MAE's 512 / 8 / 16).
        image_mean / image_std: default 0 / 1 per channel (radiance grids are used raw, as in the official code).
    """

    model_type = "hf_ssl_nerf_mae"
    paper_title = ("NeRF-MAE: Masked AutoEncoders for Self-Supervised 3D Representation Learning for Neural "
                   "Radiance Fields")
    paper_url = "https://arxiv.org/abs/2404.01300"
    citation = (
        "@inproceedings{irshad2024nerfmae,\n"
        "  title={NeRF-MAE: Masked AutoEncoders for Self-Supervised 3D Representation Learning for Neural "
        "Radiance Fields},\n"
        "  author={Irshad, Muhammad Zubair and Zakharov, Sergey and Guizilini, Vitor and Gaidon, Adrien and "
        "Kira, Zsolt and Ambrus, Rares},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "vit3d-base"
    default_augmentation = {
        "policy": "volume_masked",
        "eval_policy": "volume_eval",
        "crop_scale": [0.4, 1.0],
        "crop_ratio": [0.75, 1.3333333333333333],
        "flip": 0.5,
        "rotate90": 0.0,
        "intensity": 0.0,  # the loss reconstructs raw colour / density: no photometric jitter by default
        "color_jitter": 0.0, "grayscale": 0.0, "horizontal_flip": 0.0,
    }

    def __init__(self, backbone_config=None, image_size: int = 160, volume_depth: Optional[int] = None,
                 num_channels: int = 4, density_channel: Optional[int] = 3, mask_ratio: float = 0.75,
                 alpha_threshold: float = 0.01, color_loss_region: str = "masked", norm_pix_loss: bool = False,
                 decoder_hidden_size: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 feature_pooling: str = "mean", image_mean=None, image_std=None, **kwargs):
        self.volume_depth = int(volume_depth or image_size)
        self.density_channel = density_channel
        self.mask_ratio = mask_ratio
        self.alpha_threshold = alpha_threshold
        self.color_loss_region = color_loss_region
        self.norm_pix_loss = norm_pix_loss
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        image_mean = [0.0] * num_channels if image_mean is None else image_mean
        image_std = [1.0] * num_channels if image_std is None else image_std
        backbone_config = with_volume_depth(backbone_config, self.default_backbone, self.volume_depth)
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels,
                         feature_pooling=feature_pooling, image_mean=image_mean, image_std=image_std, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        check_volume_backbone(self.backbone_config, self.image_size, self.volume_depth)
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        if self.density_channel is not None:
            if not isinstance(self.density_channel, int) or not 0 <= self.density_channel < self.num_channels:
                raise ValueError(f"density_channel must be None or a channel index in [0, {self.num_channels}), "
                                 f"got {self.density_channel!r}")
        self._check_range("alpha_threshold", self.alpha_threshold, 0.0, 1.0)
        if self.color_loss_region not in ("masked", "all"):
            raise ValueError(f"color_loss_region must be 'masked' or 'all', got {self.color_loss_region!r}")
        for name in ("decoder_hidden_size", "decoder_depth", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads or self.decoder_hidden_size < 6:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be >= 6 (3-D sin-cos positions) "
                             f"and divisible by decoder_num_heads {self.decoder_num_heads}")
        lo, hi = self.augmentation.get("crop_scale", (1.0, 1.0))
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augmentation['crop_scale'] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")


__all__ = ["NeRFMAEConfig"]
