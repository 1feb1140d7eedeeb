"""MixedAE configuration (Chen et al., "Mixed Autoencoder for Self-supervised Visual Representation Learning")."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig

HOMOLOGOUS_ATTENTION_MODES = ("topk", "mask", "none")


class MixedAEConfig(SSLConfig):
    r"""Configuration of :class:`MixedAEForSelfSupervisedPretraining`.

    Defaults follow the paper's ViT-B/16 recipe (MAE base with mixing ratio 0.25, i.e. the same encoder cost as MAE
    at 75% masking) and MAE's decoder (512 wide, 8 blocks, 16 heads, norm-pix targets).

    Args:
        backbone_config: a ViT (default `"vit-base"`, ViT-B/16).
        mixing_ratio: fraction `r` of the positions of a mixed image taken from each source image; `1 / r` images
            (the *group*) are mixed into one input, each contributing exactly `r * N` patches (paper default 0.25,
            i.e. 4 images per mixed input). `1 / r` must be an integer >= 2.
        homologous_attention: `"topk"` (paper's HomoAtt: every patch query keeps only its `r * N` highest attention
            scores, so it has to *recognise* its homologous patches), `"mask"` (oracle homology mask: a patch
            attends only to patches of its own source image; the CLS query attends to every token), or `"none"`
            (vanilla self-attention, the paper's naive-mixing baseline).
        segment_embedding: add a learned segment embedding (one per slot of the group) to every patch token
            according to its source image, as in the paper.
        homocon_weight: weight of the homologous contrastive loss added to the reconstruction loss.
        homocon_temperature: temperature of the homologous contrastive (supervised-contrastive style) loss.
        homocon_projection_dim: 0 (default) applies HomoCon to the encoder's output tokens; `> 0` to a 2-layer MLP
            projection (hidden = encoder width, LayerNorm + GELU) of them, SimCLR-style (not a paper setting).
        decoder_hidden_size / decoder_depth / decoder_num_heads / decoder_mlp_ratio: MAE decoder (512 / 8 / 16 / 4).
        norm_pix_loss: per-patch normalized pixel targets (MAE `norm_pix_loss`).
        augmentation: MAE views: random resized crop (area `crop_scale` (0.2, 1)), horizontal flip 0.5, nothing
            else.
    """

    model_type = "hf_ssl_mixedae"
    paper_title = "Mixed Autoencoder for Self-supervised Visual Representation Learning"
    paper_url = "https://arxiv.org/abs/2303.17152"
    citation = (
        "@inproceedings{chen2023mixed,\n"
        "  title={Mixed Autoencoder for Self-supervised Visual Representation Learning},\n"
        "  author={Chen, Kai and Liu, Zhili and Hong, Lanqing and Xu, Hang and Li, Zhenguo and Yeung, Dit-Yan},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "vit-base"
    default_augmentation = {
        "policy": "mixedae",
        "crop_scale": [0.2, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(self, backbone_config=None, mixing_ratio: float = 0.25, homologous_attention: str = "topk",
                 segment_embedding: bool = True, homocon_weight: float = 1.0, homocon_temperature: float = 0.07,
                 homocon_projection_dim: int = 0,
                 decoder_hidden_size: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 decoder_mlp_ratio: float = 4.0, norm_pix_loss: bool = True, feature_pooling: str = "cls",
                 **kwargs):
        self.mixing_ratio = mixing_ratio
        self.homologous_attention = homologous_attention
        self.segment_embedding = segment_embedding
        self.homocon_weight = homocon_weight
        self.homocon_temperature = homocon_temperature
        self.homocon_projection_dim = homocon_projection_dim
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.norm_pix_loss = norm_pix_loss
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    @property
    def group_size(self) -> int:
        """Images mixed into one input: `1 / mixing_ratio`."""
        return int(round(1.0 / self.mixing_ratio))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"MixedAE needs a ViT backbone, got model_type {self.backbone_config.model_type!r}")
        if not isinstance(self.mixing_ratio, (int, float)) or not 0 < self.mixing_ratio <= 0.5:
            raise ValueError(f"mixing_ratio must be in (0, 0.5] (at least two images per mixed input), "
                             f"got {self.mixing_ratio!r}")
        if abs(1.0 / self.mixing_ratio - self.group_size) > 1e-6:
            raise ValueError(f"1 / mixing_ratio must be an integer (e.g. 0.5, 0.25), got mixing_ratio "
                             f"{self.mixing_ratio}")
        if self.homologous_attention not in HOMOLOGOUS_ATTENTION_MODES:
            raise ValueError(f"homologous_attention must be one of {HOMOLOGOUS_ATTENTION_MODES}, "
                             f"got {self.homologous_attention!r}")
        if self.homocon_weight is None or self.homocon_weight < 0:
            raise ValueError(f"homocon_weight must be >= 0, got {self.homocon_weight}")
        if not isinstance(self.homocon_projection_dim, int) or self.homocon_projection_dim < 0:
            raise ValueError(f"homocon_projection_dim must be an integer >= 0, got {self.homocon_projection_dim!r}")
        self._check_positive(homocon_temperature=self.homocon_temperature, decoder_mlp_ratio=self.decoder_mlp_ratio)
        for name in ("decoder_depth", "decoder_hidden_size", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.decoder_hidden_size % self.decoder_num_heads or self.decoder_hidden_size % 4:
            raise ValueError(f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by decoder_num_heads "
                             f"{self.decoder_num_heads} and by 4 (sin-cos positions)")
        grid = self.image_size // self.backbone_config.patch_size
        if (grid * grid) % self.group_size:
            raise ValueError(f"the {grid * grid} patches of a {self.image_size}px image cannot be split evenly "
                             f"among {self.group_size} images (mixing_ratio {self.mixing_ratio})")
        lo, hi = self.augmentation.get("crop_scale", (0.2, 1.0))
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augmentation['crop_scale'] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")


__all__ = ["MixedAEConfig", "HOMOLOGOUS_ATTENTION_MODES"]
