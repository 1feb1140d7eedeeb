"""G-SimCLR configuration (Chakraborty et al., "G-SimCLR: Self-Supervised Contrastive Learning with Guided
Projection via Pseudo Labelling", ICDM Workshops 2020)."""

from __future__ import annotations

from ..base import SSLConfig

PSEUDO_LABEL_SOURCES = ("encoder", "provided")


class GSimCLRConfig(SSLConfig):
    r"""Configuration of :class:`GSimCLRForSelfSupervisedPretraining`.

    Defaults follow the official TensorFlow code (`ariG23498/G-SimCLR`, ImageNet-subset notebooks): ResNet-50,
    projection head Dense(256)-ReLU-Dense(128)-ReLU-Dense(50), NT-Xent with temperature 0.1, k-means with as many
    clusters as the batch size (64).

    Args:
        backbone_config: the encoder (default `"resnet-50"`, the official ImageNet-subset backbone).
        projection_hidden_dims: widths of the hidden layers of the projection MLP (official: [256, 128]).
        projection_dim: output dimension of the projection MLP (official: 50).
        contrastive_temperature: NT-Xent temperature (official: 0.1).
        num_clusters: k of the k-means that produces the pseudo-labels (official: 64 = the batch size).
        pseudo_label_source: `"encoder"` (default): k-means over a FIFO bank of the current encoder's
            (L2-normalized, detached, all-gathered) pooled features, recomputed every `pseudo_label_interval` optimizer
            steps; each batch image gets the label of its nearest centroid. `"provided"`: the batch carries
            `pseudo_labels` `[B]` (e.g. k-means of a denoising autoencoder's latents, the paper's recipe, computed
            offline); negative values mean "no label".
        pseudo_label_interval: optimizer steps between k-means runs (`"encoder"` source); the first run happens at
            the first multiple of it at which the bank holds at least `num_clusters` features.
        feature_bank_size: entries of the feature bank (`"encoder"` source; the official code clusters the whole
            training set, e.g. 50000 CIFAR-10 images).
        kmeans_iterations: Lloyd iterations per k-means run (k-means++ initialisation).
        kmeans_seed: seed of the k-means initialisation (deterministic, identical on every process).
    """

    model_type = "hf_ssl_gsimclr"
    paper_title = "G-SimCLR: Self-Supervised Contrastive Learning with Guided Projection via Pseudo Labelling"
    paper_url = "https://arxiv.org/abs/2009.12007"
    citation = (
        "@inproceedings{chakraborty2020gsimclr,\n"
        "  title={G-SimCLR: Self-Supervised Contrastive Learning with Guided Projection via Pseudo Labelling},\n"
        "  author={Chakraborty, Souradip and Gosthipaty, Aritra Roy and Paul, Sayak},\n"
        "  booktitle={2020 International Conference on Data Mining Workshops (ICDMW)},\n"
        "  pages={912--916},\n"
        "  year={2020}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # official ImageNet-subset CustomAugment: flip 0.5, colour jitter p=0.8 with s=1 (brightness/contrast/
    # saturation 0.8, hue 0.2), colour drop p=0.2; images are only resized (no random crop)
    default_augmentation = {
        "policy": "two_view",
        "crop_scale": [1.0, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.8, 0.8, 0.8, 0.2],
        "grayscale": 0.2,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        projection_hidden_dims=(256, 128),
        projection_dim: int = 50,
        contrastive_temperature: float = 0.1,
        num_clusters: int = 64,
        pseudo_label_source: str = "encoder",
        pseudo_label_interval: int = 1000,
        feature_bank_size: int = 50000,
        kmeans_iterations: int = 20,
        kmeans_seed: int = 0,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.projection_hidden_dims = [int(h) for h in projection_hidden_dims] if projection_hidden_dims else []
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.num_clusters = num_clusters
        self.pseudo_label_source = pseudo_label_source
        self.pseudo_label_interval = pseudo_label_interval
        self.feature_bank_size = feature_bank_size
        self.kmeans_iterations = kmeans_iterations
        self.kmeans_seed = kmeans_seed
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if any(h <= 0 for h in self.projection_hidden_dims):
            raise ValueError(f"projection_hidden_dims must be positive, got {self.projection_hidden_dims}")
        self._check_positive(projection_dim=self.projection_dim,
                             contrastive_temperature=self.contrastive_temperature)
        if self.pseudo_label_source not in PSEUDO_LABEL_SOURCES:
            raise ValueError(f"pseudo_label_source must be one of {PSEUDO_LABEL_SOURCES}, "
                             f"got {self.pseudo_label_source!r}")
        for name in ("num_clusters", "pseudo_label_interval", "feature_bank_size", "kmeans_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if self.feature_bank_size < self.num_clusters:
            raise ValueError(f"feature_bank_size ({self.feature_bank_size}) must be >= num_clusters "
                             f"({self.num_clusters})")


__all__ = ["GSimCLRConfig"]
