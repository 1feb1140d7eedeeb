"""Rethinking Positive Pairs (SimLAP): contrastive learning from arbitrary pairs through a pair-conditioned filter.

Data flow of one step (B pairs per process; pair b = anchor view of image a_b, partner view of image p_b):

    [anchor views ; partner views] --encoder--> h_a, h_p [B, D] --projection (..LayerNorm)--> z_a, z_p [B, d]
    gate   g_b = sigmoid(GateMLP(c_b)) in (0, 1)^d, c_b = sg(h_a[b] + h_p[b]) / 2      ("features" condition)
                                                  or  (E[y(a_b)] + E[y(p_b)]) / 2       ("labels", the paper)
    logits l_bj = < n(z_a[b]) * g_b^2 , n(z_p[j]) > / tau   over the partner views j of the global batch (gathered)
    positives  P_b = { j : p_j = p_b }          excluded (not negatives)  { j : p_j in {a_b, p_b} }
    loss_b = mean_{j in P_b} [ log(exp l_bj + sum_{n negative} exp l_bn) - l_bj ] ;   loss = mean_b loss_b
    (+ gate_penalty_weight * mean Bernoulli entropy of g)

`n` is L2 normalisation, `sg` stop-gradient. The gate weights both sides of the dot product by `g_b` (the filter
applied to the anchor and to every candidate), i.e. the pair is compared in the subspace its gate selects.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, rank
from ..outputs import SSLOutput
from .configuration_rpp import RPPConfig


class ProjectionWithLayerNorm(nn.Module):
    """The SimLAP projection (vitookit `build_head(2, D, 2048, 256, last_norm='ln')`): Linear(D, 2048)-BN-ReLU-
    Linear(2048, 256, no bias)-LayerNorm(256)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=True)
        self.mlp.layers[0] = nn.Linear(in_dim, hidden_dim, bias=True)  # official hidden Linear keeps its bias
        self.mlp.layers[-1] = nn.Linear(hidden_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(x))


class PairGate(nn.Module):
    """The feature filter: `sigmoid(MLP(condition))` with the official `BasicGate` MLP `ReLU-BN(in)-Linear(in, hidden)-
    ReLU-BN(hidden)-Linear(hidden, d)`. The condition of a pair is the mean of the two members' inputs, so the gate is
    symmetric in the pair."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.ReLU(), nn.BatchNorm1d(in_dim), nn.Linear(in_dim, hidden_dim),
            nn.ReLU(), nn.BatchNorm1d(hidden_dim), nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp((first + second) / 2))


def pair_contrastive_loss(anchor: torch.Tensor, candidates: torch.Tensor, gate: torch.Tensor, anchor_ids: torch.Tensor,
                          partner_ids: torch.Tensor, candidate_ids: torch.Tensor, temperature: float):
    """The gated multi-positive InfoNCE of SimLAP (official `multipos_ce_loss`).

    anchor `[B, d]`, candidates `[N, d]` (both L2-normalised), gate `[B, d]`; ids: anchor image `[B]`, partner image
    `[B]`, candidate image `[N]`. Positives of row b: candidates with id == partner_ids[b]; negatives: candidates whose
    id is neither anchor_ids[b] nor partner_ids[b]. Each positive is contrasted against the negatives only, the terms
    are averaged over the row's positives, then over rows. Returns `(loss, logits)`."""
    logits = ((anchor * gate * gate) @ candidates.t()).float() / temperature  # float32 under autocast too
    positive = partner_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)
    excluded = positive | (anchor_ids.unsqueeze(1) == candidate_ids.unsqueeze(0))
    if not bool(positive.any(dim=1).all()):
        raise ValueError("every pair needs its partner among the candidates (partner_ids must appear in candidate_ids)")
    neg_lse = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1, keepdim=True)  # -inf if none
    terms = torch.logaddexp(logits, neg_lse) - logits
    per_row = (terms * positive).sum(dim=1) / positive.sum(dim=1)
    return per_row.mean(), logits


class RPPForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SimLAP / Rethinking Positive Pairs (Wu et al., arXiv 2024) on any stock transformers backbone.

    Attributes:
        encoder: the stock backbone (what `export_encoder` writes).
        projection_head: `ProjectionWithLayerNorm` (D-2048-256, LayerNorm).
        gate: `PairGate` (the pair-conditioned feature filter).
        label_embedding: class embeddings (only with `gate_condition="labels"`).
    """

    config_class = RPPConfig

    def __init__(self, config: RPPConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = feature_dim(config.backbone_config)
        self.projection_head = ProjectionWithLayerNorm(dim, config.projection_hidden_dim, config.projection_dim)
        if config.gate_condition == "labels":
            self.label_embedding = nn.Embedding(config.num_classes, config.gate_embedding_dim)
            gate_in = config.gate_embedding_dim
        else:
            self.label_embedding = None
            gate_in = dim
        self.gate = PairGate(gate_in, config.gate_hidden_dim, config.projection_dim)
        self.post_init()

    def _init_weights(self, module):
        # official: PyTorch-default initialisation of the heads (Linear: kaiming-uniform; Embedding: N(0, 1))
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        else:
            super()._init_weights(module)

    # -- building blocks ----------------------------------------------------------------------------------------
    def pair_gate(self, anchor_features: Optional[torch.Tensor] = None, partner_features: Optional[torch.Tensor] = None,
                  pair_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The gate `[B, projection_dim]` in (0, 1) of each pair: from the stop-gradient pooled features of its two
        images (`"features"`), or from the two class embeddings (`"labels"`, `pair_labels` `[B, 2]`)."""
        if self.config.gate_condition == "labels":
            if pair_labels is None:
                raise ValueError("gate_condition='labels' needs `pair_labels` [B, 2] (class of anchor and partner)")
            return self.gate(self.label_embedding(pair_labels[:, 0]), self.label_embedding(pair_labels[:, 1]))
        return self.gate(anchor_features.detach(), partner_features.detach())

    def _check_inputs(self, pixel_values, pair_ids, pair_labels):
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"RPP takes pixel_values = [anchor views, partner views], got a list of {len(views)}")
        for i, view in enumerate(views):
            self.check_pixel_values(view, name=f"pixel_values[{i}]")
        bs = views[0].shape[0]
        if views[1].shape != views[0].shape:
            raise ValueError(f"anchor and partner views must have the same shape, got {tuple(views[0].shape)} and "
                             f"{tuple(views[1].shape)}")
        device = views[0].device
        if pair_ids is None:  # no pair information: two views of the same image (classical positive pairs)
            own = torch.arange(bs, device=device) + rank() * bs
            pair_ids = torch.stack([own, own], dim=1)
        pair_ids = torch.as_tensor(pair_ids, device=device).long()
        if pair_ids.shape != (bs, 2):
            raise ValueError(f"pair_ids must be [batch, 2] (anchor image id, partner image id), got "
                             f"{tuple(pair_ids.shape)} for a batch of {bs}")
        if pair_labels is not None:
            pair_labels = torch.as_tensor(pair_labels, device=device).long()
            if pair_labels.shape != (bs, 2):
                raise ValueError(f"pair_labels must be [batch, 2], got {tuple(pair_labels.shape)}")
            if int(pair_labels.min()) < 0 or int(pair_labels.max()) >= self.config.num_classes:
                raise ValueError(f"pair_labels must lie in [0, num_classes={self.config.num_classes})")
        if self.config.gate_condition == "labels" and pair_labels is None:
            raise ValueError("gate_condition='labels' needs `pair_labels` [B, 2] (class of anchor and partner)")
        return views, pair_ids, pair_labels

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, pixel_values, pair_ids=None, pair_labels=None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[anchor views, partner views]` (two `[B, C, H, W]` tensors), or a single tensor, for
                which only `embeddings` are returned.
            pair_ids: `[B, 2]` int64 ids of the anchor image and of the partner image (the `"arbitrary_pair"` view
                policy provides them); `None` means both views show the same image (classical positive pairs).
            pair_labels: `[B, 2]` class labels of anchor and partner (`gate_condition="labels"`, the paper's
                class-pair setting); when given they replace `pair_ids` in the positive/excluded masks.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = pooled encoder features of the anchor views
            (detached), `logits` = gated logits `[B, global batch]`, `metrics` (detached): `rpp_loss`,
            `gate_activation` (mean number of open dimensions, sum of gates), `gate_entropy` (mean Bernoulli entropy),
            `arbitrary_pairs` (fraction of pairs of two different images), `positive_similarity` (ungated cosine of
            each anchor with its own partner view).
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            output = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return output if return_dict else output.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of tensors, got {type(pixel_values).__name__}")
        views, pair_ids, pair_labels = self._check_inputs(pixel_values, pair_ids, pair_labels)
        bs = views[0].shape[0]
        features = encode(self.encoder, torch.cat(views, dim=0), self.config.feature_pooling)
        h_anchor, h_partner = features[:bs], features[bs:]
        z = self.projection_head(features).float()
        z_anchor = F.normalize(z[:bs], dim=1)
        z_partner = F.normalize(z[bs:], dim=1)
        gate = self.pair_gate(h_anchor, h_partner, pair_labels).float()

        ids = pair_labels if pair_labels is not None else pair_ids
        candidates = all_gather(z_partner, with_grad=True)
        candidate_ids = all_gather(ids[:, 1])
        loss, logits = pair_contrastive_loss(z_anchor, candidates, gate, ids[:, 0], ids[:, 1], candidate_ids,
                                             self.config.rpp_temperature)
        probs = gate.clamp(1e-6, 1 - 1e-6)
        entropy = -(probs * probs.log() + (1 - probs) * (1 - probs).log()).mean()
        metrics = {"rpp_loss": loss.detach()}
        if self.config.gate_penalty_weight > 0:
            loss = loss + self.config.gate_penalty_weight * entropy
        metrics.update({
            "gate_activation": gate.detach().sum(dim=1).mean(),
            "gate_entropy": entropy.detach(),
            "arbitrary_pairs": (pair_ids[:, 0] != pair_ids[:, 1]).float().mean(),
            "positive_similarity": (z_anchor * z_partner).sum(dim=1).detach().mean(),
        })
        output = SSLOutput(loss=loss, embeddings=h_anchor.detach(), logits=logits, metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["RPPForSelfSupervisedPretraining", "PairGate", "ProjectionWithLayerNorm", "pair_contrastive_loss"]
