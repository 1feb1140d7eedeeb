"""GroCo configuration (Shvetsova et al., "Learning by Sorting: Self-supervised Learning with Group Ordering
Constraints", ICCV 2023)."""

from __future__ import annotations

import copy
from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig
from ..sorting import SORTING_DISTRIBUTIONS


class GroCoConfig(SSLConfig):
    r"""Configuration of :class:`GroCoForSelfSupervisedPretraining`.

    Defaults are the official ResNet-50 ImageNet recipe (`ninatu/learning_by_sorting`, `configs/2views_100ep.yaml`
    with the `GroCo` loss of `learning_by_sorting/losses/groco.py`).

    Args:
        backbone_config: the encoder (default preset `"resnet-50"`, official torchvision ResNet-50 with its fc removed).
        image_size: resolution of the global views (and of inference).
        projection_num_layers: linear layers of the projection head (official `num_layers: 3`).
        projection_hidden_dim: hidden width; `None` (official) = the encoder's feature dimension (2048 for
            ResNet-50): `[Linear(D, D, no bias)-BN-ReLU] x (L-1)`, then `Linear(D, out)` and `BatchNorm1d(out,
            affine=False)`.
        projection_dim: output width of the projection head (official `output_dim: 2048`).
        num_negatives: k, the hardest (most similar) negatives per anchor that enter the ranking (official
            `topk_neg: 10`). Negatives are the anchor-view embeddings of every other image of the global batch
            (all processes); the global batch must hold at least `num_negatives + 1` images.
        sorting_steepness: steepness of the relaxed comparisons of the sorting network (official `steepness: 1`).
        sorting_distribution: relaxation of each comparison (official `"cauchy"`; also `"logistic"`,
            `"logistic_phi"`, `"gaussian"`, `"reciprocal"`, `"optimal"`).
        sorting_art_lambda: the lambda of the `"logistic_phi"` relaxation (official 0.25, unused by `"cauchy"`).
        stop_gradient: the positives and the negatives are detached, only the anchor gets a gradient (official
            `stop_grad=True`); every view is an anchor once, so every view gets a gradient.
        feature_pooling: ViT pooling for `get_image_features` (`"cls"` or `"mean"`).
        augmentation: the `"groco"` view policy (DINO augmentations, see `default_augmentation`); `num_global`
            views at `image_size` (official `n_augs` 2, 3 or 4) plus `num_local` small crops (official multi-crop
            recipe: 2 + 6 at 96 px). The global views are the positives of each other and of every local crop
            (official `n_pos_augs`).
    """

    model_type = "hf_ssl_groco"
    paper_title = "Learning by Sorting: Self-supervised Learning with Group Ordering Constraints"
    paper_url = "https://arxiv.org/abs/2301.02009"
    citation = (
        "@inproceedings{shvetsova2023learning,\n"
        "  title={Learning by Sorting: Self-supervised Learning with Group Ordering Constraints},\n"
        "  author={Shvetsova, Nina and Petersen, Felix and Kukleva, Anna and Schiele, Bernt and Kuehne, Hilde},\n"
        "  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  pages={16453--16463},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # official learning_by_sorting/dataloader/transforms.py `get_dino_aug_transforms` (+ `_multicrop_` for the
    # local crops): RandomResizedCrop(224, scale 0.14-1, bicubic), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) w.p.
    # 0.8, grayscale 0.2; global view 1: blur p=1.0; global view 2: blur p=0.1 + solarize p=0.2; views 3, 4 repeat
    # views 1, 2; local crops (96 px, scale 0.05-0.14): blur p=0.5, no solarize.
    default_augmentation = {
        "policy": "groco",
        "num_global": 2,
        "num_local": 0,
        "global_scale": [0.14, 1.0],
        "local_size": 96,
        "local_scale": [0.05, 0.14],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        # per global view (cycled: views 3, 4 repeat views 1, 2); local crops use `local_gaussian_blur`, no solarize
        "global_gaussian_blur": [1.0, 0.1],
        "global_solarize": [0.0, 0.2],
        "local_gaussian_blur": 0.5,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 224,
        projection_num_layers: int = 3,
        projection_hidden_dim: Optional[int] = None,
        projection_dim: int = 2048,
        num_negatives: int = 10,
        sorting_steepness: float = 1.0,
        sorting_distribution: str = "cauchy",
        sorting_art_lambda: float = 0.25,
        stop_gradient: bool = True,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.projection_num_layers = projection_num_layers
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.num_negatives = num_negatives
        self.sorting_steepness = sorting_steepness
        self.sorting_distribution = sorting_distribution
        self.sorting_art_lambda = sorting_art_lambda
        self.stop_gradient = stop_gradient
        augmentation = copy.deepcopy(dict(augmentation or {}))
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)
        if "crop_scale" not in augmentation:  # the two-view default key; this policy uses global/local_scale
            self.augmentation.pop("crop_scale", None)

    @property
    def num_global_views(self) -> int:
        return int(self.augmentation.get("num_global", 2))

    @property
    def num_local_views(self) -> int:
        return int(self.augmentation.get("num_local", 0))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(sorting_steepness=self.sorting_steepness)
        if self.sorting_art_lambda is None or self.sorting_art_lambda < 0:
            raise ValueError(f"sorting_art_lambda must be >= 0, got {self.sorting_art_lambda}")
        if self.sorting_distribution not in SORTING_DISTRIBUTIONS:
            raise ValueError(f"sorting_distribution must be one of {SORTING_DISTRIBUTIONS}, got "
                             f"{self.sorting_distribution!r}")
        for name in ("projection_num_layers", "projection_dim", "num_negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        hidden = self.projection_hidden_dim
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"projection_hidden_dim must be None or an integer >= 1, got {hidden!r}")
        if not isinstance(self.stop_gradient, bool):
            raise ValueError(f"stop_gradient must be a bool, got {self.stop_gradient!r}")
        num_global, num_local = self.num_global_views, self.num_local_views
        if num_global < 2 or num_local < 0:
            raise ValueError(f"GroCo needs augmentation num_global >= 2 (the positives are the other global views) and "
                             f"num_local >= 0, got {num_global}, {num_local}")
        for key in ("global_scale", "local_scale"):
            scale = self.augmentation.get(key)
            if scale is not None and not 0.0 < float(scale[0]) <= float(scale[1]) <= 1.0:
                raise ValueError(f"augmentation['{key}'] must satisfy 0 < min <= max <= 1, got {list(scale)}")
        for key in ("global_gaussian_blur", "global_solarize", "local_gaussian_blur", "grayscale", "color_jitter",
                    "horizontal_flip"):
            value = self.augmentation.get(key, 0.0)
            values = value if isinstance(value, (list, tuple)) else [value]
            if not values or any(not 0.0 <= float(v) <= 1.0 for v in values):
                raise ValueError(f"augmentation['{key}'] must be a probability (or a list of them), got {value!r}")
        if num_local:
            local_size = int(self.augmentation.get("local_size", 96))
            if local_size <= 0:
                raise ValueError(f"augmentation['local_size'] must be positive, got {local_size}")
            if backbone_family(self.backbone_config) == "vit" and local_size % self.backbone_config.patch_size:
                raise ValueError(f"augmentation['local_size'] {local_size} must be divisible by the ViT patch size "
                                 f"{self.backbone_config.patch_size}")


__all__ = ["GroCoConfig"]
