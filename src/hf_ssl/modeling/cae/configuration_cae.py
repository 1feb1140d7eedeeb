"""CAE configuration (Chen et al., "Context Autoencoder for Self-Supervised Representation Learning")."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig

TARGETS = ("pixel_norm", "pixel", "tokens")


class CAEConfig(SSLConfig):
    r"""Configuration of :class:`CAEForSelfSupervisedPretraining`.

    Defaults are the paper's ViT-B/16 ImageNet-1k recipe as run by the official code
    (`Atten4Vis/CAE`, `scripts/cae_base_800e.sh` and `tools/run_pretraining.py`).

    Args:
        backbone_config: the encoder; must be a ViT-family transformers config (default preset `"vit-base"`,
            ViT-B/16). CAE is defined on patch tokens, so ConvNets/Swin are rejected.
        mask_ratio: fraction of patches masked when the model draws its own block-wise mask (no
            `bool_masked_pos` given). Official: `--num_mask_patches 98` of 196 = 0.5. Also written into
            `augmentation["mask_ratio"]` unless `augmentation` sets it explicitly.
        regressor_depth: cross-attention blocks of the latent contextual regressor (official/paper: 4).
        decoder_depth: self-attention blocks of the reconstruction decoder (official/paper: 4).
        decoder_hidden_size: width of regressor and decoder; `None` = the encoder width (official
            `--decoder_embed_dim 768` = ViT-B width). A different width adds the official
            `encoder_to_regressor` linear + LayerNorm, applied to visible latents and alignment targets alike.
        decoder_num_heads: heads of regressor and decoder; `None` = the encoder's head count (official 12).
        decoder_mlp_ratio: MLP expansion of regressor/decoder blocks (official: 4, the encoder's).
        decoder_layer_scale: initial value of the per-channel residual gains of regressor/decoder blocks
            (official `--decoder_layer_scale_init_value 0.1`); 0 disables them.
        alignment_weight: weight of the latent alignment MSE (paper lambda = 2, `--align_loss_weight 2`).
        target: reconstruction target of the masked patches. `"pixel_norm"` (default here): per-patch
            normalized pixels with MSE (MAE's norm-pix); `"pixel"`: raw (input-normalized) pixels with MSE;
            `"tokens"`: the paper's target, cross-entropy over `vocab_size` visual-token ids that the caller
            supplies as `visual_tokens` or via `model.set_tokenizer(callable)` (the DALL-E d-VAE weights are
            not bundled).
        vocab_size: codebook size for `target="tokens"` (DALL-E d-VAE: 8192).
        teacher_momentum: 0 (default, official) computes the alignment targets with the encoder itself under
            `torch.no_grad` (the official `alignment_encoder` shares the encoder's weights). A value in (0, 1)
            instead keeps a separate EMA `teacher_encoder` updated after every optimizer step.
        encoder_sincos_pos_embed: initialise the encoder's position embeddings to fixed 2-D sin-cos values
            and freeze them (official encoder: `build_2d_sincos_position_embedding`, `requires_grad=False`).
        feature_pooling: pooling for `get_image_features`/k-NN: `"cls"` (default; the official linear probe
            passes `--use_cls` and reads the final-norm CLS token) or `"mean"` (patch-token mean, what the
            official fine-tuning head uses).
    """

    model_type = "hf_ssl_cae"
    paper_title = "Context Autoencoder for Self-Supervised Representation Learning"
    paper_url = "https://arxiv.org/abs/2202.03026"
    citation = (
        "@article{chen2023context,\n"
        "  title={Context Autoencoder for Self-Supervised Representation Learning},\n"
        "  author={Chen, Xiaokang and Ding, Mingyu and Wang, Xiaodi and Xin, Ying and Mo, Shentong and Wang, Yunhao"
        " and Han, Shumin and Luo, Ping and Zeng, Gang and Wang, Jingdong},\n"
        "  journal={International Journal of Computer Vision},\n"
        "  year={2024},\n"
        "  note={arXiv:2202.03026}\n"
        "}"
    )
    default_backbone = "vit-base"
    # official DataAugmentationForCAE: RandomHorizontalFlip(0.5) + RandomResizedCrop(224, scale=(0.08, 1.0)),
    # --color_jitter 0, MaskingGenerator(num_masking_patches=98, min_num_patches=16, min_aspect=0.3)
    default_augmentation = {
        "policy": "masked",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "mask": "block",
        "mask_ratio": 0.5,
        "min_block_patches": 16,
    }

    def __init__(
        self,
        backbone_config=None,
        mask_ratio: float = 0.5,
        regressor_depth: int = 4,
        decoder_depth: int = 4,
        decoder_hidden_size: Optional[int] = None,
        decoder_num_heads: Optional[int] = None,
        decoder_mlp_ratio: float = 4.0,
        decoder_layer_scale: float = 0.1,
        alignment_weight: float = 2.0,
        target: str = "pixel_norm",
        vocab_size: int = 8192,
        teacher_momentum: float = 0.0,
        encoder_sincos_pos_embed: bool = True,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.mask_ratio = mask_ratio
        self.regressor_depth = regressor_depth
        self.decoder_depth = decoder_depth
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.decoder_layer_scale = decoder_layer_scale
        self.alignment_weight = alignment_weight
        self.target = target
        self.vocab_size = vocab_size
        self.teacher_momentum = teacher_momentum
        self.encoder_sincos_pos_embed = encoder_sincos_pos_embed
        augmentation = dict(augmentation or {})
        augmentation.setdefault("mask_ratio", mask_ratio)
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    # resolved widths -------------------------------------------------------------------------------
    @property
    def regressor_hidden_size(self) -> int:
        return self.decoder_hidden_size or self.backbone_config.hidden_size

    @property
    def regressor_num_heads(self) -> int:
        return self.decoder_num_heads or self.backbone_config.num_attention_heads

    def validate_ssl(self) -> None:
        super().validate_ssl()
        family = backbone_family(self.backbone_config)
        if family != "vit":
            raise ValueError(
                f"CAE needs a ViT-family backbone (patch tokens that can be dropped), got model_type "
                f"{self.backbone_config.model_type!r}. Use e.g. backbone_config='vit-base'."
            )
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        for name in ("regressor_depth", "decoder_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.alignment_weight is None or self.alignment_weight < 0:
            raise ValueError(f"alignment_weight must be >= 0, got {self.alignment_weight}")
        if self.decoder_layer_scale is None or self.decoder_layer_scale < 0:
            raise ValueError(f"decoder_layer_scale must be >= 0, got {self.decoder_layer_scale}")
        self._check_positive(decoder_mlp_ratio=self.decoder_mlp_ratio)
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "tokens":
            self._check_positive(vocab_size=self.vocab_size)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0)
        if self.decoder_hidden_size is not None:
            self._check_positive(decoder_hidden_size=self.decoder_hidden_size)
        if self.decoder_num_heads is not None:
            self._check_positive(decoder_num_heads=self.decoder_num_heads)
        dim, heads = self.regressor_hidden_size, self.regressor_num_heads
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by decoder_num_heads {heads}")
        if dim % 4:
            raise ValueError(f"decoder width {dim} must be divisible by 4 (2-D sin-cos position embeddings)")
        if self.encoder_sincos_pos_embed and self.backbone_config.hidden_size % 4:
            raise ValueError("encoder_sincos_pos_embed needs an encoder width divisible by 4")
        ratio = self.augmentation.get("mask_ratio")
        if ratio is not None and not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"augmentation['mask_ratio'] must be in (0, 1), got {ratio}")


__all__ = ["CAEConfig"]
