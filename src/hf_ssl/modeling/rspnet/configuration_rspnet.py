"""RSPNet configuration (Chen et al., "RSPNet: Relative Speed Perception for Unsupervised Video Representation
Learning", AAAI 2021)."""

from __future__ import annotations

from typing import Sequence

from ..video_base import VideoSSLConfig


class RSPNetConfig(VideoSSLConfig):
    r"""Configuration of :class:`RSPNetForSelfSupervisedPretraining`.

    Defaults follow the official code (PeihaoChen/RSPNet: `config/pretrain/moco-train-base.jsonnet`,
    `moco/builder_diffspeed_diffloss.py` `MoCoDiffLossTwoFc` + `Loss`, `moco/split_wrapper.py`, `pretrain.py`,
    `datasets/classification/__init__.py` `get_transform_vid`).

    Args:
        backbone_config: the video encoder, a stock VideoMAEModel (default `"videomae-small"`; the paper's 3-D
            ConvNets C3D / R3D-18 / R(2+1)D / S3D-G are not transformers models).
        num_frames: 16 frames per clip (official `temporal_transforms._size`).
        sampling_rate: 1 (consecutive frames at the normal speed; official `strides: [{stride: 1}]`).
        image_size: 112 (official `spatial_transforms.size`).
        speeds: the playback speed-ups a fast clip may use (official `diff_speed: [2]`; `[4, 2]` etc. draw one per clip).
        projection_dim: width of the two L2-normalised linear heads (A-VID and RSP; official `moco.dim` 128,
            `fc_type: 'linear'`: global average pool + linear).
        queue_size: MoCo queue of A-VID negatives (official `moco.k` 16384); must be divisible by the global batch.
        teacher_momentum: key-encoder EMA (official `moco.m` 0.999).
        contrastive_temperature: tau of both tasks (official `moco.t` 0.07).
        ranking_margin: margin of the RSP margin-ranking loss on similarities divided by tau (official
            `Loss(margin=2.0)`).
        avid_weight / rsp_weight: loss weights A and M (official `loss_lambda` 1 / 1).
        augmentation: `rspnet` policy: clip-consistent random crop of area 0.4-1 (`RawVideoRandomCrop`), resize to
            `image_size`, grayscale 0.2, colour jitter (0.4, 0.4, 0.4, 0.4) always applied, horizontal flip 0.5.
    """

    model_type = "hf_ssl_rspnet"
    paper_title = "RSPNet: Relative Speed Perception for Unsupervised Video Representation Learning"
    paper_url = "https://arxiv.org/abs/2011.07949"
    citation = (
        "@inproceedings{chen2021rspnet,\n"
        "  title={RSPNet: Relative Speed Perception for Unsupervised Video Representation Learning},\n"
        "  author={Chen, Peihao and Huang, Deng and He, Dongliang and Long, Xiang and Zeng, Runhao and Wen, Shilei "
        "and Tan, Mingkui and Gan, Chuang},\n"
        "  booktitle={AAAI Conference on Artificial Intelligence},\n"
        "  year={2021}\n"
        "}"
    )
    default_backbone = "videomae-small"
    default_augmentation = {
        "policy": "rspnet",
        "eval_policy": "video_eval",
        "crop": "resized",
        "crop_scale": [0.4, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 1.0,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.4],
        "grayscale": 0.2,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, num_frames: int = 16, sampling_rate: int = 1, image_size: int = 112,
                 speeds: Sequence[int] = (2,), projection_dim: int = 128, queue_size: int = 16384,
                 teacher_momentum: float = 0.999, contrastive_temperature: float = 0.07, ranking_margin: float = 2.0,
                 avid_weight: float = 1.0, rsp_weight: float = 1.0, **kwargs):
        self.speeds = [int(s) for s in speeds]
        self.projection_dim = projection_dim
        self.queue_size = queue_size
        self.teacher_momentum = teacher_momentum
        self.contrastive_temperature = contrastive_temperature
        self.ranking_margin = ranking_margin
        self.avid_weight = avid_weight
        self.rsp_weight = rsp_weight
        super().__init__(backbone_config=backbone_config, num_frames=num_frames, sampling_rate=sampling_rate,
                         image_size=image_size, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if not self.speeds or any(s < 2 for s in self.speeds):
            raise ValueError(f"speeds must list playback speed-ups >= 2 (the normal speed is 1), got {self.speeds}")
        for name in ("projection_dim", "queue_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self._check_positive(contrastive_temperature=self.contrastive_temperature)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_non_negative(ranking_margin=self.ranking_margin)
        if self.avid_weight < 0 or self.rsp_weight < 0 or self.avid_weight + self.rsp_weight == 0:
            raise ValueError("avid_weight and rsp_weight must be >= 0 and not both 0")


__all__ = ["RSPNetConfig"]
