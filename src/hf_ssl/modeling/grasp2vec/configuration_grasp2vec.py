"""Grasp2Vec configuration (Jang, Devin, Vanhoucke, Levine, "Grasp2Vec: Learning Object Representations from
Self-Supervised Grasping", CoRL 2018)."""

from __future__ import annotations

import copy
from typing import Optional

from transformers import AutoConfig

from ..backbones import backbone_family, resolve_backbone_config
from ..base import SSLConfig

# official `get_resnet50_spatial`: ResNet-50 with the last block group cut off (block sizes [3, 4, 6], strides
# [1, 2, 2]) -> a 1024-channel feature map at stride 16, then ReLU and a spatial mean
RESNET50_CUT = dict(model_type="resnet", layer_type="bottleneck", depths=[3, 4, 6], hidden_sizes=[256, 512, 1024])


class Grasp2VecConfig(SSLConfig):
    r"""Configuration of :class:`Grasp2VecForSelfSupervisedPretraining`.

    Args:
        backbone_config: the outcome / object encoder phi_o (the exported `encoder`); default the official ResNet-50
            cut after its third block group (1024 channels, stride 16).
        scene_backbone_config: the scene encoder phi_s (same architecture, separate weights, by default).
        image_size: side of the outcome (object) image (official crop 472 of 512 x 640 frames).
        scene_size: side of the pre-/post-grasp scene images (official 472).
        npairs_reg_lambda: L2 penalty of the n-pairs loss on the embedding norms (TF `npairs_loss` default 0.002:
            `0.25 * lambda * (mean ||a||^2 + mean ||p||^2)`).
        non_negativity_constraint: pass phi_s(pre) - phi_s(post) through a ReLU (official option, default off).
        gather_negatives: score against the positives of every process (DDP), equal to one process on the global
            batch; False keeps per-process negatives (the official single-worker loss).
        augmentation: the `"simulated_grasp"` view policy (see `views_grasp2vec.py`): `objects_per_scene`
            ([min, max] objects in the pre-grasp scene, the grasped one included), `object_scale` ([min, max]
            object side as a fraction of the scene side), `object_buffer_size` (recent images the other objects
            are drawn from), `background_noise` (std of the bin texture, in [0, 1] intensity), `crop_scale` of the
            outcome view, `horizontal_flip` / `vertical_flip` probabilities (official: both 0.5, each image
            independently).
    """

    model_type = "hf_ssl_grasp2vec"
    sub_configs = {"backbone_config": AutoConfig, "scene_backbone_config": AutoConfig}
    paper_title = "Grasp2Vec: Learning Object Representations from Self-Supervised Grasping"
    paper_url = "https://arxiv.org/abs/1811.06964"
    citation = (
        "@inproceedings{jang2018grasp2vec,\n"
        "  title={Grasp2Vec: Learning Object Representations from Self-Supervised Grasping},\n"
        "  author={Jang, Eric and Devin, Coline and Vanhoucke, Vincent and Levine, Sergey},\n"
        "  booktitle={Conference on Robot Learning (CoRL)},\n"
        "  year={2018}\n"
        "}"
    )
    default_backbone = RESNET50_CUT
    default_augmentation = {
        "policy": "simulated_grasp",
        "objects_per_scene": [2, 5],
        "object_scale": [0.25, 0.4],
        "object_buffer_size": 64,
        "background_noise": 0.05,
        "crop_scale": [0.8, 1.0],
        "horizontal_flip": 0.5,
        "vertical_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        scene_backbone_config=None,
        image_size: int = 472,
        scene_size: int = 472,
        npairs_reg_lambda: float = 0.002,
        non_negativity_constraint: bool = False,
        gather_negatives: bool = True,
        feature_pooling: str = "mean",
        **kwargs,
    ):
        self.scene_size = scene_size
        self.npairs_reg_lambda = npairs_reg_lambda
        self.non_negativity_constraint = non_negativity_constraint
        self.gather_negatives = gather_negatives
        num_channels = kwargs.get("num_channels", 3)
        if scene_backbone_config is None:
            # same architecture as phi_o (resolved the same way), separate weights
            src = backbone_config if backbone_config is not None else self.default_backbone
            src = src.to_dict() if hasattr(src, "to_dict") else copy.deepcopy(src)
            scene_backbone_config = src
        self.scene_backbone_config = resolve_backbone_config(scene_backbone_config, self.default_backbone,
                                                             image_size=scene_size, num_channels=num_channels)
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(scene_size=self.scene_size)
        self._check_non_negative(npairs_reg_lambda=self.npairs_reg_lambda)
        for name, cfg in (("backbone_config", self.backbone_config), ("scene_backbone_config",
                                                                      self.scene_backbone_config)):
            if backbone_family(cfg) not in ("convnet", "vit", "swin"):
                raise ValueError(f"{name} must be an image backbone with a spatial feature map, got {cfg.model_type}")
        if getattr(self.scene_backbone_config, "num_channels", self.num_channels) != self.num_channels:
            raise ValueError(f"num_channels={self.num_channels} but scene_backbone_config.num_channels="
                             f"{self.scene_backbone_config.num_channels}; they must match.")
        a = self.augmentation
        lo, hi = a.get("objects_per_scene", [2, 5])
        if not 1 <= lo <= hi:
            raise ValueError(f"augmentation['objects_per_scene'] must be [min, max] with 1 <= min <= max, got {[lo, hi]}")
        slo, shi = a.get("object_scale", [0.25, 0.4])
        if not 0 < slo <= shi <= 1:
            raise ValueError(f"augmentation['object_scale'] must be [min, max] in (0, 1], got {[slo, shi]}")
        if int(a.get("object_buffer_size", 64)) < 1:
            raise ValueError("augmentation['object_buffer_size'] must be >= 1")
        if float(a.get("background_noise", 0.0)) < 0:
            raise ValueError("augmentation['background_noise'] must be >= 0")
        for key in ("horizontal_flip", "vertical_flip"):
            self._check_range(f"augmentation['{key}']", float(a.get(key, 0.0)), 0.0, 1.0, high_inclusive=True)


__all__ = ["Grasp2VecConfig", "RESNET50_CUT"]
