"""MoCHi configuration (Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020)."""

from __future__ import annotations

from typing import Optional

from ..base import SSLConfig


class MoCHiConfig(SSLConfig):
    r"""Configuration of :class:`MoCHiForSelfSupervisedPretraining`.

    Defaults are MoCo v2 (Chen et al. 2020, `facebookresearch/moco`: `--mlp --moco-t 0.2 --aug-plus --cos`,
    queue 65536, momentum 0.999, 128-d output) plus the paper's ImageNet-1k MoCHi setting (N, s, s') =
    (1024, 512, 256).

    Args:
        backbone_config: the encoder (default `"resnet-50"`, as in the paper).
        projection_hidden_dim: hidden width of the 2-layer MLP head (Linear-ReLU-Linear, no BatchNorm, MoCo v2
            `--mlp`); `None` = the encoder's feature width (2048 for ResNet-50, as in MoCo v2).
        projection_dim: output (key/query) dimension (MoCo: 128).
        queue_size: number of keys in the negative queue (MoCo: K = 65536). Must be divisible by the global batch
            size (MoCo asserts this); a smaller last batch of a finite stream wraps around the queue.
        contrastive_temperature: InfoNCE temperature (MoCo v2: 0.2).
        teacher_momentum: EMA momentum of the key encoder and key head (MoCo: 0.999).
        num_hard_negatives: N, how many of the queue's most similar keys (per query) are mixed (paper: 1024).
        num_mixed_negatives: s, synthetic negatives mixed from pairs of hard negatives,
            `normalize(a * n_i + (1 - a) * n_j)`, `a ~ U(0, 1)` (paper IN-1k setting: 512).
        num_query_mixes: s', synthetic negatives mixing the query with a hard negative,
            `normalize(b * q + (1 - b) * n_j)`, `b ~ U(0, query_mix_max)` (paper IN-1k setting: 256; 0 disables).
        query_mix_max: upper bound of b (paper: 0.5, so the query's share is always smaller than the negative's).
        mixing_start_step: optimizer steps of plain MoCo v2 before mixing starts (the paper's warm-up; 10 epochs of
            ImageNet-1k at batch 256 = 50050 steps).
        shuffle_bn: MoCo's shuffling BatchNorm for the key encoder (keys are computed on a batch permuted across
            processes, then un-shuffled). Single process: a permutation within the batch.
        mixing_seed: seed of the generator that draws the mixing pairs/coefficients and the shuffle permutation
            (re-seeded per forward from this seed and a forward counter, so runs and resumes are reproducible).
    """

    model_type = "hf_ssl_mochi"
    paper_title = "Hard Negative Mixing for Contrastive Learning"
    paper_url = "https://arxiv.org/abs/2010.01028"
    citation = (
        "@inproceedings{kalantidis2020hard,\n"
        "  title={Hard Negative Mixing for Contrastive Learning},\n"
        "  author={Kalantidis, Yannis and Sariyildiz, Mert Bulent and Pion, Noe and Weinzaepfel, Philippe and"
        " Larlus, Diane},\n"
        "  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},\n"
        "  year={2020}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # MoCo v2 `--aug-plus`: RandomResizedCrop(scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
    # RandomGrayscale(0.2), GaussianBlur(sigma 0.1..2) p=0.5, horizontal flip
    default_augmentation = {
        "policy": "two_view",
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
        projection_hidden_dim: Optional[int] = None,
        projection_dim: int = 128,
        queue_size: int = 65536,
        contrastive_temperature: float = 0.2,
        teacher_momentum: float = 0.999,
        num_hard_negatives: int = 1024,
        num_mixed_negatives: int = 512,
        num_query_mixes: int = 256,
        query_mix_max: float = 0.5,
        mixing_start_step: int = 50050,
        shuffle_bn: bool = True,
        mixing_seed: int = 0,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.queue_size = queue_size
        self.contrastive_temperature = contrastive_temperature
        self.teacher_momentum = teacher_momentum
        self.num_hard_negatives = num_hard_negatives
        self.num_mixed_negatives = num_mixed_negatives
        self.num_query_mixes = num_query_mixes
        self.query_mix_max = query_mix_max
        self.mixing_start_step = mixing_start_step
        self.shuffle_bn = shuffle_bn
        self.mixing_seed = mixing_seed
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(projection_dim=self.projection_dim, queue_size=self.queue_size,
                             contrastive_temperature=self.contrastive_temperature)
        if self.projection_hidden_dim is not None:
            self._check_positive(projection_hidden_dim=self.projection_hidden_dim)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0)
        for name in ("num_hard_negatives", "num_mixed_negatives", "num_query_mixes", "mixing_start_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if (self.num_mixed_negatives or self.num_query_mixes) and self.num_hard_negatives < 1:
            raise ValueError("mixing (num_mixed_negatives/num_query_mixes > 0) needs num_hard_negatives >= 1")
        if self.num_hard_negatives > self.queue_size:
            raise ValueError(f"num_hard_negatives ({self.num_hard_negatives}) cannot exceed queue_size "
                             f"({self.queue_size}): hard negatives are the top-N keys of the queue")
        self._check_range("query_mix_max", self.query_mix_max, 0.0, 1.0, low_inclusive=False, high_inclusive=True)


__all__ = ["MoCHiConfig"]
