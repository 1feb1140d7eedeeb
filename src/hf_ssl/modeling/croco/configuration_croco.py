"""CroCo / CroCo v2 configuration (Weinzaepfel et al., NeurIPS 2022 and ICCV 2023)."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig

POSITION_EMBEDDINGS = ("cosine", "rope")
PAIR_SOURCES = ("auto", "column", "homography")


class CroCoConfig(SSLConfig):
    r"""Configuration of :class:`CroCoForSelfSupervisedPretraining`.

    Defaults follow the official pretraining code (`naver/croco`, `models/croco.py`, `pretrain.py`,
    `datasets/transforms.py`).

    Args:
        backbone_config: a ViT (default `"vit-base"`, ViT-B/16 as officially).
        croco_version: 1 (fixed 2-D sin-cos positions, the NeurIPS 2022 model) or 2 (rotary positions "RoPE100",
            the ICCV 2023 model). Sets `position_embedding` unless that is given explicitly.
        position_embedding: `"cosine"` (sin-cos tables added to encoder and decoder tokens) or `"rope"` (2-D RoPE
            in every decoder attention; see the package docstring for the encoder).
        rope_base: RoPE base frequency (official `RoPE100`: 100).
        mask_ratio: fraction of the FIRST image's patches that are masked (official 0.9, random, exact count).
        decoder_hidden_size / decoder_depth / decoder_num_heads / decoder_mlp_ratio: official small decoder
            512 / 8 / 16 / 4 (CroCo v2 "base decoder": 768 / 12 / 12).
        norm_second_image_in_decoder: LayerNorm on the second image's tokens before each cross-attention
            (official `norm_im2_in_dec=True`).
        norm_pix_loss: per-patch normalized pixel targets (official `--norm_pix_loss 1`).
        encoder_sincos_pos_embed: initialise the stock ViT's position table with fixed 2-D sin-cos values and keep
            it frozen (official encoder: `get_2d_sincos_pos_embed`, a buffer).
        augmentation: `policy="croco_pair"`; `pair_source` `"auto"` (a second image column of the dataset when it
            has one, else a synthetic second view), `"column"` (require one) or `"homography"` (always
            synthetic); `pair_column` (default: the dataset's second image column); `crop_resize` (shorter side
            before the crop, default `image_size * 256 / 224`); `color_jitter_strength` (official asymmetric
            jitter, brightness/contrast/saturation in [0.6, 1.4], hue 0); `homography_strength` (corner
            displacement as a fraction of the crop side for synthetic pairs, default 0.15).
    """

    model_type = "hf_ssl_croco"
    paper_title = "CroCo: Self-Supervised Pre-training for 3D Vision Tasks by Cross-View Completion"
    paper_url = "https://arxiv.org/abs/2210.10716"
    citation = (
        "@inproceedings{weinzaepfel2022croco,\n"
        "  title={CroCo: Self-Supervised Pre-training for 3D Vision Tasks by Cross-View Completion},\n"
        "  author={Weinzaepfel, Philippe and Leroy, Vincent and Lucas, Thomas and Br{\\'e}gier, Romain and "
        "Cabon, Yohann and Arora, Vaibhav and Antsfeld, Leonid and Chidlovskii, Boris and Csurka, Gabriela and "
        "Revaud, J{\\'e}r{\\^o}me},\n"
        "  booktitle={NeurIPS},\n"
        "  year={2022}\n"
        "}\n"
        "@inproceedings{weinzaepfel2023croco,\n"
        "  title={CroCo v2: Improved Cross-view Completion Pre-training for Stereo Matching and Optical Flow},\n"
        "  author={Weinzaepfel, Philippe and Lucas, Thomas and Leroy, Vincent and Cabon, Yohann and Arora, Vaibhav "
        "and Br{\\'e}gier, Romain and Csurka, Gabriela and Antsfeld, Leonid and Chidlovskii, Boris and "
        "Revaud, J{\\'e}r{\\^o}me},\n"
        "  booktitle={ICCV},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "vit-base"
    default_augmentation = {
        "policy": "croco_pair",
        "pair_source": "auto",
        "pair_column": None,
        "crop_resize": None,
        "color_jitter": 1.0,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.0],
        "homography_strength": 0.15,
        "horizontal_flip": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(self, backbone_config=None, croco_version: int = 1, position_embedding=None,
                 rope_base: float = 100.0, mask_ratio: float = 0.9, decoder_hidden_size: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, decoder_mlp_ratio: float = 4.0,
                 norm_second_image_in_decoder: bool = True, norm_pix_loss: bool = True,
                 encoder_sincos_pos_embed: bool = True, feature_pooling: str = "mean", **kwargs):
        self.croco_version = croco_version
        if position_embedding is None:
            position_embedding = "rope" if croco_version == 2 else "cosine"
        self.position_embedding = position_embedding
        self.rope_base = rope_base
        self.mask_ratio = mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.norm_second_image_in_decoder = norm_second_image_in_decoder
        self.norm_pix_loss = norm_pix_loss
        self.encoder_sincos_pos_embed = encoder_sincos_pos_embed
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    def num_masked(self, num_patches: int) -> int:
        """Masked patches of the first image: `int(N * mask_ratio)` (official `RandomMask`), at most N - 1."""
        return min(num_patches - 1, int(num_patches * self.mask_ratio))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"CroCo needs a ViT backbone, got model_type {self.backbone_config.model_type!r}")
        if self.croco_version not in (1, 2):
            raise ValueError(f"croco_version must be 1 or 2, got {self.croco_version!r}")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        self._check_positive(rope_base=self.rope_base, decoder_mlp_ratio=self.decoder_mlp_ratio)
        for name in ("decoder_depth", "decoder_hidden_size", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by decoder_num_heads "
                             f"{self.decoder_num_heads}")
        head = self.decoder_hidden_size // self.decoder_num_heads
        if self.position_embedding == "rope" and head % 4:
            raise ValueError(f"RoPE needs a decoder head width divisible by 4, got {head}")
        if self.position_embedding == "cosine" and self.decoder_hidden_size % 4:
            raise ValueError("sin-cos decoder positions need decoder_hidden_size divisible by 4")
        a = self.augmentation
        if a.get("pair_source", "auto") not in PAIR_SOURCES:
            raise ValueError(f"augmentation['pair_source'] must be one of {PAIR_SOURCES}, got {a.get('pair_source')!r}")
        strength = a.get("homography_strength", 0.15)
        if not 0 <= float(strength) < 0.5:
            raise ValueError(f"augmentation['homography_strength'] must be in [0, 0.5), got {strength!r}")


__all__ = ["CroCoConfig"]
