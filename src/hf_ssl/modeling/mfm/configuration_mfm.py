"""MFM configuration (Xie et al., "Masked Frequency Modeling for Self-Supervised Visual Pre-Training", ICLR 2023)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig

RECOVER_TARGETS = ("masked", "all")


class MFMConfig(SSLConfig):
    r"""Configuration of :class:`MFMForSelfSupervisedPretraining`.

    Defaults follow the official code (`Jiahao000/MFM`: `config.py`, `configs/vit_base/mfm_pretrain__vit_base__
    img224__300ep.yaml`, `configs/resnet50/mfm_pretrain__resnet50__img224__300ep.yaml`, `models/mfm.py`,
    `models/frequency_loss.py`, `data/data_mfm.py`).

    Args:
        backbone_config: the encoder: ViT (decoder reads the patch tokens), Swin, or a ConvNet such as ResNet-50
            (decoder reads the last feature map). Default preset `"vit-base"` (ViT-B/16).
        mask_radius: radius (in frequency bins of the centred spectrum) of the circular low/high-pass filter
            (official `MASK_RADIUS1 = 16` for 224 px). Frequencies with distance `< mask_radius` from the centre are
            "low" (strict inequality, as in the official `FreqMaskGenerator`).
        low_pass_prob: probability that a sample gets the low-pass filter (high frequencies removed); otherwise
            the high-pass filter (official `SAMPLE_RATIO`: 0.5 for ViT, 0.3 for ResNet-50). `None` picks 0.3 for
            ConvNet backbones and 0.5 otherwise.
        loss_gamma: exponent of the frequency distance `|F(pred) - F(target)|` (official `LOSS_GAMMA = 1`).
        focal_weighting: multiply the distance by the focal-frequency-loss spectrum weight matrix
            (`|F(pred) - F(target)| ** matrix_gamma`, normalised by its per-image-per-channel maximum, detached;
            official `WITH_MATRIX`, default False, i.e. no weighting in the released MFM recipe).
        matrix_gamma: exponent of the focal weight matrix (official `MATRIX_GAMMA = 1`).
        recover_target: `"masked"` (default, official `RECOVER_TARGET_TYPE: masked`): the loss averages over the
            removed frequencies only; `"all"`: over the whole spectrum.
        clamp_corrupted: clamp the corrupted image to [0, 1] in image space before normalisation (official).
        feature_pooling: pooling for `get_image_features` (`"cls"`: official ViT `USE_MEAN_POOLING: False`).
    """

    model_type = "hf_ssl_mfm"
    paper_title = "Masked Frequency Modeling for Self-Supervised Visual Pre-Training"
    paper_url = "https://arxiv.org/abs/2206.07706"
    citation = (
        "@inproceedings{xie2023masked,\n"
        "  title={Masked Frequency Modeling for Self-Supervised Visual Pre-Training},\n"
        "  author={Xie, Jiahao and Li, Wei and Zhan, Xiaohang and Liu, Ziwei and Ong, Yew Soon and Loy, Chen Change},\n"
        "  booktitle={International Conference on Learning Representations},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "vit-base"
    # official MFMTransform: RandomResizedCrop(224, scale=(MIN_CROP_SCALE=0.2, 1), bicubic) + RandomHorizontalFlip
    default_augmentation = {
        "policy": "frequency_masked",
        "crop_scale": [0.2, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        mask_radius: float = 16.0,
        low_pass_prob: Optional[float] = None,
        loss_gamma: float = 1.0,
        focal_weighting: bool = False,
        matrix_gamma: float = 1.0,
        recover_target: str = "masked",
        clamp_corrupted: bool = True,
        feature_pooling: str = "cls",
        **kwargs,
    ):
        self.mask_radius = mask_radius
        self.low_pass_prob = low_pass_prob
        self.loss_gamma = loss_gamma
        self.focal_weighting = focal_weighting
        self.matrix_gamma = matrix_gamma
        self.recover_target = recover_target
        self.clamp_corrupted = clamp_corrupted
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    @property
    def resolved_low_pass_prob(self) -> float:
        if self.low_pass_prob is not None:
            return float(self.low_pass_prob)
        return 0.3 if backbone_family(self.backbone_config) == "convnet" else 0.5

    def validate_ssl(self) -> None:
        super().validate_ssl()
        from ..backbones import feature_stride

        feature_stride(self.backbone_config)  # raises for encoders without a known feature-map stride
        self._check_positive(mask_radius=self.mask_radius, loss_gamma=self.loss_gamma, matrix_gamma=self.matrix_gamma)
        if self.low_pass_prob is not None:
            self._check_range("low_pass_prob", self.low_pass_prob, 0.0, 1.0, high_inclusive=True)
        if self.recover_target not in RECOVER_TARGETS:
            raise ValueError(f"recover_target must be one of {RECOVER_TARGETS}, got {self.recover_target!r}")
        stride = feature_stride(self.backbone_config)
        if self.image_size % stride:
            raise ValueError(f"image_size {self.image_size} must be divisible by the encoder stride {stride}")
        if self.mask_radius >= self.image_size * 0.75:
            raise ValueError(f"mask_radius {self.mask_radius} leaves nothing to remove for image_size {self.image_size}")


__all__ = ["MFMConfig"]
