"""FSFM configuration (Wang et al., "FSFM: A Generalizable Face Security Foundation Model via Self-Supervised
Facial Representation Learning", CVPR 2025)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig
from .masking_fsfm import FACE_CANDIDATE_GROUPS, FACE_REGION_GROUPS

ID_LOSSES = ("simsiam", "byol")
REGION_SOURCES = ("face_parsing", "grid")

# VGGFace2 statistics used by the official pretraining when not normalising with ImageNet's
VGGFACE2_MEAN = [0.5482207536697388, 0.42340534925460815, 0.3654651641845703]
VGGFACE2_STD = [0.2789176106452942, 0.2438540756702423, 0.23493893444538116]


class FSFMConfig(SSLConfig):
    r"""Configuration of :class:`FSFMForSelfSupervisedPretraining`.

    Defaults are the paper's ViT-B/16 recipe as run by the official code (`wolo-wolo/FSFM-CVPR25`,
    `fsfm-3c/pretrain/main_pretrain.py`, `engine_pretrain.py`, `models_fsfm.py`, `util/datasets.py`).

    Args:
        backbone_config: ViT encoder (default ViT-B/16 at 224 px).
        mask_ratio: CRFR-P mask ratio (official 0.75).
        region_source: where facial regions come from. `"face_parsing"` (paper): per-pixel face-parsing maps with
            the official 11 labels, passed as `parsing_map` `[B, H, W]` (or per-patch ids as `region_ids`
            `[B, N]`), or computed by a callable registered with `model.set_region_parser(fn)`. `"grid"`: the
            documented fallback that needs no parsing model: a `grid_regions` rectangle grid, every cell a region
            (see `masking_fsfm.grid_region_parser`).
        region_groups / candidate_region_groups: label groups and the indices of groups that may be fully covered
            (official: eyebrows, eyes, nose, mouth, face boundary, hair | skin, background; candidates = first six).
            Ignored for `region_source="grid"`.
        grid_regions: `(rows, cols)` of the fallback grid parser.
        rep_decoder_depth / rep_decoder_hidden_size / rep_decoder_num_heads: the "rep decoder" that turns the
            masked encoding (+ mask tokens) into the representation for self-distillation (official: depth 2,
            encoder width, 16 heads).
        decoder_hidden_size / decoder_depth / decoder_num_heads: MAE pixel decoder (official 512 / 8 / 16).
        projection_dim / projection_hidden_dim: BYOL-style projector and predictor (Linear-LayerNorm-ReLU-Linear;
            official 256 / 4096).
        norm_pix_loss: per-patch normalised pixel targets (official default False).
        region_loss_weight: weight of the reconstruction loss on the fully covered region (official
            `--weight_sfr 0.007`).
        id_loss_weight: weight of the instance-discrimination self-distillation loss (official `--weight_cl 0.1`).
        id_loss: `"simsiam"` (official default: `-0.5 * cos(p_student, z_teacher)`) or `"byol"` (`2 - 2 cos`).
        teacher_momentum: EMA momentum of the teacher (encoder + rep decoder + projector), cosine-increased to
            1 over training (official `--t_momentum 0.996`, `cosine_scheduler(0.996, 1, ...)`).
        feature_pooling: `"cls"` (the official fine-tuning uses the CLS token unless `global_pool` is set).
    """

    model_type = "hf_ssl_fsfm"
    paper_title = "FSFM: A Generalizable Face Security Foundation Model via Self-Supervised Facial Representation Learning"
    paper_url = "https://arxiv.org/abs/2412.12032"
    citation = (
        "@inproceedings{wang2025fsfm,\n"
        "  title={FSFM: A Generalizable Face Security Foundation Model via Self-Supervised Facial Representation"
        " Learning},\n"
        "  author={Wang, Gaojian and Lin, Feng and Wu, Tong and Liu, Zhenguang and Ba, Zhongjie and Ren, Kui},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  year={2025}\n"
        "}"
    )
    default_backbone = "vit-base"
    # official default: no augmentation (resize only); `--apply_simple_augment` = RRC(0.2, 1) + flip
    default_augmentation = {
        "policy": "fsfm",
        "crop_scale": [1.0, 1.0],
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        mask_ratio: float = 0.75,
        region_source: str = "face_parsing",
        region_groups=None,
        candidate_region_groups=None,
        grid_regions=(2, 2),
        rep_decoder_depth: int = 2,
        rep_decoder_hidden_size: Optional[int] = None,
        rep_decoder_num_heads: int = 16,
        decoder_hidden_size: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        decoder_mlp_ratio: float = 4.0,
        projection_dim: int = 256,
        projection_hidden_dim: int = 4096,
        norm_pix_loss: bool = False,
        region_loss_weight: float = 0.007,
        id_loss_weight: float = 0.1,
        id_loss: str = "simsiam",
        teacher_momentum: float = 0.996,
        feature_pooling: str = "cls",
        **kwargs,
    ):
        self.mask_ratio = mask_ratio
        self.region_source = region_source
        self.region_groups = [g if isinstance(g, str) else list(g) for g in (region_groups or FACE_REGION_GROUPS)]
        self.candidate_region_groups = list(candidate_region_groups if candidate_region_groups is not None
                                            else FACE_CANDIDATE_GROUPS)
        self.grid_regions = list(grid_regions)
        self.rep_decoder_depth = rep_decoder_depth
        self.rep_decoder_hidden_size = rep_decoder_hidden_size
        self.rep_decoder_num_heads = rep_decoder_num_heads
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_depth = decoder_depth
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.projection_dim = projection_dim
        self.projection_hidden_dim = projection_hidden_dim
        self.norm_pix_loss = norm_pix_loss
        self.region_loss_weight = region_loss_weight
        self.id_loss_weight = id_loss_weight
        self.id_loss = id_loss
        self.teacher_momentum = teacher_momentum
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)

    @property
    def resolved_rep_decoder_hidden_size(self) -> int:
        return self.rep_decoder_hidden_size or self.backbone_config.hidden_size

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"FSFM needs a ViT-family backbone, got model_type {self.backbone_config.model_type!r}.")
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        if self.region_source not in REGION_SOURCES:
            raise ValueError(f"region_source must be one of {REGION_SOURCES}, got {self.region_source!r}")
        if len(self.grid_regions) != 2 or any(int(v) < 1 for v in self.grid_regions):
            raise ValueError(f"grid_regions must be two positive integers, got {self.grid_regions}")
        for g in self.region_groups:
            if isinstance(g, str) and g != "boundary":
                raise ValueError(f"region_groups entries must be label lists or 'boundary', got {g!r}")
        if not self.candidate_region_groups or any(
                not 0 <= int(c) < len(self.region_groups) for c in self.candidate_region_groups):
            raise ValueError(f"candidate_region_groups must index region_groups (0..{len(self.region_groups) - 1}), "
                             f"got {self.candidate_region_groups}")
        for name in ("rep_decoder_depth", "decoder_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self._check_positive(decoder_hidden_size=self.decoder_hidden_size, projection_dim=self.projection_dim,
                             projection_hidden_dim=self.projection_hidden_dim, decoder_mlp_ratio=self.decoder_mlp_ratio,
                             rep_decoder_num_heads=self.rep_decoder_num_heads, decoder_num_heads=self.decoder_num_heads)
        for dim, heads, what in ((self.resolved_rep_decoder_hidden_size, self.rep_decoder_num_heads, "rep decoder"),
                                 (self.decoder_hidden_size, self.decoder_num_heads, "decoder")):
            if dim % heads:
                raise ValueError(f"{what} width {dim} is not divisible by its num_heads {heads}")
            if dim % 4:
                raise ValueError(f"{what} width {dim} must be divisible by 4 (2-D sin-cos positions)")
        for name in ("region_loss_weight", "id_loss_weight"):
            if getattr(self, name) is None or getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.id_loss not in ID_LOSSES:
            raise ValueError(f"id_loss must be one of {ID_LOSSES}, got {self.id_loss!r}")
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)


__all__ = ["FSFMConfig", "VGGFACE2_MEAN", "VGGFACE2_STD"]
