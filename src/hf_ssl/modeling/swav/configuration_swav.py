"""SwAV configuration (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments")."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

from ..backbones import backbone_family
from ..base import SSLConfig


class SwAVConfig(SSLConfig):
    r"""Configuration of :class:`SwAVForSelfSupervisedPretraining`.

    Defaults are the paper's ResNet-50 ImageNet recipe as run by the official code (`facebookresearch/swav`,
    `main_swav.py` + `scripts/swav_800ep_pretrain.sh`: batch 4096, 2x224 + 6x96 crops, no queue).

    Args:
        backbone_config: the encoder (default preset `"resnet-50"`); any supported transformers backbone works
            (ResNet, RegNet, ViT, ...). ViT position embeddings are interpolated for the local crops.
        image_size: resolution of the global crops (and of inference). The multi-crop policy takes its global crops
            at `image_size`; `augmentation["global_size"]` is set to it and must agree with it.
        num_prototypes: K, the number of prototypes (official `--nmb_prototypes 3000`).
        projection_hidden_dim: width of the projection MLP's hidden layer(s) (official `--hidden_mlp 2048`).
        projection_dim: output width of the projection head = prototype dimension (official `--feat_dim 128`).
        projection_num_layers: linear layers in the projection head (official 2: Linear-BN-ReLU-Linear; SEER 3).
        projection_batch_norm: BatchNorm1d after each hidden linear layer (official True; SEER False).
        swav_temperature: tau of the swapped-prediction softmax (official `--temperature 0.1`). (Named
            `swav_temperature` because transformers 5 reserves `temperature` on configs.)
        sinkhorn_epsilon: entropic regularisation of the Sinkhorn-Knopp assignments (official `--epsilon 0.05`;
            the official README suggests 0.03 if training collapses).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (official `--sinkhorn_iterations 3`).
        crops_for_assign: indices of the crops whose codes are computed (official `--crops_for_assign 0 1`). Each
            must be a global crop (index < `augmentation["num_global"]`).
        freeze_prototypes_steps: the prototypes receive no gradient during this many optimizer steps from the
            start (official `--freeze_prototypes_niters 313`; 5005 in the batch-256 recipes).
        queue_length: number of past embeddings (over all processes) kept per assigned crop and prepended to the
            batch when computing the codes; 0 disables the queue (official default 0; `3840` in the batch-256
            recipes). Must be a multiple of the global batch size (per-device batch x world size; checked at run
            time, use `dataloader_drop_last=True`).
        queue_start_step: the queue starts filling at this optimizer step and is used once full (official
            `--epoch_queue_starts 15`, in epochs: 15 x steps-per-epoch).
        feature_pooling: ViT pooling for `get_image_features` (`"cls"` default, or `"mean"`); ConvNets use their
            global average pool.
        augmentation: the multi-crop view policy (see `default_augmentation`); keys given here override it.
    """

    model_type = "hf_ssl_swav"
    paper_title = "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    paper_url = "https://arxiv.org/abs/2006.09882"
    citation = (
        "@inproceedings{caron2020unsupervised,\n"
        "  title={Unsupervised Learning of Visual Features by Contrasting Cluster Assignments},\n"
        "  author={Caron, Mathilde and Misra, Ishan and Mairal, Julien and Goyal, Priya and Bojanowski, Piotr"
        " and Joulin, Armand},\n"
        "  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},\n"
        "  volume={33},\n"
        "  pages={9912--9924},\n"
        "  year={2020}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # official src/multicropdataset.py with --nmb_crops 2 6 --size_crops 224 96 --min_scale_crops 0.14 0.05
    # --max_scale_crops 1. 0.14: RandomResizedCrop, flip 0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) with p=0.8,
    # grayscale p=0.2, PIL Gaussian blur p=0.5 radius U(0.1, 2.0); no solarization.
    default_augmentation = {
        "policy": "multi_crop",
        "num_global": 2,
        "num_local": 6,
        "global_size": 224,  # follows config.image_size (the policy crops global views at image_size)
        "local_size": 96,
        "global_scale": [0.14, 1.0],
        "local_scale": [0.05, 0.14],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.8, 0.8, 0.8, 0.2],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 224,
        num_prototypes: int = 3000,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        projection_num_layers: int = 2,
        projection_batch_norm: bool = True,
        swav_temperature: float = 0.1,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
        freeze_prototypes_steps: int = 313,
        queue_length: int = 0,
        queue_start_step: int = 0,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.num_prototypes = num_prototypes
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.projection_num_layers = projection_num_layers
        self.projection_batch_norm = projection_batch_norm
        self.swav_temperature = swav_temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        if isinstance(crops_for_assign, int):
            crops_for_assign = [crops_for_assign]
        self.crops_for_assign = [int(c) for c in crops_for_assign] if crops_for_assign is not None else None
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queue_length = queue_length
        self.queue_start_step = queue_start_step
        augmentation = copy.deepcopy(dict(augmentation or {}))
        augmentation.setdefault("global_size", image_size)
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)
        if "crop_scale" not in augmentation:  # the two-view default scale; multi-crop uses global/local_scale
            self.augmentation.pop("crop_scale", None)

    # -- derived ------------------------------------------------------------------------------------
    @property
    def num_global_crops(self) -> int:
        return int(self.augmentation.get("num_global", 2))

    @property
    def num_local_crops(self) -> int:
        return int(self.augmentation.get("num_local", 0))

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(swav_temperature=self.swav_temperature, sinkhorn_epsilon=self.sinkhorn_epsilon)
        for name in ("num_prototypes", "projection_hidden_dim", "projection_dim", "projection_num_layers",
                     "sinkhorn_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("freeze_prototypes_steps", "queue_length", "queue_start_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        num_global, num_local = self.num_global_crops, self.num_local_crops
        if num_global < 1 or num_local < 0:
            raise ValueError(f"augmentation needs num_global >= 1 and num_local >= 0, got {num_global}, {num_local}")
        if num_global + num_local < 2:
            raise ValueError("SwAV's swapped prediction needs at least 2 crops (num_global + num_local >= 2)")
        if not self.crops_for_assign:
            raise ValueError("crops_for_assign must list at least one crop index")
        if len(set(self.crops_for_assign)) != len(self.crops_for_assign):
            raise ValueError(f"crops_for_assign has duplicates: {self.crops_for_assign}")
        for c in self.crops_for_assign:
            if not 0 <= c < num_global:
                raise ValueError(
                    f"crops_for_assign index {c} is out of range: codes are computed on global crops, "
                    f"indices 0..{num_global - 1} (augmentation['num_global'] = {num_global})"
                )
        global_size = self.augmentation.get("global_size", self.image_size)
        if int(global_size) != int(self.image_size):
            raise ValueError(
                f"augmentation['global_size'] ({global_size}) must equal image_size ({self.image_size}): global crops "
                "are taken at image_size. Set image_size instead."
            )
        local_size = int(self.augmentation.get("local_size", 96))
        if num_local and local_size <= 0:
            raise ValueError(f"augmentation['local_size'] must be positive, got {local_size}")
        for key in ("global_scale", "local_scale"):
            scale = self.augmentation.get(key)
            if scale is not None:
                lo, hi = float(scale[0]), float(scale[1])
                if not 0.0 < lo <= hi <= 1.0:
                    raise ValueError(f"augmentation['{key}'] must satisfy 0 < min <= max <= 1, got {list(scale)}")
        if num_local and backbone_family(self.backbone_config) == "vit":
            patch = self.backbone_config.patch_size
            if local_size % patch:
                raise ValueError(f"augmentation['local_size'] {local_size} must be divisible by the ViT patch size "
                                 f"{patch}")


__all__ = ["SwAVConfig"]
