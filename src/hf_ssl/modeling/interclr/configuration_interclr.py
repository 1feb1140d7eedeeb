"""InterCLR configuration (Xie et al., "Delving into Inter-Image Invariance for Unsupervised Visual Representations")."""

from __future__ import annotations

from typing import Optional, Sequence

from ..base import SSLConfig


class InterCLRConfig(SSLConfig):
    r"""Configuration of :class:`InterCLRForSelfSupervisedPretraining` (MoCo-InterCLR).

    Defaults are the paper's ImageNet ResNet-50 MoCo-InterCLR recipe as in the official code (open-mmlab
    mmselfsup `InterCLRMoCo`, `InterCLRHook`, `configs/selfsup/interclr/interclr-moco_resnet50_8xb32-coslr-200e`):
    batch 256, MoCo v2 views and head, 10,000 online clusters, semi-hard negatives, inter-image cosine margin -0.5,
    loss weights 0.75 (intra) / 0.25 (inter).

    Args:
        backbone_config: the encoder (default preset `"resnet-50"`); any supported transformers backbone works.
        image_size: resolution of the two training views and of inference.
        projection_hidden_dim / projection_dim: the MoCo v2 neck Linear(D, 2048)-ReLU-Linear(2048, 128) (no BN),
            shared by the intra- and inter-image branches (official `share_neck=True`).
        contrastive_temperature: tau of both InfoNCE heads (official ContrastiveHead `temperature=0.2`).
        queue_length: MoCo negatives of the intra-image branch (official `queue_len=65536`).
        teacher_momentum: EMA coefficient of the key encoder + neck (official `momentum=0.999`).
        memory_bank_size: rows of the memory bank (official: the dataset length, 1,281,167 for ImageNet). Samples are
            stored at `sample_index % memory_bank_size`.
        memory_momentum: bank update `v <- normalize((1 - m) v + m k)` (official memory `momentum=0.5`).
        num_clusters: k of the online k-means over the bank (official `num_classes=10000`).
        kmeans_interval: optimizer steps between centroid updates (official `centroids_update_interval=10`).
        kmeans_iterations: Lloyd iterations of the initial k-means (official faiss `Kmeans`, 20 iterations).
        inter_start_step: optimizer step at which the bank is clustered for the first time and the inter-image branch
            starts. The official code clusters features of the whole dataset before training; a stream fills the bank
            during the first pass instead, so this should be about one epoch (default 5005 = ImageNet at batch 256).
        num_negatives: inter-image negatives per query (official `neg_num=16384`).
        semihard_rank_range: `[low, high)` similarity ranks (0 = most similar, after removing same-cluster and empty
            bank entries) from which negatives are drawn uniformly without replacement (official semi-hard sampling:
            the top `semihard_neg_pool_num=128000` neighbours, i.e. `[0, 128000)`).
        intra_margin / inter_margin: additive cosine margin on the positive logit, `cos - margin` (MarginNCE; official
            `intra_cos_margin=0` off, `inter_cos_margin=-0.5`).
        intra_loss_weight / inter_loss_weight: loss weights (official 0.75 / 0.25).
        sampling_seed: base seed of the positive/negative sampling (draws are a function of this seed and the
            number of training forwards, identical on every process).
    """

    model_type = "hf_ssl_interclr"
    paper_title = "Delving into Inter-Image Invariance for Unsupervised Visual Representations"
    paper_url = "https://arxiv.org/abs/2008.11702"
    citation = (
        "@article{xie2022delving,\n"
        "  title={Delving into Inter-Image Invariance for Unsupervised Visual Representations},\n"
        "  author={Xie, Jiahao and Zhan, Xiaohang and Liu, Ziwei and Ong, Yew-Soon and Loy, Chen Change},\n"
        "  journal={International Journal of Computer Vision},\n"
        "  volume={130},\n"
        "  pages={2994--3013},\n"
        "  year={2022}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # official train_pipeline (MoCo v2): RandomResizedCrop(224, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1)
    # p=0.8, grayscale p=0.2, Gaussian blur sigma U(0.1, 2) p=0.5, horizontal flip.
    default_augmentation = {
        "policy": "interclr",
        "crop_scale": [0.2, 1.0],
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
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        contrastive_temperature: float = 0.2,
        queue_length: int = 65536,
        teacher_momentum: float = 0.999,
        memory_bank_size: int = 1281167,
        memory_momentum: float = 0.5,
        num_clusters: int = 10000,
        kmeans_interval: int = 10,
        kmeans_iterations: int = 20,
        inter_start_step: int = 5005,
        num_negatives: int = 16384,
        semihard_rank_range: Sequence[int] = (0, 128000),
        intra_margin: float = 0.0,
        inter_margin: float = -0.5,
        intra_loss_weight: float = 0.75,
        inter_loss_weight: float = 0.25,
        sampling_seed: int = 0,
        feature_pooling: str = "cls",
        augmentation: Optional[dict] = None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.queue_length = queue_length
        self.teacher_momentum = teacher_momentum
        self.memory_bank_size = memory_bank_size
        self.memory_momentum = memory_momentum
        self.num_clusters = num_clusters
        self.kmeans_interval = kmeans_interval
        self.kmeans_iterations = kmeans_iterations
        self.inter_start_step = inter_start_step
        self.num_negatives = num_negatives
        self.semihard_rank_range = [int(v) for v in semihard_rank_range] if semihard_rank_range is not None else None
        self.intra_margin = intra_margin
        self.inter_margin = inter_margin
        self.intra_loss_weight = intra_loss_weight
        self.inter_loss_weight = inter_loss_weight
        self.sampling_seed = sampling_seed
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(contrastive_temperature=self.contrastive_temperature)
        for name in ("projection_hidden_dim", "projection_dim", "queue_length", "memory_bank_size", "num_clusters",
                     "kmeans_interval", "kmeans_iterations", "num_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("memory_momentum", self.memory_momentum, 0.0, 1.0, low_inclusive=False,
                          high_inclusive=True)
        if self.inter_start_step < 0:
            raise ValueError(f"inter_start_step must be >= 0, got {self.inter_start_step}")
        if self.num_clusters > self.memory_bank_size:
            raise ValueError(f"num_clusters ({self.num_clusters}) cannot exceed memory_bank_size "
                             f"({self.memory_bank_size})")
        rr = self.semihard_rank_range
        if rr is None or len(rr) != 2 or not 0 <= rr[0] < rr[1] or rr[1] > self.memory_bank_size:
            raise ValueError(f"semihard_rank_range must be [low, high) with 0 <= low < high <= memory_bank_size "
                             f"({self.memory_bank_size}), got {rr}")
        if self.num_negatives > rr[1] - rr[0]:
            raise ValueError(f"num_negatives ({self.num_negatives}) cannot exceed the semi-hard pool size "
                             f"semihard_rank_range[1] - semihard_rank_range[0] = {rr[1] - rr[0]}")
        for name in ("intra_margin", "inter_margin"):
            if not -2.0 < getattr(self, name) < 2.0:
                raise ValueError(f"{name} is a cosine margin and must lie in (-2, 2), got {getattr(self, name)}")
        for name in ("intra_loss_weight", "inter_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.intra_loss_weight + self.inter_loss_weight <= 0:
            raise ValueError("intra_loss_weight + inter_loss_weight must be > 0")


__all__ = ["InterCLRConfig"]
