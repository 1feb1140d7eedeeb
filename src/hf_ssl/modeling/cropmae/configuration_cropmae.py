"""CropMAE configuration (Eymael et al., "Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders")."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig


class CropMAEConfig(SSLConfig):
    r"""Configuration of :class:`CropMAEForSelfSupervisedPretraining`.

    Defaults are the official ImageNet recipe (`alexandre-eymael/CropMAE`, `scripts/train_cropmae_in.sh`,
    `models/SiamMAE.py`, `models/components/DecoderBlock.py`, `data/util/CropMAEStrategies.py`).

    Args:
        backbone_config: a ViT (default `"vit-small"`, ViT-S/16).
        mask_ratio: fraction of the second view's patches that are masked (official `--masking_ratio 0.985`); as in
            MAE, `int(N * (1 - mask_ratio))` patches stay visible (2 of 196 at 224 px),
            at least one.
        decoder_hidden_size / decoder_depth / decoder_num_heads: official 256 / 4 / 8 for ViT-S.
        decoder_mlp_dim: hidden width of the decoder feed-forward (official `DecoderBlock` default 2048).
        decoder_dropout: dropout inside decoder blocks (official `DecoderBlock` default 0.1).
        norm_pix_loss: per-patch normalized pixel targets (official `--norm_pix_loss`).
        encoder_sincos_pos_embed: fill the stock ViT's position table with fixed 2-D sin-cos values and keep it
            frozen, as the official MAE-derived encoder does (`pos_embed`, `requires_grad=False`); False = learned.
        augmentation: `global_scale` (0.1, 1) and `local_scale` (0.3, 0.6) random-resized-crop areas, `crop_ratio`
            (3/4, 4/3), per-view `horizontal_flip` 0.5; the local crop is taken from the global crop
            (`--crop_strategy GlobalToLocal`).
    """

    model_type = "hf_ssl_cropmae"
    paper_title = "Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders"
    paper_url = "https://arxiv.org/abs/2403.17823"
    citation = (
        "@inproceedings{eymael2024efficient,\n"
        "  title={Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders},\n"
        "  author={Eyma{\\\"e}l, Alexandre and Vandeghen, Renaud and Cioppa, Anthony and Giancola, Silvio and "
        "Ghanem, Bernard and Van Droogenbroeck, Marc},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "vit-small"
    default_augmentation = {
        "policy": "cropmae",
        "global_scale": [0.1, 1.0],
        "local_scale": [0.3, 0.6],
        "crop_ratio": [0.75, 1.3333333333333333],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(self, backbone_config=None, mask_ratio: float = 0.985, decoder_hidden_size: int = 256,
                 decoder_depth: int = 4, decoder_num_heads: int = 8, decoder_mlp_dim: int = 2048,
                 decoder_dropout: float = 0.1, norm_pix_loss: bool = True, encoder_sincos_pos_embed: bool = True,
                 feature_pooling: str = "cls", **kwargs):
        self.mask_ratio = mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_dim = decoder_mlp_dim
        self.decoder_dropout = decoder_dropout
        self.norm_pix_loss = norm_pix_loss
        self.encoder_sincos_pos_embed = encoder_sincos_pos_embed
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    def num_visible(self, num_patches: int) -> int:
        """Visible patches of the second view: MAE's `int(N * (1 - mask_ratio))`, at least 1."""
        return max(1, int(num_patches * (1 - self.mask_ratio)))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"CropMAE needs a ViT backbone, got model_type {self.backbone_config.model_type!r}")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        for name in ("decoder_depth", "decoder_hidden_size", "decoder_num_heads", "decoder_mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads or self.decoder_hidden_size % 4:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by decoder_num_heads "
                             f"{self.decoder_num_heads} and by 4 (sin-cos positions)")
        self._check_range("decoder_dropout", self.decoder_dropout, 0.0, 1.0)
        a = self.augmentation
        for key in ("global_scale", "local_scale"):
            lo, hi = a.get(key, (0.1, 1.0))
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"augmentation[{key!r}] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")


__all__ = ["CropMAEConfig"]
