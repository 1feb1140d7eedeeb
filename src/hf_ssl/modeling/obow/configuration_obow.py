"""OBoW configuration (Gidaris et al., "OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised Learning")."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

from ..backbones import backbone_family
from ..base import SSLConfig


class OBoWConfig(SSLConfig):
    r"""Configuration of :class:`OBoWForSelfSupervisedPretraining`.

    Defaults are the full ResNet-50 ImageNet model of the official code (valeoai/obow,
    `config/ImageNetFull/ResNet50_OBoW_full.yaml`, `obow/builder_obow.py`).

    Args:
        backbone_config: a ConvNet encoder (default `"resnet-50"`); its stage feature maps are the local features.
        image_size: resolution of the teacher view and of inference (official 224).
        bow_levels: which encoder stages give BoW targets, as indices into the backbone's `hidden_states`
            (official `["block3", "block4"]` = conv4 and conv5 of ResNet = `[-2, -1]`).
        num_words: vocabulary size per level (official 8192); a multiple of the global batch size.
        inv_delta: base inverse temperature of the soft assignment; the codes are `softmax(-inv_delta / mu * d)` with
            `mu` the running mean of the minimum squared distance to the vocabulary (official 15).
        min_distance_decay: decay of that running mean (official 0.99; it starts at 0.5).
        bow_pool: `"max"` (official) or `"avg"` pooling of the codes over locations.
        vocabulary_update: which local feature each image enqueues: `"local_average"` (official: 3x3 average pooled map,
            one uniformly drawn location), `"no_averaging"`, `"global_average"`.
        feature_border: locations dropped at each border of the teacher map before the BoW (official 1).
        kappa: scale of the generated prediction weights (official 8, not learned).
        teacher_momentum: EMA coefficient at the start, increased with a cosine schedule to 1.0 at the last step
            (official `alpha 0.99`, `alpha_cosine True`); `teacher_momentum_cosine=False` keeps it constant.
        sampling_seed: base seed of the vocabulary-update draws (identical on every process).
        augmentation: the `"obow"` view policy (teacher view at `image_size`, `num_crops` crops of `crop_size` with
            `crop_scale`, `num_patches` patches of `patch_size` with `patch_scale`; official 2x160 + 5x96).
    """

    model_type = "hf_ssl_obow"
    paper_title = "OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised Learning"
    paper_url = "https://arxiv.org/abs/2012.11552"
    citation = (
        "@inproceedings{gidaris2021obow,\n"
        "  title={OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised Learning},\n"
        "  author={Gidaris, Spyros and Bursuc, Andrei and Puy, Gilles and Komodakis, Nikos and Cord, Matthieu"
        " and P{\\'e}rez, Patrick},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n"
        "  pages={6830--6840},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = "resnet-50"
    default_augmentation = {
        "policy": "obow",
        "num_crops": 2,
        "crop_size": 160,
        "crop_scale": [0.08, 0.6],
        "num_patches": 5,
        "patch_size": 96,
        "patch_scale": [0.084, 0.14],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 224,
        bow_levels: Sequence[int] = (-2, -1),
        num_words: int = 8192,
        inv_delta: float = 15.0,
        min_distance_decay: float = 0.99,
        bow_pool: str = "max",
        vocabulary_update: str = "local_average",
        feature_border: int = 1,
        kappa: float = 8.0,
        teacher_momentum: float = 0.99,
        teacher_momentum_cosine: bool = True,
        sampling_seed: int = 0,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.bow_levels = [int(v) for v in bow_levels] if bow_levels is not None else None
        self.num_words = num_words
        self.inv_delta = inv_delta
        self.min_distance_decay = min_distance_decay
        self.bow_pool = bow_pool
        self.vocabulary_update = vocabulary_update
        self.feature_border = feature_border
        self.kappa = kappa
        self.teacher_momentum = teacher_momentum
        self.teacher_momentum_cosine = teacher_momentum_cosine
        self.sampling_seed = sampling_seed
        augmentation = copy.deepcopy(dict(augmentation or {}))
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def level_channels(self):
        sizes = list(self.backbone_config.hidden_sizes)
        return [sizes[level] for level in self.bow_levels]

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "convnet" or not hasattr(self.backbone_config, "hidden_sizes"):
            raise ValueError("OBoW needs a ConvNet backbone with stage feature maps (ResNet, RegNet, ConvNeXt...); got "
                             f"{self.backbone_config.model_type!r}")
        n = len(self.backbone_config.hidden_sizes)
        if not self.bow_levels or any(not -n <= lv < n for lv in self.bow_levels):
            raise ValueError(f"bow_levels must be a non-empty list of stage indices in [-{n}, {n}), got {self.bow_levels}")
        if len({lv % n for lv in self.bow_levels}) != len(self.bow_levels):
            raise ValueError(f"bow_levels has duplicates: {self.bow_levels}")
        if not isinstance(self.num_words, int) or self.num_words <= 0:
            raise ValueError(f"num_words must be a positive integer, got {self.num_words!r}")
        self._check_positive(inv_delta=self.inv_delta, kappa=self.kappa)
        self._check_range("min_distance_decay", self.min_distance_decay, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        if self.bow_pool not in ("max", "avg"):
            raise ValueError(f"bow_pool must be 'max' or 'avg', got {self.bow_pool!r}")
        if self.vocabulary_update not in ("local_average", "no_averaging", "global_average"):
            raise ValueError("vocabulary_update must be 'local_average', 'no_averaging' or 'global_average', got "
                             f"{self.vocabulary_update!r}")
        if self.feature_border < 0:
            raise ValueError(f"feature_border must be >= 0, got {self.feature_border}")
        a = self.augmentation
        if int(a.get("num_crops", 2)) + int(a.get("num_patches", 5)) < 1:
            raise ValueError("the obow view policy needs at least one student crop or patch")
        for key in ("crop_scale", "patch_scale"):
            if key in a:
                lo, hi = a[key]
                if not 0 < lo <= hi <= 1:
                    raise ValueError(f"augmentation[{key!r}] must satisfy 0 < low <= high <= 1, got {a[key]}")


__all__ = ["OBoWConfig"]
