"""ISR model: instance crops of two frames of a clip -> stock image encoder -> linear embedding (unit norm); the
instances of the two frames are associated by maximum-weight bipartite matching of their cosine similarities; every
matched pair is a positive pair with a reliability weight from the matching; reliability-guided InfoNCE against all
other instances of the global (all-process) batch:

    z            = normalize(W pool(encoder(crop)))                                   every real detection
    S^(c)        = z_A^(c) z_B^(c)T  (no gradient)                                    per clip c, frames A, B
    M^(c)        = argmax_{one-to-one} sum_(i,j) S_ij   (Hungarian, scipy linear_sum_assignment)
    r_ij         = softmax_row(S / tau_r)_ij * softmax_col(S / tau_r)_ij   (dual softmax; or clamp(S_ij, 0, 1))
    l(i -> j)    = -log exp(z_i z_j / tau) / sum_{k != i, k real, k in global batch} exp(z_i z_k / tau)
    loss         = sum_(i,j) in M, r_ij >= thr  r_ij (l(i -> j) + l(j -> i)) / 2  /  sum r_ij   (sums over the global
                   batch: the normaliser is all-reduced, the candidates all-gathered with gradient)
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import check_pixel_values, encode, feature_dim
from ..base import SSLPreTrainedModel
from ..losses import all_gather, all_reduce, rank, world_size
from ..outputs import SSLOutput
from .configuration_isr import ISRConfig


# ----------------------------------------------------------------------------------------------------
# association and reliability
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def bipartite_match(similarity: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Maximum-weight bipartite matching of a `[P, Q]` similarity matrix (Hungarian / Kuhn-Munkres,
    `scipy.optimize.linear_sum_assignment`): `min(P, Q)` index pairs `(rows, cols)`, rows ascending."""
    from scipy.optimize import linear_sum_assignment

    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [P, Q], got shape {tuple(similarity.shape)}")
    if similarity.numel() == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(similarity.detach().double().cpu().numpy(), maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


@torch.no_grad()
def match_reliability(similarity: torch.Tensor, rows, cols, temperature: float = 0.05,
                      mode: str = "dual_softmax") -> torch.Tensor:
    """Reliability `[M]` of the matched pairs `(rows, cols)` of a `[P, Q]` similarity matrix.

    `"dual_softmax"`: `softmax over the row (candidates of frame B for instance i) x softmax over the column
    (candidates of frame A for instance j)` at `temperature`: close to 1 when i and j are each other's clear choice,
    low when another candidate is nearly as similar (ambiguous association: occlusion, merged or missed detections).
    `"similarity"`: the matched cosine similarity clamped to [0, 1]."""
    s = similarity.detach().float()
    rows = torch.as_tensor(rows, dtype=torch.long, device=s.device)
    cols = torch.as_tensor(cols, dtype=torch.long, device=s.device)
    if mode == "similarity":
        return s[rows, cols].clamp(0.0, 1.0)
    if mode != "dual_softmax":
        raise ValueError(f"reliability mode must be 'dual_softmax' or 'similarity', got {mode!r}")
    prob = (s / temperature).softmax(dim=1) * (s / temperature).softmax(dim=0)
    return prob[rows, cols]


def reliability_weighted_info_nce(anchors: torch.Tensor, candidates: torch.Tensor, candidate_valid: torch.Tensor,
                                  anchor_index: torch.Tensor, positive_index: torch.Tensor, weights: torch.Tensor,
                                  temperature: float) -> torch.Tensor:
    """`sum_m weights_m * l_m` (NOT normalised) with `l_m = -log softmax_k(anchors_m . candidates_k / tau)` at
    `positive_index[m]`, over the real candidates (`candidate_valid`) except the anchor itself
    (`anchor_index[m]`, an index into `candidates`). `anchors` `[M, D]`, `candidates` `[N, D]` unit vectors."""
    logits = anchors.float() @ candidates.float().t() / temperature
    exclude = ~candidate_valid.bool()[None, :].expand_as(logits).clone()
    exclude[torch.arange(len(anchor_index), device=logits.device), anchor_index] = True
    logits = logits.masked_fill(exclude, float("-inf"))
    per_anchor = F.cross_entropy(logits, positive_index, reduction="none")
    return (weights.float() * per_anchor).sum()


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------
class ISRForSelfSupervisedPretraining(SSLPreTrainedModel):
    """ISR (see `hf_ssl.modeling.isr`): `encoder` (stock image backbone) + `embedding` (linear, the released
    `feat` layer). No teacher, no memory: positives come from the matching of each training batch."""

    config_class = ISRConfig

    def __init__(self, config: ISRConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = feature_dim(config.backbone_config)
        self.embedding = nn.Linear(dim, config.embedding_dim) if config.embedding_dim else nn.Identity()
        self.post_init()

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm ReID embeddings `[N, E]` of instance crops `[N, C, H, W]` (the loss's features)."""
        return F.normalize(self.embedding(encode(self.encoder, pixel_values, self.config.feature_pooling)), dim=-1)

    @torch.no_grad()
    def get_reid_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The paper's inference embedding (unit-norm `embedding(pool(encoder(x)))`, 512-d for Swin-B); cosine
        similarity of two crops = their dot product. `get_image_features` is the pooled encoder feature (what the
        vanilla export gives)."""
        self.check_pixel_values(pixel_values)
        return self.embed(pixel_values)

    # -- training -------------------------------------------------------------------------------------
    def _check_inputs(self, pixel_values, instance_mask):
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) < 2 or len(pixel_values) % 2:
            raise ValueError("ISR needs pixel_values = the 2K instance-crop batches of frame A then frame B (a list "
                             "of [B, C, H, W] tensors, as the `isr` view policy produces)")
        k = len(pixel_values) // 2
        for i, v in enumerate(pixel_values):
            self.check_pixel_values(v, f"pixel_values[{i}]")
            if v.shape != pixel_values[0].shape:
                raise ValueError(f"all instance crops must have one shape; pixel_values[{i}] is {tuple(v.shape)}, "
                                 f"pixel_values[0] is {tuple(pixel_values[0].shape)}")
        b = pixel_values[0].shape[0]
        if instance_mask is None:
            raise ValueError("ISR needs instance_mask [B, 2, K] (True = a real detection) with the crops")
        if not isinstance(instance_mask, torch.Tensor) or tuple(instance_mask.shape) != (b, 2, k):
            shape = tuple(instance_mask.shape) if isinstance(instance_mask, torch.Tensor) else type(instance_mask)
            raise ValueError(f"instance_mask must be a [B, 2, K] = [{b}, 2, {k}] tensor, got {shape}")
        return b, k

    def forward(self, pixel_values=None, instance_mask: Optional[torch.Tensor] = None,
                synthetic_clip: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: list of 2K `[B, C, H, W]` instance-crop batches (slots 0..K-1: frame A, K..2K-1: frame B),
                or one `[B, C, H, W]` tensor (embeddings only).
            instance_mask: `[B, 2, K]` bool, True where the slot holds a real detection.
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).

        Returns:
            `SSLOutput(loss, embeddings [B, D] (pooled feature of each clip's first crop), metrics)`.
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        b, k = self._check_inputs(pixel_values, instance_mask)
        cfg = self.config
        crops = torch.stack(list(pixel_values), dim=1).flatten(0, 1)  # [B * 2K, C, H, W]
        valid = instance_mask.to(crops.device).bool().reshape(-1)  # [B * 2K]
        if not valid.view(b, 2, k).any(dim=-1).all():
            raise ValueError("every clip needs at least one real detection in each of its two frames")
        index = valid.nonzero(as_tuple=True)[0]
        pooled = encode(self.encoder, crops[index], cfg.feature_pooling)
        z_valid = F.normalize(self.embedding(pooled), dim=-1)
        z = z_valid.new_zeros(b * 2 * k, z_valid.shape[-1]).index_copy(0, index, z_valid)

        anchors, positives, weights, sims = self.associate(z.detach().view(b, 2, k, -1), valid.view(b, 2, k))
        offset = rank() * b * 2 * k
        candidates = all_gather(z, with_grad=True)  # [W * B * 2K, E]: negatives of the whole global batch
        candidate_valid = all_gather(valid.to(torch.uint8)).bool()
        a_idx = torch.cat([anchors, positives])
        p_idx = torch.cat([positives, anchors])
        w = torch.cat([weights, weights]) / 2.0  # each pair: the mean of its two directions
        num = reliability_weighted_info_nce(z[a_idx], candidates, candidate_valid, a_idx + offset, p_idx + offset, w,
                                            cfg.contrastive_temperature)
        den = all_reduce(weights.detach().float().sum().clone())
        loss = world_size() * num / den.clamp_min(1e-12)
        if den.item() == 0:
            loss = z.sum() * 0.0  # no reliable pair anywhere: keep the graph, no signal
        with torch.no_grad():
            metrics = {"positive_pairs_per_clip": torch.tensor(len(anchors) / b, device=loss.device),
                       "kept_pair_fraction": (weights > 0).float().mean() if len(weights) else loss.new_zeros(()),
                       "mean_reliability": weights.mean() if len(weights) else loss.new_zeros(()),
                       "matched_similarity": sims.mean() if len(sims) else loss.new_zeros(()),
                       "detections_per_frame": valid.float().sum() / (2 * b)}
            if synthetic_clip is not None:
                metrics["synthetic_clip_fraction"] = torch.as_tensor(synthetic_clip, device=loss.device).float().mean()
        out = SSLOutput(loss=loss, embeddings=encode_first(pooled.detach(), index, k), metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def associate(self, z: torch.Tensor, valid: torch.Tensor):
        """Per clip: Hungarian matching of frame A's real instances to frame B's on cosine similarity, and each
        match's reliability. `z` `[B, 2, K, E]` unit vectors, `valid` `[B, 2, K]`. Returns flat indices (into the
        `[B * 2K]` slot layout) of anchors (frame A) and positives (frame B), the reliability weights (0 below
        `reliability_threshold`) and the matched similarities."""
        cfg = self.config
        b, _, k, _ = z.shape
        anchors, positives, weights, sims = [], [], [], []
        for c in range(b):
            ia = valid[c, 0].nonzero(as_tuple=True)[0]
            ib = valid[c, 1].nonzero(as_tuple=True)[0]
            s = z[c, 0, ia].float() @ z[c, 1, ib].float().t()
            rows, cols = bipartite_match(s)
            if len(rows) == 0:
                continue
            r = match_reliability(s, rows, cols, cfg.reliability_temperature, cfg.reliability)
            r = torch.where(r >= cfg.reliability_threshold, r, torch.zeros_like(r))
            rows_t = torch.as_tensor(rows, device=z.device)
            cols_t = torch.as_tensor(cols, device=z.device)
            anchors.append(c * 2 * k + ia[rows_t])
            positives.append(c * 2 * k + k + ib[cols_t])
            weights.append(r)
            sims.append(s[rows_t, cols_t])
        if not anchors:
            empty = torch.zeros(0, dtype=torch.long, device=z.device)
            return empty, empty, z.new_zeros(0), z.new_zeros(0)
        return torch.cat(anchors), torch.cat(positives), torch.cat(weights), torch.cat(sims)


def encode_first(pooled: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """The pooled feature of every clip's first real crop of frame A (slot 0 is always real) `[B, D]`."""
    first = (index % (2 * k)) == 0
    return pooled[first]


__all__ = ["ISRForSelfSupervisedPretraining", "bipartite_match", "match_reliability",
           "reliability_weighted_info_nce"]
