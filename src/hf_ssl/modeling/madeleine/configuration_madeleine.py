"""MADELEINE configuration (Jaume et al., "Multistain Pretraining for Slide Representation Learning in Pathology",
ECCV 2024)."""

from __future__ import annotations

from ..backbones import backbone_family, resolve_backbone_config
from ..base import SSLConfig


class MadeleineConfig(SSLConfig):
    r"""Configuration of :class:`MadeleineForSelfSupervisedPretraining`.

    Defaults follow the official recipe (`mahmoodlab/MADELEINE`, `scripts/launch_pretrain_withStainEncodings.sh`,
    `core/models/Model.py`, `core/models/abmil.py`, `core/utils/loss.py`, `core/utils/trainer.py`).

    Args:
        backbone_config: the patch encoder (default `"vit-base"`, the ViT-B/16 architecture of CONCH; no CONCH
            weights are bundled). Its `image_size` is `tile_size`.
        train_patch_encoder: False (paper: frozen patch encoder, features pre-extracted); True fine-tunes it.
        tile_size: side of the square patches a slide image is cut into (CONCH input 224).
        image_size: side of a slide image fed as `pixel_values` (must be a multiple of `tile_size`). Real WSIs go in
            as pre-extracted `patch_features` instead (as officially).
        max_tiles: patches kept per slide during training (official `--n_subsamples 2048`, random); all at eval.
        stains: stain names, H&E first (the official BRCA / ACROBAT set is HE, ER, PR, HER2, KI67; the simulated
            built-in data renders HE + one IHC).
        wsi_hidden_dim: ABMIL width (official `--wsi_encoder_hidden_dim 512`, attention hidden 512).
        num_heads: attention heads of the multi-head ABMIL (official `--n_heads 4`).
        token_dim: width of the patch-token projection used by the local loss (official 128).
        add_stain_encoding: concatenate a learned 32-d stain embedding to every patch feature (official flag
            `--add_stain_encoding`, used in the "withStainEncodings" recipe; off in the released model factory).
        contrastive_temperature: InfoNCE temperature (official `--temperature 0.001`), symmetric (`--symmetric_cl`).
        local_loss_weight: weight of the GOT term (official 1.0); `got_subsample`: tokens kept per slide for GOT
            (official 256).
        attention_dropout / feature_dropout: ABMIL gate dropout 0.25 and pre-attention MLP dropout 0.1 (official).
    """

    model_type = "hf_ssl_madeleine"
    paper_title = "Multistain Pretraining for Slide Representation Learning in Pathology"
    paper_url = "https://arxiv.org/abs/2408.02859"
    citation = (
        "@inproceedings{jaume2024multistain,\n"
        "  title={Multistain Pretraining for Slide Representation Learning in Pathology},\n"
        "  author={Jaume, Guillaume and Vaidya, Anurag and Zhang, Andrew and Song, Andrew H and Chen, Richard J and "
        "Sahai, Sharifa and Mo, Dandan and Madrigal, Emilio and Le, Long Phi and Mahmood, Faisal},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "vit-base"
    default_augmentation = {
        "policy": "multistain",
        "eval_policy": "multistain_eval",
        "stain_crop_scale": [0.6, 1.0],
        "stain_jitter": 0.2,
        "horizontal_flip": 0.5,
    }

    def __init__(self, backbone_config=None, train_patch_encoder: bool = False, tile_size: int = 224,
                 image_size: int = 1792, max_tiles: int = 2048, stains=("HE", "IHC"), wsi_hidden_dim: int = 512,
                 num_heads: int = 4, token_dim: int = 128, add_stain_encoding: bool = False,
                 stain_encoding_dim: int = 32, contrastive_temperature: float = 0.001, symmetric: bool = True,
                 local_loss_weight: float = 1.0, got_subsample: int = 256, attention_dropout: float = 0.25,
                 feature_dropout: float = 0.1, num_channels: int = 3, **kwargs):
        self.train_patch_encoder = train_patch_encoder
        self.tile_size = tile_size
        self.max_tiles = max_tiles
        self.stains = list(stains)
        self.wsi_hidden_dim = wsi_hidden_dim
        self.num_heads = num_heads
        self.token_dim = token_dim
        self.add_stain_encoding = add_stain_encoding
        self.stain_encoding_dim = stain_encoding_dim
        self.contrastive_temperature = contrastive_temperature
        self.symmetric = symmetric
        self.local_loss_weight = local_loss_weight
        self.got_subsample = got_subsample
        self.attention_dropout = attention_dropout
        self.feature_dropout = feature_dropout
        if not isinstance(backbone_config, dict) or backbone_config.get("model_type") in ("vit", "deit", "dinov2"):
            if isinstance(backbone_config, dict):
                backbone_config = dict(backbone_config)
                backbone_config.setdefault("image_size", tile_size)
            elif backbone_config is None or isinstance(backbone_config, str):
                backbone_config = resolve_backbone_config(backbone_config, self.default_backbone,
                                                          image_size=tile_size, num_channels=num_channels)
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels, **kwargs)

    @property
    def tiles_per_side(self) -> int:
        return self.image_size // self.tile_size

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(contrastive_temperature=self.contrastive_temperature)
        self._check_non_negative(local_loss_weight=self.local_loss_weight)
        for name in ("tile_size", "max_tiles", "wsi_hidden_dim", "num_heads", "token_dim", "stain_encoding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.got_subsample is not None and (not isinstance(self.got_subsample, int) or self.got_subsample < 2):
            raise ValueError(f"got_subsample must be None or an integer >= 2, got {self.got_subsample!r}")
        if self.image_size % self.tile_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of tile_size {self.tile_size}")
        if len(self.stains) < 2 or len(set(self.stains)) != len(self.stains):
            raise ValueError(f"stains must name H&E plus at least one other stain, without repeats; got {self.stains}")
        if str(self.stains[0]).upper() not in ("HE", "H&E"):
            raise ValueError(f"the first stain must be H&E (the anchor of every cross-stain loss), got {self.stains[0]}")
        self._check_range("attention_dropout", self.attention_dropout, 0.0, 1.0)
        self._check_range("feature_dropout", self.feature_dropout, 0.0, 1.0)
        if backbone_family(self.backbone_config) == "vit":
            bb = self.backbone_config
            if bb.image_size != self.tile_size or self.tile_size % bb.patch_size:
                raise ValueError(f"a ViT patch encoder reads tile_size ({self.tile_size}) tiles: its image_size "
                                 f"({bb.image_size}) must equal tile_size and be divisible by its patch_size")
        lo, hi = self.augmentation.get("stain_crop_scale", (0.6, 1.0))
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augmentation['stain_crop_scale'] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")
        if not 0 <= float(self.augmentation.get("stain_jitter", 0.2)) < 1:
            raise ValueError("augmentation['stain_jitter'] must be in [0, 1)")


__all__ = ["MadeleineConfig"]
