"""I2P-MAE configuration (Zhang et al., "Learning 3D Representations from 2D Pre-trained Models via Image-to-Point
Masked Autoencoders", CVPR 2023)."""

from __future__ import annotations

from typing import Optional

from transformers import AutoConfig

from ..backbones import backbone_family, resolve_backbone_config
from ..base import SSLConfig


class I2PMAEConfig(SSLConfig):
    r"""Configuration of :class:`I2PMAEForSelfSupervisedPretraining`.

    Defaults follow the official pre-training recipe (`ZrrSkywalker/I2P-MAE`, `cfgs/pre-training/i2p-mae.yaml`,
    `models/I2P_MAE.py`) where a single-scale model can follow it (see the package docstring for deviations).

    Args:
        backbone_config: the point transformer, a stock token model driven through `inputs_embeds` (default
            `"point-transformer-small"`: DistilBERT stack 384 x 12 layers x 6 heads, Point-MAE / I2P-MAE width).
        num_points: points per cloud (official `npoints: 2048`).
        num_groups / group_size: FPS centres and kNN neighbours per point patch (Point-MAE single-scale tokenizer
            64 x 32; the official hierarchical encoder uses 512 x 16 -> 256 x 8 -> 64 x 8).
        mask_ratio: fraction of point tokens masked (official 0.8); `int(G * mask_ratio)` are masked.
        saliency_temperature: 2D-guided masking draws the visible tokens without replacement from
            `softmax(saliency / saliency_temperature)` (official: temperature 1 on the back-projected attention).
        tokenizer_hidden_dims: widths of the mini-PointNet (Point-MAE `Encoder`: 128-256 | 512 -> hidden).
        decoder_hidden_size / decoder_depth / decoder_num_heads: the light decoder (official 384 wide, 1 + 1
            blocks, 6 heads).
        loss_3d_weight / loss_2d_weight: `loss = w3 * Chamfer(masked) + w2 * MSE(2D semantics of visible)` (official
            1 / 1).
        image_encoder_config: the frozen 2D encoder (a ViT config or preset; official CLIP ViT-B/16, default
            `"vit-base"`). Its `image_size` is `image_size` (the projected depth-map size, official 224).
        image_encoder_path: a local folder with a pretrained 2D ViT (an hf_ssl checkpoint, an hf_ssl vanilla export
            or any transformers ViT checkpoint) loaded at construction and kept frozen; `None` keeps a random-init
            2D encoder (tests / offline demo only: its "semantics" are random features).
        projection_densify: side of the square splat around each projected point (official 5 x 5 offsets).
        image_size: side of the three projected depth maps (official 224).
        augmentation: `policy="points"` (random subset + per-axis scale U(2/3, 3/2) and translation U(-0.2, 0.2),
            official `PointcloudScaleAndTranslate`), `eval_policy="points_eval"`.
    """

    model_type = "hf_ssl_i2p_mae"
    sub_configs = {"backbone_config": AutoConfig, "image_encoder_config": AutoConfig}
    paper_title = "Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked Autoencoders"
    paper_url = "https://arxiv.org/abs/2212.06785"
    citation = (
        "@inproceedings{zhang2023learning,\n"
        "  title={Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked Autoencoders},\n"
        "  author={Zhang, Renrui and Wang, Liuhui and Qiao, Yu and Gao, Peng and Li, Hongsheng},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "point-transformer-small"
    default_augmentation = {
        "policy": "points",
        "eval_policy": "points_eval",
        "point_scale": [2 / 3, 3 / 2],
        "point_translate": 0.2,
    }

    def __init__(self, backbone_config=None, num_points: int = 2048, num_groups: int = 64, group_size: int = 32,
                 mask_ratio: float = 0.8, saliency_temperature: float = 1.0,
                 tokenizer_hidden_dims=(128, 256, 512), decoder_hidden_size: int = 384, decoder_depth: int = 2,
                 decoder_num_heads: int = 6, loss_3d_weight: float = 1.0, loss_2d_weight: float = 1.0,
                 image_encoder_config=None, image_encoder_path: Optional[str] = None, projection_densify: int = 5,
                 image_size: int = 224, feature_pooling: str = "mean", **kwargs):
        self.num_points = num_points
        self.num_groups = num_groups
        self.group_size = group_size
        self.mask_ratio = mask_ratio
        self.saliency_temperature = saliency_temperature
        self.tokenizer_hidden_dims = list(tokenizer_hidden_dims)
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.loss_3d_weight = loss_3d_weight
        self.loss_2d_weight = loss_2d_weight
        self.image_encoder_path = image_encoder_path
        self.projection_densify = projection_densify
        if image_encoder_config is None or isinstance(image_encoder_config, str):
            image_encoder_config = resolve_backbone_config(image_encoder_config, "vit-base", image_size=image_size,
                                                           num_channels=3)
        elif isinstance(image_encoder_config, dict):
            image_encoder_config = resolve_backbone_config(dict(image_encoder_config), "vit-base",
                                                           image_size=image_size, num_channels=3)
        self.image_encoder_config = image_encoder_config
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         **kwargs)

    @property
    def num_masked(self) -> int:
        return int(self.num_groups * self.mask_ratio)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "token":
            raise ValueError("I2P-MAE's point transformer must be a token model driven through inputs_embeds "
                             f"(model_type 'distilbert'), got {self.backbone_config.model_type!r}")
        if self.feature_pooling != "mean":
            raise ValueError("I2P-MAE pools point tokens by their mean (feature_pooling='mean'); there is no CLS token")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        self._check_positive(saliency_temperature=self.saliency_temperature, loss_3d_weight=self.loss_3d_weight)
        self._check_non_negative(loss_2d_weight=self.loss_2d_weight)
        for name in ("num_points", "num_groups", "group_size", "decoder_hidden_size", "decoder_depth",
                     "decoder_num_heads", "projection_densify"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_groups > self.num_points or self.group_size > self.num_points:
            raise ValueError(f"num_groups ({self.num_groups}) and group_size ({self.group_size}) must not exceed "
                             f"num_points ({self.num_points})")
        if self.num_masked < 1 or self.num_groups - self.num_masked < 1:
            raise ValueError(f"mask_ratio {self.mask_ratio} leaves no masked or no visible token of {self.num_groups}")
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError("decoder_hidden_size must be divisible by decoder_num_heads")
        if not self.tokenizer_hidden_dims or len(self.tokenizer_hidden_dims) != 3 or \
                any(int(d) < 1 for d in self.tokenizer_hidden_dims):
            raise ValueError("tokenizer_hidden_dims must be three positive widths (mini-PointNet)")
        if self.projection_densify % 2 == 0:
            raise ValueError(f"projection_densify must be odd (a centred square splat), got {self.projection_densify}")
        ie = self.image_encoder_config
        if backbone_family(ie) != "vit":
            raise ValueError(f"the 2D encoder must be a ViT (saliency = CLS attention), got {ie.model_type!r}")
        if ie.image_size != self.image_size:
            raise ValueError(f"image_encoder_config.image_size ({ie.image_size}) must equal image_size "
                             f"({self.image_size}), the projected depth-map size")
        if getattr(ie, "num_channels", 3) != 3:
            raise ValueError("the 2D encoder reads 3-channel depth maps (num_channels=3)")
        if getattr(self.backbone_config, "max_position_embeddings", self.num_groups) < self.num_groups:
            raise ValueError("backbone_config.max_position_embeddings must be >= num_groups")
        lo, hi = self.augmentation.get("point_scale", (2 / 3, 3 / 2))
        if not 0 < lo <= hi:
            raise ValueError(f"augmentation['point_scale'] must satisfy 0 < low <= high, got {[lo, hi]}")
        if float(self.augmentation.get("point_translate", 0.2)) < 0:
            raise ValueError("augmentation['point_translate'] must be >= 0")


__all__ = ["I2PMAEConfig"]
