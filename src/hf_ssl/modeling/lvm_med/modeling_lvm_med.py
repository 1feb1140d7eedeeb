"""LVM-Med model: self-supervised learning as second-order graph matching between the two views of a batch.

One training step (B images per process, N = B x processes):

    h_v, F_v = encoder(view_v)                       pooled feature [B, D] and last feature map, v in {s, t}
    z_v = projector(h_v)                             [B, d]
    l_v = normalize(local_projector(pool(F_v)))      local features [B, L, d_l]
    gather z_v, l_v over processes (with gradient)   -> N nodes per graph
    A_v = kNN(z_v) (k neighbours, symmetric, no gradient)              graph structure
    u_v = g(z_v, A_v), n_v = normalize(u_v)          message passing network on each graph
    P = n_s n_t^T                                    global node affinity [N, N]
    S = (1 - w) P + w Local(l_s, l_t)                vertex affinity; Local_ij = symmetric mean of nearest-neighbour
                                                     cosine similarities between the local features of i and j
    X = GM(S - margin I, P; A_s, A_t, beta / k)      hard QAP matching (vertex S + edge <n_i - n_k, n_j - n_l>)
                                                     with blackbox gradients, or its Sinkhorn relaxation
    loss = Hamming(X, I)                             the two views of image i must be matched
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import backbone_family, encode, feature_dim
from ..base import SSLPreTrainedModel
from ..graph_matching import blackbox_graph_matching, graduated_assignment, hamming_loss, knn_adjacency
from ..heads import MLPHead
from ..losses import all_gather, is_distributed
from ..outputs import SSLOutput
from .configuration_lvm_med import LVMMedConfig


class GraphMessagePassing(nn.Module):
    """`layers` rounds of `u <- W_self u + W_nbr mean_{j ~ i} u_j` (ReLU between rounds, not after the last), on a
    0/1 adjacency. Nodes without neighbours only keep their own term."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.self_maps = nn.ModuleList([nn.Linear(dim, dim) for _ in range(layers)])
        self.neighbor_maps = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in range(layers)])

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        degree = adjacency.sum(dim=1, keepdim=True).clamp_min(1)
        agg = adjacency / degree
        for i, (s, n) in enumerate(zip(self.self_maps, self.neighbor_maps)):
            x = s(x) + n(agg.to(x.dtype) @ x)
            if i < len(self.self_maps) - 1:
                x = F.relu(x)
        return x


def local_similarity(local_s: torch.Tensor, local_t: torch.Tensor) -> torch.Tensor:
    """`[N, N]` local affinity of L2-normalized local features `local_s [N, L, d]`, `local_t [N, M, d]`: for the pair
    (i, j), the mean over i's locations of the best cosine similarity among j's locations, averaged with the same
    from j to i."""
    sim = torch.einsum("ipd,jqd->ijpq", local_s, local_t)
    return 0.5 * (sim.max(dim=3).values.mean(dim=2) + sim.max(dim=2).values.mean(dim=2))


class LVMMedForSelfSupervisedPretraining(SSLPreTrainedModel):
    """LVM-Med (Nguyen et al., NeurIPS 2023) on any stock transformers backbone.

    Attributes:
        encoder: the stock backbone `f`.
        projector: MLP `h` on the pooled feature.
        local_projector: linear map of the last feature map's channels to the local feature width.
        message_passing: the graph network `g` applied to each view's k-NN graph.
    """

    config_class = LVMMedConfig

    def __init__(self, config: LVMMedConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        self.projector = MLPHead(dim, config.projection_hidden_dim, config.projection_dim,
                                 num_layers=config.projection_layers, batch_norm=config.projection_batch_norm)
        self.local_projector = nn.Linear(self._map_channels(), config.local_dim) \
            if config.local_affinity_weight > 0 else None
        self.message_passing = GraphMessagePassing(config.projection_dim, config.message_passing_layers) \
            if config.message_passing_layers > 0 else None
        self.post_init()

    def _map_channels(self) -> int:
        bb = self.config.backbone_config
        family = backbone_family(bb)
        if family == "vit":
            return bb.hidden_size
        return feature_dim(bb)

    # -- pieces ------------------------------------------------------------------------------------------------
    def _local_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Local features `[B, L, local_dim]` (L2-normalized) from the encoder's last hidden state."""
        family = backbone_family(self.config.backbone_config)
        if family == "vit":
            tokens = tokens[:, 1:]
            b, n, c = tokens.shape
            side = int(round(n ** 0.5))
            fmap = tokens.transpose(1, 2).reshape(b, c, side, n // side)
        elif tokens.dim() == 3:  # swin: [B, L, C]
            b, n, c = tokens.shape
            side = int(round(n ** 0.5))
            fmap = tokens.transpose(1, 2).reshape(b, c, side, n // side)
        else:
            fmap = tokens
        g = self.config.local_grid_size
        if fmap.shape[-2] > g or fmap.shape[-1] > g:
            fmap = F.adaptive_avg_pool2d(fmap, (min(g, fmap.shape[-2]), min(g, fmap.shape[-1])))
        local = self.local_projector(fmap.flatten(2).transpose(1, 2))
        return F.normalize(local, dim=-1)

    def embed_view(self, pixel_values: torch.Tensor):
        """`(pooled h [B, D], projection z [B, d], local features [B, L, d_l] or None)` of one view."""
        h, tokens = encode(self.encoder, pixel_values, self.config.feature_pooling, return_tokens=True)
        z = self.projector(h)
        local = self._local_features(tokens) if self.local_projector is not None else None
        return h, z, local

    def graph_matching_inputs(self, z_s, z_t, local_s=None, local_t=None):
        """Graphs and affinities of the (already gathered) batch: `(S, P, A_s, A_t)`."""
        cfg = self.config
        a_s = knn_adjacency(z_s, cfg.num_neighbors)
        a_t = knn_adjacency(z_t, cfg.num_neighbors)
        u_s, u_t = z_s.float(), z_t.float()
        if self.message_passing is not None:
            u_s = self.message_passing(u_s, a_s)
            u_t = self.message_passing(u_t, a_t)
        n_s, n_t = F.normalize(u_s, dim=1), F.normalize(u_t, dim=1)
        p = n_s @ n_t.t()
        s = p
        if local_s is not None and cfg.local_affinity_weight > 0:
            w = cfg.local_affinity_weight
            s = (1 - w) * p + w * local_similarity(local_s.float(), local_t.float())
        return s, p, a_s, a_t

    def match(self, s, p, a_s, a_t, margin: float = 0.0):
        """The matching `X [N, N]` of the configured solver (hard + blackbox gradient, or Sinkhorn relaxation)."""
        cfg = self.config
        n = s.shape[0]
        if margin:
            s = s - margin * torch.eye(n, device=s.device, dtype=s.dtype)
        beta = cfg.edge_affinity_weight / cfg.num_neighbors
        if cfg.matching_solver == "blackbox":
            return blackbox_graph_matching(s, p, a_s, a_t, beta=beta, lam=cfg.blackbox_lambda,
                                           iterations=cfg.solver_iterations)
        return graduated_assignment(s, p, a_s, a_t, beta=beta, temperature=cfg.sinkhorn_temperature,
                                    outer_iterations=cfg.graduated_assignment_iterations,
                                    sinkhorn_iterations=cfg.sinkhorn_iterations)

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[view_s, view_t]` (two `[B, C, H, W]` tensors, two augmentations of the same images), or
                one tensor (embeddings only, no loss).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` is the matching `X [N, N]` of the global batch
            (row i: node i of view s; the correct partner of node i of view s is node i of view t).
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of 2 tensors, got {type(pixel_values).__name__}")
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"LVM-Med needs a list of 2 views, got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        if views[0].shape[0] != views[1].shape[0]:
            raise ValueError(f"both views need the same batch size, got {views[0].shape[0]} and {views[1].shape[0]}")
        if views[0].shape[0] < 2 and not is_distributed():
            raise ValueError("LVM-Med matches images across the batch: it needs at least 2 images")
        cfg = self.config

        h_s, z_s, loc_s = self.embed_view(views[0])
        _, z_t, loc_t = self.embed_view(views[1])
        # the graphs span the global batch (gradient flows back to every process's own rows)
        z_s, z_t = all_gather(z_s, with_grad=True), all_gather(z_t, with_grad=True)
        if loc_s is not None:
            loc_s, loc_t = all_gather(loc_s, with_grad=True), all_gather(loc_t, with_grad=True)
        s, p, a_s, a_t = self.graph_matching_inputs(z_s, z_t, loc_s, loc_t)
        x = self.match(s, p, a_s, a_t, margin=cfg.matching_margin if self.training else 0.0)
        target = torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
        loss = hamming_loss(x, target)
        with torch.no_grad():
            idx = torch.arange(x.shape[0], device=x.device)
            metrics = {
                "hamming_loss": loss.detach(),
                "matching_accuracy": (x.argmax(dim=1) == idx).float().mean(),
                "positive_affinity": s.diagonal().mean().detach(),
                "mean_affinity": s.mean().detach(),
                "graph_degree": a_s.sum(dim=1).mean(),
            }
        out = SSLOutput(loss=loss, embeddings=h_s.detach(), logits=x.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["LVMMedForSelfSupervisedPretraining", "GraphMessagePassing", "local_similarity"]
