"""Alice configuration (Jiang et al., "Anatomical Invariance Modeling and Semantic Alignment for Self-supervised
Learning in 3D Medical Image Analysis", ICCV 2023)."""

from __future__ import annotations

from typing import Optional

from ..backbones import check_volume_backbone, with_volume_depth
from ..base import SSLConfig


class AliceConfig(SSLConfig):
    r"""Configuration of :class:`AliceForSelfSupervisedPretraining`.

    Defaults follow the official code (`alibaba-damo-academy/alice`: `main-DDP.py`, `loss.py`, `CASA/CASA_Module.py`,
    `models/head.py`) where they carry over to a plain 3-D ViT.

    Args:
        backbone_config: a VideoMAE-style 3-D ViT (default `"vit3d-base"`, 16^3 patches) standing in for the official
            nnFormer (paper: Swin-UNETR / nnFormer); the volume is fed as a clip along depth.
        image_size / volume_depth: crop size fed to the networks (official roi 64^3).
        num_channels: 1 (CT intensities scaled to [0, 1], official a_min -125 / a_max 225).
        head_out_dim / patch_out_dim / head_hidden_dim / head_bottleneck_dim: DINO/iBOT-style head (official
            `--out_dim 512`, `--patch_out_dim 512`, MLP 2048, bottleneck 256, weight-normalised last layers).
        norm_last_layer: fix the norm of the last layers (official True).
        student_temperature: 0.1; teacher_temperature: 0.01 after a linear warm-up from
            warmup_teacher_temperature 0.008 over teacher_temperature_warmup_fraction of training (official 30 of
            1000 epochs); the same for the [CLS] and the CAFA (patch) outputs.
        center_momentum: EMA momentum of both teacher centers (0.9).
        teacher_momentum: EMA momentum of the teacher, cosine from this value to 1 (official 0.996).
        mask_ratio: fraction of 3-D patches the student sees as the mask token (official `--mask_ratio 0.75`,
            masks of `patch_size` 16^3 blocks).
        decoder_hidden_size / decoder_depth / decoder_num_heads: the light transformer decoder of the student that
            reconstructs the masked voxels and provides CAFA's online keys/values (official: the nnFormer decoder).
        cafa_num_heads / cafa_head_dim / cafa_intermediate_size: CAFA cross-attention (official CASA(512, 2048, 8,
            64, 64)).
        mim_loss_region: `"masked"` (loss on masked patches, the paper's masked image modeling) or `"all"` (the
            released `loss.py`: MSE over the whole reconstructed volume).
        lambda_global / lambda_cafa / lambda_mim: loss weights (official lambda1 1, lambda2 1, lambda3 10).
    """

    model_type = "hf_ssl_alice"
    paper_title = ("Anatomical Invariance Modeling and Semantic Alignment for Self-supervised Learning in 3D Medical "
                   "Image Analysis")
    paper_url = "https://arxiv.org/abs/2302.05615"
    citation = (
        "@inproceedings{jiang2023anatomical,\n"
        "  title={Anatomical Invariance Modeling and Semantic Alignment for Self-supervised Learning in 3D Medical "
        "Image Analysis},\n"
        "  author={Jiang, Yankai and Sun, Mingze and Guo, Heng and Bai, Xiaoyu and Yan, Ke and Lu, Le and Xu, "
        "Minfeng},\n"
        "  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  pages={15859--15869},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "vit3d-base"
    default_augmentation = {
        "policy": "alice_views",
        "eval_policy": "volume_eval",
        "crop_scale": [0.3, 1.0],
        "crop_ratio": [0.75, 1.3333333333333333],
        "flip": 0.5,
        "rotate90": 0.0,
        "intensity": 0.8,
        "color_jitter": 0.0, "grayscale": 0.0, "horizontal_flip": 0.0,
    }

    def __init__(self, backbone_config=None, image_size: int = 64, volume_depth: Optional[int] = None,
                 num_channels: int = 1, head_out_dim: int = 512, patch_out_dim: int = 512, head_hidden_dim: int = 2048,
                 head_bottleneck_dim: int = 256, norm_last_layer: bool = True, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.01, warmup_teacher_temperature: float = 0.008,
                 teacher_temperature_warmup_fraction: float = 0.03, center_momentum: float = 0.9,
                 teacher_momentum: float = 0.996, mask_ratio: float = 0.75, decoder_hidden_size: int = 384,
                 decoder_depth: int = 2, decoder_num_heads: int = 6, cafa_num_heads: int = 8, cafa_head_dim: int = 64,
                 cafa_intermediate_size: int = 2048, mim_loss_region: str = "masked", lambda_global: float = 1.0,
                 lambda_cafa: float = 1.0, lambda_mim: float = 10.0, feature_pooling: str = "mean", image_mean=None,
                 image_std=None, **kwargs):
        self.volume_depth = int(volume_depth or image_size)
        self.head_out_dim = head_out_dim
        self.patch_out_dim = patch_out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_fraction = teacher_temperature_warmup_fraction
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.mask_ratio = mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.cafa_num_heads = cafa_num_heads
        self.cafa_head_dim = cafa_head_dim
        self.cafa_intermediate_size = cafa_intermediate_size
        self.mim_loss_region = mim_loss_region
        self.lambda_global = lambda_global
        self.lambda_cafa = lambda_cafa
        self.lambda_mim = lambda_mim
        image_mean = [0.0] * num_channels if image_mean is None else image_mean
        image_std = [1.0] * num_channels if image_std is None else image_std
        backbone_config = with_volume_depth(backbone_config, self.default_backbone, self.volume_depth)
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels,
                         feature_pooling=feature_pooling, image_mean=image_mean, image_std=image_std, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        check_volume_backbone(self.backbone_config, self.image_size, self.volume_depth)
        self._check_positive(student_temperature=self.student_temperature,
                             teacher_temperature=self.teacher_temperature,
                             warmup_teacher_temperature=self.warmup_teacher_temperature)
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        self._check_range("center_momentum", self.center_momentum, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("teacher_temperature_warmup_fraction", self.teacher_temperature_warmup_fraction, 0.0, 1.0,
                          high_inclusive=True)
        for name in ("head_out_dim", "patch_out_dim", "head_hidden_dim", "head_bottleneck_dim", "decoder_hidden_size",
                     "decoder_depth", "decoder_num_heads", "cafa_num_heads", "cafa_head_dim",
                     "cafa_intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads or self.decoder_hidden_size < 6:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be >= 6 (3-D sin-cos positions) "
                             f"and divisible by decoder_num_heads {self.decoder_num_heads}")
        if self.mim_loss_region not in ("masked", "all"):
            raise ValueError(f"mim_loss_region must be 'masked' or 'all', got {self.mim_loss_region!r}")
        weights = (self.lambda_global, self.lambda_cafa, self.lambda_mim)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("lambda_global / lambda_cafa / lambda_mim must be >= 0 and not all 0, got "
                             f"{list(weights)}")
        if self.augmentation.get("rotate90", 0):
            raise ValueError("Alice's overlap indexing covers crops and flips: augmentation['rotate90'] must be 0")
        lo, hi = self.augmentation.get("crop_scale", (1.0, 1.0))
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augmentation['crop_scale'] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")


__all__ = ["AliceConfig"]
