"""Transitive invariance model: a Triplet-Siamese image network trained on positive pairs obtained by transitivity
on a graph of tracked patches.

Per step (all cross-process statistics through `hf_ssl.modeling.losses`):

    z_first, z_last = normalize(head(encoder(first / last patch of every track)))        gradient
    nodes           = all_gather([z_first]) ++ all_gather([z_last])                      2N nodes, with gradient
    intra edges     = (first_i, last_i)                                                   tracking
    inter edges     = first_i -- first_j when k-means (gathered, stop-grad) puts i, j in one cluster
    pair types      = transitive closure: intra / inter (direct edge) / transitive (connected, no direct edge)
    negatives       = nodes of other, unconnected instances; the K hardest (smallest cosine distance) per anchor
                      (all of them before `hard_negative_start_step`)
    loss            = sum_t w_t mean_{(a, p) of type t} mean_k max(0, D(a, p) - D(a, n_k) + M) / sum_{t present} w_t
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..backbones import check_pixel_values, encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..outputs import SSLOutput
from .configuration_transitive_invariance import TransitiveInvarianceConfig

NO_EDGE, INTRA, INTER, TRANSITIVE = 0, 1, 2, 3
PAIR_TYPES = {"intra": INTRA, "inter": INTER, "transitive": TRANSITIVE}


def transitive_pair_types(num_nodes: int, intra_edges, inter_edges, device=None) -> torch.Tensor:
    """Pair types `[num_nodes, num_nodes]` (long) of a graph with two edge kinds: `INTRA` for a direct
    intra-instance edge, `INTER` for a direct inter-instance edge, `TRANSITIVE` for nodes connected only through a
    path (transitive closure of both edge kinds, e.g. inter-then-intra), `NO_EDGE` otherwise; -1 on the diagonal.
    Edges are `[E, 2]` index pairs (undirected)."""
    adj_intra = torch.zeros(num_nodes, num_nodes, dtype=torch.bool, device=device)
    adj_inter = torch.zeros_like(adj_intra)
    for adj, edges in ((adj_intra, intra_edges), (adj_inter, inter_edges)):
        edges = torch.as_tensor(edges, dtype=torch.long, device=device).reshape(-1, 2)
        if edges.numel():
            if int(edges.min()) < 0 or int(edges.max()) >= num_nodes:
                raise ValueError(f"edge indices must be in [0, {num_nodes})")
            adj[edges[:, 0], edges[:, 1]] = True
            adj[edges[:, 1], edges[:, 0]] = True
    eye = torch.eye(num_nodes, dtype=torch.bool, device=device)
    reach = adj_intra | adj_inter | eye
    for _ in range(max(1, math.ceil(math.log2(max(num_nodes, 2)))) + 1):  # boolean closure by repeated squaring
        nxt = (reach.float() @ reach.float()) > 0
        if torch.equal(nxt, reach):
            break
        reach = nxt
    types = torch.full((num_nodes, num_nodes), NO_EDGE, dtype=torch.long, device=device)
    types[reach] = TRANSITIVE
    types[adj_inter] = INTER
    types[adj_intra] = INTRA
    types[eye] = -1
    return types


def track_graph(cluster_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Edges of the per-batch graph: nodes `0..N-1` are the first patches, `N..2N-1` the last patches of the N
    tracks; intra edges (i, N + i); inter edges between the first patches of tracks in the same cluster."""
    n = cluster_labels.shape[0]
    idx = torch.arange(n, device=cluster_labels.device)
    intra = torch.stack([idx, idx + n], dim=1)
    same = (cluster_labels[:, None] == cluster_labels[None, :]) & (idx[:, None] < idx[None, :])
    inter = same.nonzero()
    return intra, inter


def transitive_triplet_loss(anchors: torch.Tensor, nodes: torch.Tensor, types: torch.Tensor, margin: float,
                            num_hard_negatives: Optional[int], weights: Dict[str, float], gather_counts: bool = True):
    """Ranking loss of L2-normalised `anchors` `[A, D]` against `nodes` `[M, D]` with pair types `types` `[A, M]`
    (see :func:`transitive_pair_types`; -1 = the anchor itself). Cosine distance `D = 1 - cos`; for every positive
    pair (a, p) the triplet loss `max(0, D(a, p) - D(a, n) + margin)` is averaged over the K hardest negatives of a
    (smallest distance, K = `num_hard_negatives`, fewer if fewer exist; None: all its negatives). Each pair type's
    loss is the mean over its pairs; with `gather_counts` the pair counts are summed over processes
    (`losses.all_reduce`) and the local sum is scaled by the world size, so DDP's gradient averaging gives the mean
    over the global batch. Returns `(loss, {type: loss_t})`."""
    # float32 under autocast too: the pair counts below take `dist.dtype`, and bfloat16 counts are inexact above 256
    dist = 1.0 - (anchors @ nodes.t()).float()  # [A, M]
    neg_mask = types == NO_EDGE
    k = nodes.shape[0] if num_hard_negatives is None else max(1, min(int(num_hard_negatives), nodes.shape[0]))
    masked = dist.masked_fill(~neg_mask, float("inf"))
    hard, hard_idx = masked.topk(k, dim=1, largest=False)  # [A, K]
    hard_valid = torch.isfinite(hard)
    hard = torch.where(hard_valid, hard, torch.zeros_like(hard))
    hinge = (dist[:, :, None] - hard[:, None, :] + margin).clamp(min=0)  # [A, M, K]
    n_valid = hard_valid.sum(dim=1).clamp(min=1).to(dist.dtype)  # [A]
    per_pair = (hinge * hard_valid[:, None, :]).sum(-1) / n_valid[:, None]  # [A, M]
    has_neg = hard_valid.any(dim=1)[:, None]
    world = losses.world_size() if gather_counts else 1
    parts, present = {}, {}
    sums, counts = [], []
    for name, code in PAIR_TYPES.items():
        sel = (types == code) & has_neg
        sums.append((per_pair * sel).sum())
        counts.append(sel.sum().to(dist.dtype))
    counts = torch.stack(counts).detach()
    if gather_counts:
        counts = losses.all_reduce(counts.clone())
    total = dist.new_zeros(())
    weight_sum = 0.0
    for (name, _), s, c in zip(PAIR_TYPES.items(), sums, counts):
        if float(c) > 0:
            parts[name] = s * world / c
            present[name] = True
            total = total + weights[name] * parts[name]
            weight_sum += weights[name]
    if weight_sum == 0:  # no positive pair with a negative anywhere: a zero loss that keeps the graph
        return dist.sum() * 0.0, parts
    return total / weight_sum, parts


class TransitiveInvarianceForSelfSupervisedPretraining(SSLPreTrainedModel):
    """Transitive invariance (see `hf_ssl.modeling.transitive_invariance`): `encoder` (stock image backbone applied to
    patches / frames) + `head` (fully connected embedding); `step` buffer (global optimizer step, for
    `inter_start_step`)."""

    config_class = TransitiveInvarianceConfig
    input_modalities = ("image", "video")

    def __init__(self, config: TransitiveInvarianceConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.head = MLPHead(feature_dim(config.backbone_config), config.projection_hidden_dim, config.projection_dim,
                            num_layers=2, batch_norm=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.zeros_(self.step)

    # -- features ---------------------------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings `[B, projection_dim]` (where the ranking loss lives), with gradient."""
        pooled = encode(self.encoder, pixel_values, self.config.feature_pooling)
        return F.normalize(self.head(pooled), dim=-1)

    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images `[B, C, H, W]`: the encoder's pooled feature. Clips `[B, T, C, H, W]` (the evaluation policy's
        output): the mean over frames of the per-frame image features."""
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 5:
            b, t = inputs.shape[:2]
            check_pixel_values(inputs[:, 0], self.config.num_channels, "pixel_values (clip frames)")
            feats = self.get_image_features(inputs.flatten(0, 1))
            return feats.reshape(b, t, -1).mean(dim=1)
        return self.get_image_features(inputs)

    # -- training ---------------------------------------------------------------------------------------
    def inter_edges_active(self) -> bool:
        return int(self.step) >= self.config.inter_start_step

    def cluster(self, first: torch.Tensor) -> torch.Tensor:
        """Cluster labels `[N_global]` of the gathered first-patch embeddings (stop-grad spherical k-means, the same
        on every process); every track its own cluster before `inter_start_step`."""
        n_global = first.shape[0] * losses.world_size()
        if not self.inter_edges_active():
            return torch.arange(n_global, device=first.device)
        k = min(n_global, max(2, math.ceil(n_global / self.config.instances_per_cluster)))
        _, labels = losses.kmeans(first.detach(), k, iterations=self.config.kmeans_iterations, seed=0, gather=True,
                                  spherical=True)
        return labels.to(first.device)

    def forward(self, pixel_values=None, track_displacement=None, synthetic_clip=None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values: `[first_patches, last_patches]`, two `[B, C, H, W]` batches (the first and last patch of
                each track, the `transitive_invariance` policy), or one tensor (embeddings only).
            track_displacement: optional `[B]` pixels the tracked box moved (logged).
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` = the local rows of the pair-type matrix
            `[2B, 2N]` (first patches then last patches; 0 none, 1 intra, 2 inter, 3 transitive, -1 self).
        """
        if isinstance(pixel_values, torch.Tensor):
            check_pixel_values(pixel_values, self.config.num_channels)
            out = SSLOutput(embeddings=self.embed(pixel_values))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != 2:
            raise ValueError("transitive invariance needs pixel_values = [first_patches, last_patches] of the tracks "
                             "(use the 'transitive_invariance' view policy)")
        first, last = pixel_values
        check_pixel_values(first, self.config.num_channels, "pixel_values[0]")
        check_pixel_values(last, self.config.num_channels, "pixel_values[1]")
        if first.shape != last.shape:
            raise ValueError(f"first and last patches need the same shape, got {tuple(first.shape)} and "
                             f"{tuple(last.shape)}")
        b = first.shape[0]
        z = self.embed(torch.cat([first, last]))
        z_first, z_last = z[:b], z[b:]
        all_first = losses.all_gather(z_first, with_grad=True)
        all_last = losses.all_gather(z_last, with_grad=True)
        n = all_first.shape[0]
        nodes = torch.cat([all_first, all_last])
        labels = self.cluster(z_first)
        intra, inter = track_graph(labels)
        types = transitive_pair_types(2 * n, intra, inter, device=z.device)
        offset = losses.rank() * b
        local = torch.cat([torch.arange(b, device=z.device) + offset, torch.arange(b, device=z.device) + offset + n])
        cfg = self.config
        weights = {"intra": cfg.intra_weight, "inter": cfg.inter_weight, "transitive": cfg.transitive_weight}
        hard = cfg.num_hard_negatives if int(self.step) >= cfg.hard_negative_start_step else None
        loss, parts = transitive_triplet_loss(z, nodes, types[local], cfg.margin, hard, weights)
        with torch.no_grad():
            local_types = types[local]
            metrics = {f"{k}_loss": v.detach() for k, v in parts.items()}
            metrics["intra_cosine"] = (z_first * z_last).sum(-1).mean().detach()
            metrics["num_clusters"] = torch.tensor(float(labels.unique().numel()), device=z.device)
            metrics["positives_per_anchor"] = (local_types > 0).sum(1).float().mean()
            if track_displacement is not None:
                metrics["track_displacement"] = torch.as_tensor(track_displacement, device=z.device).float().mean()
            if synthetic_clip is not None:
                metrics["synthetic_clip_fraction"] = torch.as_tensor(synthetic_clip, device=z.device).float().mean()
        out = SSLOutput(loss=loss, embeddings=z_first.detach(), logits=local_types.float(), metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        self.step.fill_(int(step))


__all__ = ["TransitiveInvarianceForSelfSupervisedPretraining", "transitive_pair_types", "track_graph",
           "transitive_triplet_loss", "NO_EDGE", "INTRA", "INTER", "TRANSITIVE"]
