"""SMTC configuration (Qian et al., "Semantics Meets Temporal Correspondence: Self-supervised Object-centric Learning
in Videos", ICCV 2023)."""

from __future__ import annotations

from ..backbones import backbone_family
from ..base import SSLConfig


class SMTCConfig(SSLConfig):
    r"""Configuration of :class:`SMTCForSelfSupervisedPretraining`.

    Defaults follow the official code (shvdiwnkozbw/SMTC: `start_twostage.sh`, `src/train.py`,
    `src/model/model_twostage.py`, `src/utils.py` `Augment_GPU_pre`).

    Args:
        backbone_config: the per-frame image encoder, a stock ViTModel (default `"vit-small"`, patch 16: the paper's
            DINO ViT-S/16).
        image_size: frame resolution (official `args.resolution = (256, 256)`; whole frames are resized, no crop).
        num_frames: frames per training clip (official `--num_frames 4`).
        sampling_rate: frame stride (official `--gap 4`).
        num_slots: semantic slots = learnable Gaussians (official `--num_slots 16`).
        num_instances: instance slots sampled per semantic Gaussian (official `--num_instances 4`).
        slot_iterations: iterations of each slot-attention stage (official `--num_iterations 3`).
        slot_mlp_hidden_dim: hidden width of the slot-update MLP (official `max(encoder_dim, hidden)` = encoder width;
            None = the encoder width).
        teacher_momentum: EMA of the teacher (official 0.999, every step).
        ema_teacher_encoder: whether the teacher's ENCODER follows the EMA too. Official: no (the teacher encoder stays
            the pretrained DINO weights it was copied from); we start from scratch, so the default is True.
        diversity_weight: weight of the slot-mask diversity term (official `--entro_cons`, `ent_scale` 1.0).
        consistency_weight: weight of the semantic temporal-consistency (optimal-transport) term (official
            `--bi_cons`, `cons_scale` 1.0).
        instance_weight: weight of the instance temporal-consistency term (official 1.0).
        sinkhorn_epsilon / sinkhorn_iterations: entropic OT between the frames' tokens (official 0.05 / 3).
        semantic_mask_threshold: a pixel belongs to a semantic area when its slot probability exceeds it (official
            0.3); used by the instance stage's masked aggregation and by the validity filter.
        valid_area_threshold: an instance is valid when its semantic area covers more than this fraction of the
            frame (official 0.2).
        valid_similarity_threshold: ... and its slot's cosine similarity to the semantic slot exceeds this (0.5).
        negative_margin: negatives of the instance loss are penalised above this cosine similarity (official 0.5).
        augmentation: `smtc` policy (official `Augment_GPU_pre`, the same draw on every frame of a clip, drawn twice:
            one view for the student, one for the teacher): grayscale 0.2, colour jitter (0.4, 0.4, 0.4, 0.1) with
            probability 0.8, Gaussian blur 0.5; no crop and no flip, so both views stay pixel-aligned.
    """

    model_type = "hf_ssl_smtc"
    paper_title = "Semantics Meets Temporal Correspondence: Self-supervised Object-centric Learning in Videos"
    paper_url = "https://arxiv.org/abs/2308.09951"
    citation = (
        "@inproceedings{qian2023smtc,\n"
        "  title={Semantics Meets Temporal Correspondence: Self-supervised Object-centric Learning in Videos},\n"
        "  author={Qian, Rui and Ding, Shuangrui and Liu, Xian and Lin, Dahua},\n"
        "  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "vit-small"
    default_augmentation = {
        "policy": "smtc",
        "eval_policy": "video_eval",
        "crop": "none",
        "horizontal_flip": 0.0,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, image_size: int = 256, num_frames: int = 4, sampling_rate: int = 4,
                 num_slots: int = 16, num_instances: int = 4, slot_iterations: int = 3, slot_mlp_hidden_dim=None,
                 teacher_momentum: float = 0.999, ema_teacher_encoder: bool = True, diversity_weight: float = 1.0,
                 consistency_weight: float = 1.0, instance_weight: float = 1.0, sinkhorn_epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, semantic_mask_threshold: float = 0.3,
                 valid_area_threshold: float = 0.2, valid_similarity_threshold: float = 0.5,
                 negative_margin: float = 0.5, **kwargs):
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.num_slots = num_slots
        self.num_instances = num_instances
        self.slot_iterations = slot_iterations
        self.slot_mlp_hidden_dim = slot_mlp_hidden_dim
        self.teacher_momentum = teacher_momentum
        self.ema_teacher_encoder = ema_teacher_encoder
        self.diversity_weight = diversity_weight
        self.consistency_weight = consistency_weight
        self.instance_weight = instance_weight
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.semantic_mask_threshold = semantic_mask_threshold
        self.valid_area_threshold = valid_area_threshold
        self.valid_similarity_threshold = valid_similarity_threshold
        self.negative_margin = negative_margin
        super().__init__(backbone_config=backbone_config, image_size=image_size, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(f"SMTC encodes every frame with a ViT (DINO ViT-S/16 in the paper); got model_type "
                             f"{self.backbone_config.model_type!r}")
        self._check_integer(1, num_frames=self.num_frames, sampling_rate=self.sampling_rate, num_slots=self.num_slots,
                            num_instances=self.num_instances, slot_iterations=self.slot_iterations,
                            sinkhorn_iterations=self.sinkhorn_iterations)
        if self.num_frames < 2:
            raise ValueError("SMTC's temporal correspondence needs num_frames >= 2")
        if self.num_slots < 2:
            raise ValueError("num_slots must be >= 2 (the diversity term compares slot masks)")
        if self.num_instances < 2:
            raise ValueError("num_instances must be >= 2 (the instance loss needs negatives)")
        if self.slot_iterations < 2:
            raise ValueError("slot_iterations must be >= 2 (gradients flow through the last iteration only)")
        if self.slot_mlp_hidden_dim is not None and (not isinstance(self.slot_mlp_hidden_dim, int)
                                                     or self.slot_mlp_hidden_dim < 1):
            raise ValueError(f"slot_mlp_hidden_dim must be None or an integer >= 1, got {self.slot_mlp_hidden_dim!r}")
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_positive(sinkhorn_epsilon=self.sinkhorn_epsilon)
        self._check_non_negative(diversity_weight=self.diversity_weight, consistency_weight=self.consistency_weight,
                                 instance_weight=self.instance_weight)
        if self.diversity_weight + self.consistency_weight + self.instance_weight == 0:
            raise ValueError("at least one of diversity_weight, consistency_weight, instance_weight must be > 0")
        for name in ("semantic_mask_threshold", "valid_area_threshold"):
            self._check_range(name, getattr(self, name), 0.0, 1.0)
        self._check_range("valid_similarity_threshold", self.valid_similarity_threshold, -1.0, 1.0)
        self._check_range("negative_margin", self.negative_margin, -1.0, 1.0)


__all__ = ["SMTCConfig"]
