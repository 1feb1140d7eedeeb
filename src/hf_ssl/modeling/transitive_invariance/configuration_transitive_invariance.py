"""Transitive invariance configuration (Wang, He, Gupta, "Transitive Invariance for Self-supervised Visual
Representation Learning", ICCV 2017)."""

from __future__ import annotations

from ..base import SSLConfig


class TransitiveInvarianceConfig(SSLConfig):
    r"""Configuration of :class:`TransitiveInvarianceForSelfSupervisedPretraining`.

    Args:
        backbone_config: the image encoder applied to every tracked patch (default `"resnet-50"`; the paper's
            Triplet-Siamese network is VGG16, with ResNet-101 in some transfer experiments - neither is bundled as a
            preset, any stock image backbone works).
        image_size: side of the patches the encoder sees (paper: 227 / 224 px object patches).
        num_frames / sampling_rate: the track is followed over `num_frames` frames `sampling_rate` apart and its
            first and last patch form the intra-instance edge (paper: tracks over 30 frames, following Wang & Gupta
            2015; moving digits clips have 16 frames, so the default follows the whole clip).
        projection_hidden_dim / projection_dim: the fully connected embedding on the pooled backbone feature where
            the ranking loss is computed (widths ours: the paper puts the loss on VGG16's fc features).
        margin: margin M of the ranking loss `max(0, D(X, X+) - D(X, X-) + M)` with cosine distance
            `D = 1 - cos` (paper / Wang & Gupta 2015: M = 0.5).
        num_hard_negatives: the K hardest negatives (highest loss, i.e. smallest cosine distance) kept per
            positive pair out of the gathered batch (hard negative mining of Wang & Gupta 2015; K = 4 as we read it).
        hard_negative_start_step: optimizer steps during which every negative of the batch counts (the mean over
            all of them) before hard negative mining starts: hardest-negative triplets from a random initialisation
            collapse the embedding (loss stuck at the margin, as FaceNet observed); our choice, default 1000.
        instances_per_cluster: the inter-instance edges come from k-means over the (gathered) batch of first-patch
            embeddings with `k = ceil(N / instances_per_cluster)` clusters (at least 2): small, tight clusters like
            the paper's fine-grained clustering (our number).
        kmeans_iterations: Lloyd iterations of the spherical k-means (`losses.kmeans`).
        inter_start_step: optimizer steps trained with intra-instance edges only before the clustering edges are
            switched on (the paper clusters features of an already trained self-supervised network; here the
            network first learns from tracking alone, Wang & Gupta 2015, then clusters its own features; default
            1000 steps, our choice; 0 clusters from the first step).
        intra_weight / inter_weight / transitive_weight: weights of the three positive-pair types (paper: pairs of
            all types are mixed with equal importance).
        patch_scale: side of the square patch cut around the tracked box, as a multiple of the box's longer side.
        search_radius: tracker search window (pixels per tracked frame step) around the previous position.
        template_update: tracker template interpolation factor (0 = keep the first template).
        ink_threshold: the object to track is initialised as the bounding box of the pixels brighter than
            `ink_threshold * max` in the first frame (moving digits: the bright digit on a black canvas).
    """

    model_type = "hf_ssl_transitive_invariance"
    paper_title = "Transitive Invariance for Self-supervised Visual Representation Learning"
    paper_url = "https://arxiv.org/abs/1708.02901"
    citation = (
        "@inproceedings{wang2017transitive,\n"
        "  title={Transitive Invariance for Self-supervised Visual Representation Learning},\n"
        "  author={Wang, Xiaolong and He, Kaiming and Gupta, Abhinav},\n"
        "  booktitle={IEEE International Conference on Computer Vision (ICCV)},\n"
        "  year={2017}\n"
        "}"
    )
    default_backbone = "resnet-50"
    default_augmentation = {
        "policy": "transitive_invariance",
        "eval_policy": "transitive_invariance_eval",
        "crop_scale": [0.6, 1.0],
        "horizontal_flip": 0.0,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, image_size: int = 224, num_frames: int = 16, sampling_rate: int = 1,
                 projection_hidden_dim: int = 4096, projection_dim: int = 1024, margin: float = 0.5,
                 num_hard_negatives: int = 4, hard_negative_start_step: int = 1000,
                 instances_per_cluster: int = 4, kmeans_iterations: int = 10,
                 inter_start_step: int = 1000, intra_weight: float = 1.0, inter_weight: float = 1.0,
                 transitive_weight: float = 1.0, patch_scale: float = 1.25, search_radius: int = 6,
                 template_update: float = 0.1, ink_threshold: float = 0.35, **kwargs):
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.margin = margin
        self.num_hard_negatives = num_hard_negatives
        self.hard_negative_start_step = hard_negative_start_step
        self.instances_per_cluster = instances_per_cluster
        self.kmeans_iterations = kmeans_iterations
        self.inter_start_step = inter_start_step
        self.intra_weight = intra_weight
        self.inter_weight = inter_weight
        self.transitive_weight = transitive_weight
        self.patch_scale = patch_scale
        self.search_radius = search_radius
        self.template_update = template_update
        self.ink_threshold = ink_threshold
        super().__init__(backbone_config=backbone_config, image_size=image_size, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_integer(1, num_frames=self.num_frames, projection_hidden_dim=self.projection_hidden_dim,
                            projection_dim=self.projection_dim, num_hard_negatives=self.num_hard_negatives,
                            instances_per_cluster=self.instances_per_cluster, kmeans_iterations=self.kmeans_iterations,
                            sampling_rate=self.sampling_rate, search_radius=self.search_radius)
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (a track needs a first and a last patch), got {self.num_frames}")
        self._check_integer(0, inter_start_step=self.inter_start_step,
                            hard_negative_start_step=self.hard_negative_start_step)
        self._check_range("margin", self.margin, 0.0, 2.0, low_inclusive=False, high_inclusive=True)
        weights = (self.intra_weight, self.inter_weight, self.transitive_weight)
        if any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError("intra_weight, inter_weight and transitive_weight must be >= 0 and not all 0")
        self._check_range("patch_scale", self.patch_scale, 1.0, 4.0, high_inclusive=True)
        self._check_range("template_update", self.template_update, 0.0, 1.0)
        self._check_range("ink_threshold", self.ink_threshold, 0.0, 1.0, low_inclusive=False)


__all__ = ["TransitiveInvarianceConfig"]
