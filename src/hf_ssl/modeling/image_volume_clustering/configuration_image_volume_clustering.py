"""Configuration of the joint image-volume intra-inter contrastive clustering method (Nguyen et al., AAAI 2023)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig


class ImageVolumeClusteringConfig(SSLConfig):
    r"""Configuration of :class:`ImageVolumeClusteringForSelfSupervisedPretraining`.

    Defaults follow the paper / official code (`duyhominhnguyen/Self-supervised-Image-Volume-Intra-Inter-Contrastive`:
    `ssl_swav_3D.py`, `mask_swav_3D.py`, `utils/models.py`; the 2-D stage is VISSL's SwAV recipe).

    Args:
        backbone_config: the 2-D slice encoder (default `"resnet-50"`, the official one), applied to every depth slice;
            a stock transformers 2-D backbone (ResNet, ViT, ...). This is what `export_encoder` writes.
        image_size: slice side (official `target_shape` (64, 128, 128): 128); `volume_depth` the number of slices
            (official 64).
        num_channels: 1 for grey CT / MRI / microscopy stacks.
        slice_features: `"multiscale"` (official `forward_2D`: the L2-normalised global average of every stage,
            concatenated; ConvNets only) or `"pooled"` (the encoder's pooled feature, used for ViTs).
        aggregator_hidden_size / aggregator_layers / aggregator_num_heads / aggregator_intermediate_size: the slice
            transformer that turns slice embeddings into the volume embedding (official d_model 640, 4 layers, FFN 720).
        num_prototypes: prototypes of the 3-D (volume-level) clustering (official 3000).
        num_prototypes_2d: prototypes of the 2-D (slice-level) clustering (VISSL SwAV: 3000).
        volume_projection: put a SwAV projection head shaped like the 2-D one (linear - BatchNorm (if
            `projection_batch_norm`) - ReLU - linear, `projection_hidden_dim` -> `projection_dim`) between the volume embedding and the 3-D prototypes (default True; deviation). The
            official `ResNet_Trans` scores the L2-normalised volume embedding directly (`False`). The mean of slice
            tokens is dominated by a component every volume shares (the ReLU features of the slice encoder, the
            depth positions): volume embeddings start at a pairwise cosine of ~0.9999, Sinkhorn codes and
            predictions are then uniform and the 3-D loss sits at ln K with no gradient. The head's BatchNorm
            removes the shared component, as the 2-D SwAV head does for slices. The k-NN feature and the exported
            encoder are unchanged (the head is training-only).
        projection_hidden_dim / projection_dim / projection_batch_norm: the 2-D SwAV projection head (2048-128, BN).
        swav_temperature: softmax temperature of the swapped prediction, both levels (official `--temperature 0.1`;
            renamed because transformers 5 reserves `temperature` on configs).
        sinkhorn_epsilon / sinkhorn_iterations: Sinkhorn-Knopp regularisation and iterations (0.05, 3), over the
            global (all-process) batch.
        freeze_prototypes_steps: optimizer steps during which both prototype sets get no gradient (official 313).
        mask_ratio: fraction of slice tokens replaced by the mask token for masked embedding prediction (official
            0.1, `ceil(D * ratio)` slices; here `round`, at least one).
        num_slices_2d: slices per volume that get two 2-D views for the slice-level clustering.
        weight_2d / weight_3d / weight_mask: weights of the slice clustering, volume clustering and masked embedding
            prediction terms (all 1).
        stage_steps: `None` (default) trains the three terms jointly from the first step. `[n_2d, n_mask]` runs the
            official three-stage schedule inside one run, gated by the optimizer step (resume-safe): steps
            `[0, n_2d)` optimise the 2-D slice clustering alone (official stage 1, VISSL SwAV); steps
            `[n_2d, n_2d + n_mask)` the masked embedding prediction with the 2-D encoder frozen (eval mode, no
            gradient; official `mask_swav_3D.py`); later steps the 3-D clustering end to end (official
            `ssl_swav_3D.py`). Prototype freezing counts from the start of the stage that uses the prototypes.
    """

    model_type = "hf_ssl_image_volume_clustering"
    paper_title = ("Joint Self-Supervised Image-Volume Representation Learning with Intra-Inter Contrastive "
                   "Clustering")
    paper_url = "https://arxiv.org/abs/2212.01893"
    citation = (
        "@inproceedings{nguyen2023joint,\n"
        "  title={Joint Self-Supervised Image-Volume Representation Learning with Intra-Inter Contrastive "
        "Clustering},\n"
        "  author={Nguyen, Duy M. H. and Nguyen, Hoang and Mai, Truong T. N. and Cao, Tri and Nguyen, Binh T. and "
        "Ho, Nhat and Swoboda, Paul and Albarqouni, Shadi and Xie, Pengtao and Sonntag, Daniel},\n"
        "  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},\n"
        "  volume={37}, number={12}, pages={14426--14435},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "resnet-50"
    default_augmentation = {
        "policy": "image_volume_views",
        "eval_policy": "volume_eval",
        # 3-D views (official torchio: flip, affine, anisotropy, noise, blur, bias field, gamma)
        "crop_scale": [0.4, 1.0],
        "crop_ratio": [0.75, 1.3333333333333333],
        "flip": 0.5,
        "rotate90": 0.0,
        # per-volume intensity normalisation before any view ("percentile": each volume's 0.5 / 99.5 percentiles ->
        # [0, 1], training, evaluation and the image processor); off by default as in the released loader
        "intensity_normalization": None,
        "intensity_percentiles": [0.5, 99.5],
        "intensity": 0.8,
        "gamma": [0.7, 1.5],
        "noise_std": 0.03,
        # 2-D slice views (SwAV-style crops of single slices)
        "slice_crop_scale": [0.14, 1.0],
        "slice_depth_range": [0.2, 0.8],
        "color_jitter": 0.0, "grayscale": 0.0, "horizontal_flip": 0.0,
    }

    def __init__(self, backbone_config=None, image_size: int = 128, volume_depth: Optional[int] = 64,
                 num_channels: int = 1, slice_features: str = "multiscale", aggregator_hidden_size: int = 640,
                 aggregator_layers: int = 4, aggregator_num_heads: int = 8, aggregator_intermediate_size: int = 720,
                 num_prototypes: int = 3000, num_prototypes_2d: int = 3000, projection_hidden_dim: int = 2048,
                 projection_dim: int = 128, projection_batch_norm: bool = True, swav_temperature: float = 0.1,
                 sinkhorn_epsilon: float = 0.05, sinkhorn_iterations: int = 3, freeze_prototypes_steps: int = 313,
                 mask_ratio: float = 0.1, num_slices_2d: int = 4, weight_2d: float = 1.0, weight_3d: float = 1.0,
                 weight_mask: float = 1.0, stage_steps: Optional[list] = None, volume_projection: bool = True,
                 feature_pooling: str = "cls", image_mean=None, image_std=None, **kwargs):
        self.volume_depth = int(volume_depth or image_size)
        self.slice_features = slice_features
        self.aggregator_hidden_size = aggregator_hidden_size
        self.aggregator_layers = aggregator_layers
        self.aggregator_num_heads = aggregator_num_heads
        self.aggregator_intermediate_size = aggregator_intermediate_size
        self.num_prototypes = num_prototypes
        self.num_prototypes_2d = num_prototypes_2d
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.projection_batch_norm = projection_batch_norm
        self.swav_temperature = swav_temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.mask_ratio = mask_ratio
        self.num_slices_2d = num_slices_2d
        self.weight_2d = weight_2d
        self.weight_3d = weight_3d
        self.weight_mask = weight_mask
        self.stage_steps = None if stage_steps is None else list(stage_steps)
        self.volume_projection = bool(volume_projection)
        image_mean = [0.5] * num_channels if image_mean is None else image_mean
        image_std = [0.25] * num_channels if image_std is None else image_std
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels,
                         feature_pooling=feature_pooling, image_mean=image_mean, image_std=image_std, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        family = backbone_family(self.backbone_config)
        if family not in ("convnet", "vit", "swin"):
            raise ValueError(f"the slice encoder must be a 2-D image backbone (ResNet, ViT, ...), got "
                             f"{self.backbone_config.model_type!r} (family {family!r})")
        if self.slice_features not in ("multiscale", "pooled"):
            raise ValueError(f"slice_features must be 'multiscale' or 'pooled', got {self.slice_features!r}")
        if self.slice_features == "multiscale" and (family != "convnet"
                                                    or not getattr(self.backbone_config, "hidden_sizes", None)):
            raise ValueError("slice_features='multiscale' pools every ConvNet stage; use 'pooled' for "
                             f"{self.backbone_config.model_type!r} encoders")
        if self.volume_depth < 2:
            raise ValueError(f"volume_depth must be >= 2 slices, got {self.volume_depth}")
        for name in ("aggregator_hidden_size", "aggregator_layers", "aggregator_num_heads",
                     "aggregator_intermediate_size", "num_prototypes", "num_prototypes_2d", "projection_hidden_dim",
                     "projection_dim", "sinkhorn_iterations", "num_slices_2d"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.aggregator_hidden_size % self.aggregator_num_heads or self.aggregator_hidden_size % 2:
            raise ValueError(f"aggregator_hidden_size {self.aggregator_hidden_size} must be even and divisible by "
                             f"aggregator_num_heads {self.aggregator_num_heads}")
        self._check_positive(swav_temperature=self.swav_temperature, sinkhorn_epsilon=self.sinkhorn_epsilon)
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False)
        if not isinstance(self.freeze_prototypes_steps, int) or self.freeze_prototypes_steps < 0:
            raise ValueError(f"freeze_prototypes_steps must be an integer >= 0, got {self.freeze_prototypes_steps!r}")
        weights = (self.weight_2d, self.weight_3d, self.weight_mask)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weight_2d / weight_3d / weight_mask must be >= 0 and not all 0, got {list(weights)}")
        if self.stage_steps is not None:
            st = self.stage_steps
            if (len(st) != 2 or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in st)):
                raise ValueError(f"stage_steps must be None or [n_2d, n_mask], two integers >= 0, got {st!r}")
            for n, w, name in ((st[0], self.weight_2d, "weight_2d"), (st[1], self.weight_mask, "weight_mask"),
                               (1, self.weight_3d, "weight_3d")):
                if n > 0 and w <= 0:
                    raise ValueError(f"stage_steps={st} trains a stage whose term has {name}={w}; give it a "
                                     "positive weight or a stage length of 0")
        for key in ("crop_scale", "slice_crop_scale", "slice_depth_range"):
            lo, hi = self.augmentation.get(key, (0.5, 1.0))
            if not 0 <= lo <= hi <= 1 or (key != "slice_depth_range" and lo == 0):
                raise ValueError(f"augmentation[{key!r}] must satisfy 0 < low <= high <= 1, got {[lo, hi]}")


__all__ = ["ImageVolumeClusteringConfig"]
