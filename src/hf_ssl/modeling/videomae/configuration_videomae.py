"""VideoMAE configuration (Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022)."""

from __future__ import annotations

from ..video_base import VideoSSLConfig


class SSLVideoMAEConfig(VideoSSLConfig):
    r"""Configuration of :class:`VideoMAEForSelfSupervisedPretraining`.

    Named `SSLVideoMAEConfig` (not `VideoMAEConfig`) so it never shadows transformers' own `VideoMAEConfig`, which
    describes the encoder (`backbone_config`).

    Defaults are the official Kinetics-400 ViT-B recipe (MCG-NJU/VideoMAE `scripts/kinetics/videomae_vit_base_patch16_224
    _tubemasking_ratio_0.9_epoch_800/pretrain.sh`, `modeling_pretrain.py`, `datasets.py`).

    Args:
        backbone_config: a stock VideoMAEModel (default `"videomae-base"`: ViT-B, 2 x 16 x 16 tubelets).
        num_frames / sampling_rate: 16 frames, 4 apart (Kinetics; 2 on Something-Something v2).
        mask_type: `"tube"` (one random spatial mask shared by all time steps, the paper's default) or `"random"`
            (space-time agnostic, as in MAE-ST / Orhan et al.).
        mask_ratio: fraction of tokens masked (0.9).
        decoder_hidden_size / decoder_depth / decoder_num_heads: 384 / 4 / 6 (ViT-B; ViT-S: 192 / 4 / 3).
        decoder_mlp_ratio: 4.
        norm_pix_loss: targets normalized per tube and channel (official `--normlize_target True`).
        augmentation: `video_masked` policy: GroupMultiScaleCrop (scales 1, .875, .75, .66) to `image_size`, no
            flip, no colour augmentation, ImageNet normalization (`DataAugmentationForVideoMAE`).
    """

    model_type = "hf_ssl_videomae"
    paper_title = "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video Pre-Training"
    paper_url = "https://arxiv.org/abs/2203.12602"
    citation = (
        "@inproceedings{tong2022videomae,\n"
        "  title={VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video Pre-Training},\n"
        "  author={Tong, Zhan and Song, Yibing and Wang, Jue and Wang, Limin},\n"
        "  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},\n"
        "  year={2022}\n"
        "}"
    )
    default_backbone = "videomae-base"
    default_augmentation = {
        "policy": "video_masked",
        "eval_policy": "video_eval",
        "crop": "multiscale",
        "multiscale_scales": [1.0, 0.875, 0.75, 0.66],
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, num_frames: int = 16, sampling_rate: int = 4, image_size: int = 224,
                 mask_type: str = "tube", mask_ratio: float = 0.9, decoder_hidden_size: int = 384,
                 decoder_depth: int = 4, decoder_num_heads: int = 6, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, **kwargs):
        self.mask_type = mask_type
        self.mask_ratio = mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.norm_pix_loss = norm_pix_loss
        super().__init__(backbone_config=backbone_config, num_frames=num_frames, sampling_rate=sampling_rate,
                         image_size=image_size, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.mask_type not in ("tube", "random"):
            raise ValueError(f"mask_type must be 'tube' or 'random', got {self.mask_type!r}")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        t, h, w = self.token_grid
        per_mask = h * w if self.mask_type == "tube" else t * h * w
        masked = int(round(per_mask * self.mask_ratio))
        if masked == 0 or masked == per_mask:
            raise ValueError(f"mask_ratio={self.mask_ratio} masks {masked} of {per_mask} "
                             f"{'spatial positions' if self.mask_type == 'tube' else 'tokens'}: need >= 1 masked and "
                             ">= 1 visible")
        for name in ("decoder_hidden_size", "decoder_depth", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by decoder_num_heads "
                             f"{self.decoder_num_heads}")
        self._check_positive(decoder_mlp_ratio=self.decoder_mlp_ratio)


__all__ = ["SSLVideoMAEConfig"]
