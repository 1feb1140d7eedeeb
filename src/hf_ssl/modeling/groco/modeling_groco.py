"""GroCo model: encoder, projection head and the group ordering loss through a differentiable sorting network.

Data flow of one step (V views of B images; the first G = `num_global` views are the global ones):

    views --encoder (one call per resolution)--> h [V*B, D] --projection (.. BN(affine=False))--> z [V*B, d]
    for every anchor view a (all V views):
        positives  P_a = the global views g != a               (G - 1 for a global anchor, G for a local one)
        pos  = cos(z_a, sg(z_g)) for g in P_a, sorted ascending             [B, |P_a|]
        neg  = the k largest cos(z_a[i], sg(z_a[j])), j != i over the global batch (all processes), ascending   [B, k]
        P    = soft permutation of the odd-even sorting network on [neg ; pos]          [B, k+|P_a|, k+|P_a|]
        loss_a = ( BCE(sum_{r >= k} P[:, i, r], 1[i >= k]) + BCE(sum_{r < k} P[:, i, r], 1[i < k]) ) / 2
    loss = mean_a loss_a        (sg = stop-gradient, `stop_gradient=True` as in the official code)

The target is the identity permutation of the pre-ordered scores: the loss is ~0 when every positive is ranked above
every hard negative and grows when they interleave.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encode, encode_multicrop, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, rank, world_size
from ..outputs import SSLOutput
from ..sorting import differentiable_sort
from .configuration_groco import GroCoConfig


def group_ordering_loss(sims: torch.Tensor, num_negatives: int, steepness: float = 1.0,
                        distribution: str = "cauchy", art_lambda: float = 0.25) -> torch.Tensor:
    """The GroCo ordering loss of pre-ordered scores `sims` `[B, k + p]`: the first `k` columns are negative scores
    (ascending), the last `p` positive scores (ascending). The differentiable sort's soft permutation gives, for every
    input, the probability of landing in the top-`p` (positive) ranks and in the bottom-`k` (negative) ranks; both are
    matched to the ideal grouping with binary cross entropy (the official `torch.nn.BCELoss`, mean over elements,
    log clamped at -100) and the two terms are averaged."""
    k = num_negatives
    n = sims.shape[1]
    if not 0 < k < n:
        raise ValueError(f"need 0 < num_negatives < number of scores, got {k} and {n}")
    _, perm = differentiable_sort(sims.float(), steepness, distribution, art_lambda)
    prob_neg = perm[:, :, :k].sum(dim=2).clamp(0, 1)
    prob_pos = perm[:, :, k:].sum(dim=2).clamp(0, 1)
    target_neg = torch.zeros_like(prob_neg)
    target_neg[:, :k] = 1.0
    return (F.binary_cross_entropy(prob_pos, 1.0 - target_neg) + F.binary_cross_entropy(prob_neg, target_neg)) / 2


class GroCoForSelfSupervisedPretraining(SSLPreTrainedModel):
    """GroCo (Shvetsova et al., ICCV 2023) on any stock transformers backbone.

    Attributes:
        encoder: the stock backbone (what `export_encoder` writes).
        projection_head: `MLPHead` (official `RegularProjection`: `[Linear(D, D)-BN-ReLU] x 2`, `Linear(D, 2048)`,
            `BatchNorm1d(2048, affine=False)`).
    """

    config_class = GroCoConfig

    def __init__(self, config: GroCoConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = feature_dim(config.backbone_config)
        self.projection_head = MLPHead(
            dim,
            config.projection_hidden_dim or dim,
            config.projection_dim,
            num_layers=config.projection_num_layers,
            batch_norm=True,
            last_norm=True,
        )
        self.post_init()

    def _init_weights(self, module):
        # official: PyTorch-default initialisation of the projection head's Linear layers
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        else:
            super()._init_weights(module)

    # -- building blocks --------------------------------------------------------------------------------------
    def encode_views(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled encoder features `[V*B, D]` of all views in order; consecutive views of one resolution go through
        the encoder in one call."""
        return encode_multicrop(self.encoder, views, self.config.feature_pooling)

    def anchor_scores(self, anchor: torch.Tensor, positives: Sequence[torch.Tensor]):
        """Pre-ordered scores of one anchor view `[B, k + p]` (k hardest negatives then p positives, each ascending)
        and the raw `(pos_sims, neg_sims)`. Cosine similarities in float32; negatives are the anchor-view embeddings
        of the other images of the global batch (gathered from every process)."""
        k = self.config.num_negatives
        stop = self.config.stop_gradient
        a = F.normalize(anchor.float(), dim=1, eps=1e-8)
        pos = []
        for p in positives:
            p = F.normalize(p.float(), dim=1, eps=1e-8)
            pos.append((a * (p.detach() if stop else p)).sum(dim=1))
        pos_sims = torch.stack(pos, dim=1)
        candidates = all_gather(a, with_grad=not stop)  # detached when stop (also in a single process)
        if candidates.shape[0] - 1 < k:
            raise ValueError(
                f"GroCo ranks the {k} hardest negatives of each anchor among the other images of the global batch, "
                f"but the global batch holds only {candidates.shape[0]} images ({anchor.shape[0]} per process x "
                f"{world_size()} processes). Use a global batch of at least num_negatives + 1 = {k + 1} images or "
                "lower num_negatives."
            )
        neg_sims = a @ candidates.t()
        own = torch.arange(a.shape[0], device=a.device) + rank() * a.shape[0]
        neg_sims = neg_sims.masked_fill(F.one_hot(own, candidates.shape[0]).bool(), float("-inf"))
        neg_top = torch.topk(neg_sims, k, dim=1).values.flip(dims=[1])  # ascending
        pos_sorted = torch.sort(pos_sims, dim=1).values
        return torch.cat([neg_top, pos_sorted], dim=1), pos_sorted, neg_top

    def _check_views(self, pixel_values) -> List[torch.Tensor]:
        views = list(pixel_values)
        g = self.config.num_global_views
        if len(views) < g:
            raise ValueError(f"GroCo needs a list of at least num_global = {g} views, got {len(views)}; pass a single "
                             "tensor to get embeddings only.")
        for i, view in enumerate(views):
            self.check_pixel_values(view, name=f"pixel_values[{i}]")
        batch = views[0].shape[0]
        if any(v.shape[0] != batch for v in views):
            raise ValueError(f"every view needs the same batch size, got {[v.shape[0] for v in views]}")
        size = views[0].shape[-2:]
        if any(v.shape[-2:] != size for v in views[:g]):
            sizes = [tuple(v.shape[-2:]) for v in views[:g]]
            raise ValueError(f"the {g} global views must share one resolution, got {sizes}")
        return views

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: a list of views, one `[B, C, H, W]` tensor each (first the `num_global` global views, then
                the local crops), or a single `[B, C, H, W]` tensor, for which only `embeddings` are returned.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = pooled encoder features of view 0
            (detached); `logits` = the pre-ordered scores of anchor view 0 `[B, k + G - 1]`; `metrics` (detached):
            `groco_loss`, `pos_min` / `pos_max` / `neg_min` / `neg_max` (mean over anchors of view 0, as the official
            log), `pos_neg_gap` = pos_min - neg_max, `ordering_accuracy` = fraction of anchors (all views) whose
            lowest positive beats their hardest negative.
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            output = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return output if return_dict else output.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of tensors, got {type(pixel_values).__name__}")
        views = self._check_views(pixel_values)
        bs, g = views[0].shape[0], self.config.num_global_views
        features = self.encode_views(views)
        z = list(self.projection_head(features).split(bs, dim=0))

        cfg = self.config
        total = 0.0
        ordered = []
        first = None
        for a in range(len(views)):
            positives = [z[p] for p in range(g) if p != a]
            sims, pos, neg = self.anchor_scores(z[a], positives)
            total = total + group_ordering_loss(sims, cfg.num_negatives, cfg.sorting_steepness,
                                                cfg.sorting_distribution, cfg.sorting_art_lambda)
            with torch.no_grad():
                ordered.append((pos[:, 0] > neg[:, -1]).float())
            if first is None:
                first = (sims, pos.detach(), neg.detach())
        loss = total / len(views)

        sims, pos, neg = first
        metrics: Dict[str, torch.Tensor] = {
            "groco_loss": loss.detach(),
            "pos_max": pos[:, -1].mean(),
            "pos_min": pos[:, 0].mean(),
            "neg_max": neg[:, -1].mean(),
            "neg_min": neg[:, 0].mean(),
            "pos_neg_gap": pos[:, 0].mean() - neg[:, -1].mean(),
            "ordering_accuracy": torch.cat(ordered).mean(),
        }
        output = SSLOutput(loss=loss, embeddings=features[:bs].detach(), logits=sims, metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["GroCoForSelfSupervisedPretraining", "group_ordering_loss"]
