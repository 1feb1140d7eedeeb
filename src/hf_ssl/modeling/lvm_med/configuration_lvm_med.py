"""LVM-Med configuration (Nguyen et al., "LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical
Imaging via Second-order Graph Matching", NeurIPS 2023)."""

from __future__ import annotations

from ..base import SSLConfig
from ..graph_matching import MATCHING_SOLVERS


class LVMMedConfig(SSLConfig):
    r"""Configuration of :class:`LVMMedForSelfSupervisedPretraining`.

    Args:
        backbone_config: the encoder (default `"resnet-50"`; the paper also trains ViT-B/16).
        projection_hidden_dim / projection_dim / projection_layers: the projector `h` on the pooled feature
            (Linear-BN-ReLU blocks, last Linear).
        projection_batch_norm: BatchNorm1d in the projector's hidden blocks.
        num_neighbors: k of the k-nearest-neighbour graphs built over each view's embeddings of the (global) batch.
        message_passing_layers: layers of the message-passing network `g` on each graph (0 = node features are
            the projector embeddings).
        local_affinity_weight: share of the vertex affinity that comes from local features (nearest-neighbour
            similarity of the two images' local feature vectors); the rest is the cosine similarity of the global
            node features. 0 disables the local branch.
        local_dim: width of the local projection (1x1 linear map of the encoder's last feature map).
        local_grid_size: the last feature map is average-pooled to at most this grid before the local similarity
            (bounds the O(N^2 L^2) cost).
        edge_affinity_weight: weight beta of the second-order (edge) term, divided by `num_neighbors` so the edge
            term has the scale of the vertex term (0 = first-order matching, a linear assignment).
        matching_solver: `"blackbox"` (hard quadratic-assignment solver with blackbox differentiation, the paper's
            choice) or `"sinkhorn"` (entropic graduated-assignment relaxation, differentiated by autograd).
        blackbox_lambda: interpolation strength of the blackbox gradient (Vlastelica et al.; BB-GM uses 80).
        matching_margin: subtracted from the identity (ground-truth) vertex affinities during training, so the
            loss stays active until the correct match wins by this margin (BB-GM's cost margin).
        solver_iterations: IPFP iterations of the hard solver.
        sinkhorn_temperature / sinkhorn_iterations / graduated_assignment_iterations: the relaxation's settings.
    """

    model_type = "hf_ssl_lvm_med"
    paper_title = ("LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical Imaging via Second-order "
                   "Graph Matching")
    paper_url = "https://arxiv.org/abs/2306.11925"
    citation = (
        "@inproceedings{nguyen2023lvmmed,\n"
        "  title={LVM-Med: Learning Large-Scale Self-Supervised Vision Models for Medical Imaging via Second-order "
        "Graph Matching},\n"
        "  author={Nguyen, Duy M. H. and Nguyen, Hoang and Diep, Nghiem T. and Pham, Tan N. and Cao, Tri and "
        "Nguyen, Binh T. and Swoboda, Paul and Ho, Nhat and Albarqouni, Shadi and Xie, Pengtao and Sonntag, Daniel "
        "and Niepert, Mathias},\n"
        "  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "resnet-50"
    # BYOL/VICReg-style two-view augmentation
    default_augmentation = {
        "policy": "two_view",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.2, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.5,
        "solarize": 0.1,
    }

    def __init__(
        self,
        backbone_config=None,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 256,
        projection_layers: int = 2,
        projection_batch_norm: bool = True,
        num_neighbors: int = 5,
        message_passing_layers: int = 1,
        local_affinity_weight: float = 0.5,
        local_dim: int = 128,
        local_grid_size: int = 4,
        edge_affinity_weight: float = 1.0,
        matching_solver: str = "blackbox",
        blackbox_lambda: float = 80.0,
        matching_margin: float = 0.0,
        solver_iterations: int = 10,
        sinkhorn_temperature: float = 0.05,
        sinkhorn_iterations: int = 20,
        graduated_assignment_iterations: int = 3,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.projection_layers = projection_layers
        self.projection_batch_norm = projection_batch_norm
        self.num_neighbors = num_neighbors
        self.message_passing_layers = message_passing_layers
        self.local_affinity_weight = local_affinity_weight
        self.local_dim = local_dim
        self.local_grid_size = local_grid_size
        self.edge_affinity_weight = edge_affinity_weight
        self.matching_solver = matching_solver
        self.blackbox_lambda = blackbox_lambda
        self.matching_margin = matching_margin
        self.solver_iterations = solver_iterations
        self.sinkhorn_temperature = sinkhorn_temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.graduated_assignment_iterations = graduated_assignment_iterations
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_integer(1, projection_hidden_dim=self.projection_hidden_dim, projection_dim=self.projection_dim,
                            projection_layers=self.projection_layers, num_neighbors=self.num_neighbors,
                            local_dim=self.local_dim, local_grid_size=self.local_grid_size,
                            sinkhorn_iterations=self.sinkhorn_iterations)
        self._check_integer(0, message_passing_layers=self.message_passing_layers,
                            solver_iterations=self.solver_iterations,
                            graduated_assignment_iterations=self.graduated_assignment_iterations)
        self._check_range("local_affinity_weight", self.local_affinity_weight, 0.0, 1.0, high_inclusive=True)
        self._check_non_negative(edge_affinity_weight=self.edge_affinity_weight, matching_margin=self.matching_margin)
        self._check_positive(blackbox_lambda=self.blackbox_lambda, sinkhorn_temperature=self.sinkhorn_temperature)
        if self.matching_solver not in MATCHING_SOLVERS:
            raise ValueError(f"matching_solver must be one of {MATCHING_SOLVERS}, got {self.matching_solver!r}")


__all__ = ["LVMMedConfig"]
