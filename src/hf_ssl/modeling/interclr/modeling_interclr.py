"""InterCLR model (MoCo-InterCLR): intra-image MoCo branch + inter-image branch on a clustered memory bank.

One training step (B images per process, two views, `sample_index` per image):

    q = normalize(neck(encoder(view1)))                  student queries            [B, d]
    k = normalize(teacher_neck(teacher_encoder(view2)))  EMA keys, no gradient      [B, d]
    intra = CE([q.k - m_intra, q @ queue^T] / tau, 0)                                 (MoCo v2 + MarginNCE)
    label_i = memory_labels[idx_i] (or nearest centroid of k_i for a sample the bank has not seen yet)
    positive_i = a uniformly drawn bank entry with label_i
    negatives_i = num_negatives entries drawn uniformly from the similarity ranks [low, high) of q_i against the bank
                  with same-cluster and empty entries removed (semi-hard sampling)
    inter = CE([q.bank[pos] - m_inter, q @ bank[neg]^T] / tau, 0)
    loss = w_intra * intra + w_inter * inter
    after the loss: queue <- all_gather(k); bank[all_gather(idx)] <- normalize((1 - m) bank + m all_gather(k)), with
    labels = nearest centroid (ODC-style online labels)
    on_step_end: EMA of encoder + neck; at `inter_start_step` a k-means of the bank; then every `kmeans_interval`
    steps centroids = per-cluster means of the bank.

Queue, bank, labels and centroids are identical on every process (they are only changed with all-gathered data and
deterministic computations), and the random draws of the sampling are made for the global batch with a generator
seeded by the number of training forwards, each process keeping its own rows: N processes compute exactly what one
process computes on the concatenated batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import initialization as init

from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, rank, world_size
from ..momentum import ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_interclr import InterCLRConfig


def margin_nce(pos: torch.Tensor, neg: torch.Tensor, margin: float, temperature: float,
               neg_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample MarginNCE: `-log exp((pos - margin)/tau) / (exp((pos - margin)/tau) + sum_j exp(neg_j/tau))`.

    pos `[B]` cosine similarities to the positive, neg `[B, K]` to the negatives; `neg_mask` `[B, K]` (True = keep)
    drops padding negatives. Returns `[B]`."""
    neg = neg / temperature
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([((pos - margin) / temperature).unsqueeze(1), neg], dim=1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return -F.log_softmax(logits, dim=1)[:, 0]


class InterCLRForSelfSupervisedPretraining(SSLPreTrainedModel):
    """MoCo-InterCLR (Xie et al., IJCV 2022) on any stock transformers backbone.

    Attributes:
        encoder / projection_head: the query encoder and its MoCo v2 neck (shared by both branches).
        teacher_encoder / teacher_projection_head: EMA key encoder + neck (frozen).
        queue `[queue_length, d]`, queue_ptr: MoCo negatives (all processes' keys).
        memory_bank `[memory_bank_size, d]`, memory_labels `[memory_bank_size]` (-1 = no label yet),
        memory_filled `[memory_bank_size]`: the inter-image memory; centroids `[num_clusters, d]`, centroids_ready.
        optimizer_step, forward_count: schedule / sampling state (saved, so resuming continues exactly).
    """

    config_class = InterCLRConfig

    def __init__(self, config: InterCLRConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        self.projection_head = MLPHead(dim, config.projection_hidden_dim, config.projection_dim, num_layers=2,
                                       batch_norm=False)
        self.teacher_encoder = self._build_encoder()
        self.teacher_projection_head = MLPHead(dim, config.projection_hidden_dim, config.projection_dim,
                                               num_layers=2, batch_norm=False)
        d = config.projection_dim
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_length, d), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_bank", torch.zeros(config.memory_bank_size, d))
        self.register_buffer("memory_labels", torch.full((config.memory_bank_size,), -1, dtype=torch.long))
        self.register_buffer("memory_filled", torch.zeros(config.memory_bank_size, dtype=torch.bool))
        self.register_buffer("centroids", torch.zeros(config.num_clusters, d))
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))
        self.post_init()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_projection_head.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_projection_head, self.projection_head))
            init.copy_(self.queue, F.normalize(torch.randn_like(self.queue), dim=1))
            init.zeros_(self.queue_ptr)
            init.zeros_(self.memory_bank)
            init.constant_(self.memory_labels, -1)
            init.zeros_(self.memory_filled)
            init.zeros_(self.centroids)
            init.zeros_(self.centroids_ready)
            init.zeros_(self.optimizer_step)
            init.zeros_(self.forward_count)

    # -- encoders ---------------------------------------------------------------------------------------------
    def query(self, pixel_values: torch.Tensor):
        features = encode(self.encoder, pixel_values, self.config.feature_pooling)
        return features, F.normalize(self.projection_head(features), dim=1)

    @torch.no_grad()
    def key(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = encode(self.teacher_encoder, pixel_values, self.config.feature_pooling)
        return F.normalize(self.teacher_projection_head(features), dim=1)

    # -- memory bank ------------------------------------------------------------------------------------------
    def bank_slots(self, sample_index: torch.Tensor) -> torch.Tensor:
        return sample_index.long().remainder(self.config.memory_bank_size)

    @torch.no_grad()
    def assign_labels(self, features: torch.Tensor) -> torch.Tensor:
        """Online labels: argmax of `centroids @ feature` (the official ODC/InterCLR memory)."""
        return (features.float() @ self.centroids.float().t()).argmax(dim=1)

    @torch.no_grad()
    def update_memory(self, slots: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Write already all-gathered keys into the bank; returns the fraction of changed labels. A slot that appears
        several times keeps its last occurrence. New slots store the key itself, known slots
        `normalize((1 - m) * old + m * key)`."""
        n = slots.shape[0]
        order = torch.arange(n, device=slots.device)
        last = torch.full((self.config.memory_bank_size,), -1, dtype=torch.long, device=slots.device)
        last.scatter_reduce_(0, slots, order, reduce="amax")
        keep = last[slots] == order
        slots, keys = slots[keep], keys[keep].to(self.memory_bank.dtype)
        m = self.config.memory_momentum
        old = self.memory_bank[slots]
        mixed = F.normalize((1 - m) * old + m * keys, dim=1)
        new = torch.where(self.memory_filled[slots].unsqueeze(1), mixed, F.normalize(keys, dim=1))
        self.memory_bank[slots] = new
        self.memory_filled[slots] = True
        if self.host_int("centroids_ready"):
            labels = self.assign_labels(new)
            changed = (labels != self.memory_labels[slots]).float().mean()
            self.memory_labels[slots] = labels
            return changed
        return torch.zeros((), device=keys.device)

    @torch.no_grad()
    def update_centroids(self) -> None:
        """Centroids = mean of the bank entries of each cluster; empty clusters keep their centroid (official)."""
        filled = self.memory_filled & (self.memory_labels >= 0)
        labels, feats = self.memory_labels[filled], self.memory_bank[filled].float()
        k = self.config.num_clusters
        sums = torch.zeros(k, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=k)
        nonempty = counts > 0
        self.centroids[nonempty] = (sums[nonempty] / counts[nonempty].unsqueeze(1)).to(self.centroids.dtype)

    @torch.no_grad()
    def run_kmeans(self) -> None:
        """k-means (Lloyd, L2, `kmeans_iterations` iterations, init = distinct random filled entries) of the filled
        bank entries; sets every filled entry's label and the centroids (official initial clustering)."""
        filled_idx = self.memory_filled.nonzero().squeeze(1)
        x = self.memory_bank[filled_idx].float()
        k = self.config.num_clusters
        if x.shape[0] < k:
            raise ValueError(f"k-means needs at least num_clusters={k} filled bank entries, got {x.shape[0]}")
        g = torch.Generator(device="cpu").manual_seed(self.config.sampling_seed)
        centroids = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()

        def assign(c):
            out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
            half_norm = 0.5 * c.pow(2).sum(dim=1)
            for start in range(0, x.shape[0], 65536):
                out[start:start + 65536] = (x[start:start + 65536] @ c.t() - half_norm).argmax(dim=1)
            return out

        for _ in range(self.config.kmeans_iterations):
            labels = assign(centroids)
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            nonempty = counts > 0
            centroids[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1)
        self.memory_labels[filled_idx] = assign(centroids)
        self.memory_labels[~self.memory_filled] = -1
        self.centroids.copy_(centroids.to(self.centroids.dtype))
        self.update_centroids()
        self.set_host_int("centroids_ready", True)

    # -- sampling ---------------------------------------------------------------------------------------------
    def _generator(self, device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.config.sampling_seed * 1_000_003 + self.host_int("forward_count"))
        return g

    @torch.no_grad()
    def sample_positives(self, labels: torch.Tensor, uniform: torch.Tensor):
        """One uniformly drawn filled bank entry with each label (`uniform` `[B]` in [0, 1)). Returns indices and
        a validity mask (False where the cluster has no filled entry)."""
        pos = torch.zeros_like(labels)
        valid = torch.zeros_like(labels, dtype=torch.bool)
        for label in labels.unique().tolist():
            members = ((self.memory_labels == label) & self.memory_filled).nonzero().squeeze(1)
            rows = (labels == label).nonzero().squeeze(1)
            if members.numel() == 0:
                continue
            pick = (uniform[rows] * members.numel()).long().clamp_(max=members.numel() - 1)
            pos[rows] = members[pick]
            valid[rows] = True
        return pos, valid

    @torch.no_grad()
    def sample_negatives(self, queries: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor):
        """Semi-hard negatives: rank the bank by similarity to each query after removing empty entries and entries
        of the query's cluster, keep ranks `[low, high)` and draw `num_negatives` of them uniformly without
        replacement (`keys` `[B, high - low]` uniform random numbers). Returns indices `[B, K]` and a validity mask
        (False for padding when fewer candidates exist)."""
        low, high = self.config.semihard_rank_range
        sims = queries.detach().float() @ self.memory_bank.float().t()
        excluded = (~self.memory_filled).unsqueeze(0) | (self.memory_labels.unsqueeze(0) == labels.unsqueeze(1))
        sims = sims.masked_fill(excluded, float("-inf"))
        values, ranked = sims.topk(high, dim=1)
        values, ranked = values[:, low:], ranked[:, low:]
        pool_valid = values > float("-inf")
        keys = keys.masked_fill(~pool_valid, 2.0)
        choice = keys.argsort(dim=1)[:, : self.config.num_negatives]
        return ranked.gather(1, choice), pool_valid.gather(1, choice)

    # -- forward ----------------------------------------------------------------------------------------------
    def _check_views(self, pixel_values):
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"InterCLR needs a list of 2 views (query, key), got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        if views[0].shape[0] != views[1].shape[0]:
            raise ValueError(f"both views need the same batch size, got {views[0].shape[0]} and {views[1].shape[0]}")
        return views

    def forward(self, pixel_values, sample_index: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[query_view, key_view]` (two `[B, C, H, W]` tensors), or one tensor (embeddings only).
            sample_index: `[B]` stable integer ids of the images (the `"interclr"` view policy provides them); the
                bank slot is `sample_index % memory_bank_size`. Without it only the intra-image branch runs.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` are the intra-image logits `[B, 1 + queue]`
            (positive first, before the temperature).
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of 2 tensors, got {type(pixel_values).__name__}")
        v1, v2 = self._check_views(pixel_values)
        bs = v1.shape[0]
        cfg = self.config
        if sample_index is not None:
            sample_index = torch.as_tensor(sample_index, device=v1.device).long().view(-1)
            if sample_index.shape[0] != bs:
                raise ValueError(f"sample_index needs one id per image ({bs}), got {sample_index.shape[0]}")
            if (sample_index < 0).any():
                raise ValueError("sample_index must be non-negative")

        features, q = self.query(v1)
        k = self.key(v2)
        tau = cfg.contrastive_temperature
        queue = self.queue.detach().clone().to(q.dtype)
        intra = margin_nce((q * k).sum(dim=1), q @ queue.t(), cfg.intra_margin, tau).mean()
        loss = cfg.intra_loss_weight * intra

        inter_active = sample_index is not None and bool(self.host_int("centroids_ready")) and cfg.inter_loss_weight > 0
        metrics = {"intra_loss": intra.detach()}
        slots = self.bank_slots(sample_index) if sample_index is not None else None
        if inter_active:
            g = self._generator(q.device)
            n_global = bs * world_size()
            low, high = cfg.semihard_rank_range
            u_pos = torch.rand(n_global, generator=g, device=q.device)
            u_neg = torch.rand(n_global, high - low, generator=g, device=q.device)
            rows = slice(rank() * bs, (rank() + 1) * bs)
            with torch.no_grad():
                known = self.memory_filled[slots] & (self.memory_labels[slots] >= 0)
                labels = torch.where(known, self.memory_labels[slots], self.assign_labels(k))
                pos_idx, pos_valid = self.sample_positives(labels, u_pos[rows])
                neg_idx, neg_valid = self.sample_negatives(q, labels, u_neg[rows])
            bank = self.memory_bank.detach().to(q.dtype)
            pos = (q * bank[pos_idx]).sum(dim=1)
            neg = torch.bmm(bank[neg_idx], q.unsqueeze(2)).squeeze(2)
            per_sample = margin_nce(pos, neg, cfg.inter_margin, tau, neg_valid)
            inter = (per_sample * pos_valid).sum() / bs  # rows without a positive contribute 0 (DDP-consistent mean)
            loss = loss + cfg.inter_loss_weight * inter
            metrics["inter_loss"] = inter.detach()
            metrics["inter_valid_fraction"] = pos_valid.float().mean()
        else:
            metrics["inter_loss"] = torch.zeros((), device=q.device)
            metrics["inter_valid_fraction"] = torch.zeros((), device=q.device)
        metrics["inter_active"] = torch.tensor(float(inter_active), device=q.device)

        if self.training:
            with torch.no_grad():
                keys_all = all_gather(k)
                self._enqueue(keys_all)
                if slots is not None:
                    metrics["label_change_ratio"] = self.update_memory(all_gather(slots), keys_all)
                self.add_host_int("forward_count")
        with torch.no_grad():
            metrics["bank_fill"] = self.memory_filled.float().mean()
            logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1).detach()
        out = SSLOutput(loss=loss, embeddings=features.detach(), logits=logits, metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: overwrite the oldest keys at the pointer (wrapping around; the official code asserts that the queue
        length is a multiple of the global batch, a partial last batch of a stream simply wraps here)."""
        n, length = keys.shape[0], self.config.queue_length
        if n > length:
            raise ValueError(f"the global batch ({n}) is larger than queue_length ({length})")
        ptr = self.host_int("queue_ptr")
        slots = (ptr + torch.arange(n, device=keys.device)) % length
        self.queue[slots] = keys.to(self.queue.dtype)
        self.set_host_int("queue_ptr", (ptr + n) % length)

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        m = self.config.teacher_momentum
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_projection_head, self.projection_head, m)
        self.set_host_int("optimizer_step", step)
        if not self.host_int("centroids_ready"):  # until k-means first runs, the fill count is read once per step
            if step >= self.config.inter_start_step and int(self.memory_filled.sum()) >= self.config.num_clusters:
                self.run_kmeans()
        elif step % self.config.kmeans_interval == 0:
            self.update_centroids()


__all__ = ["InterCLRForSelfSupervisedPretraining", "margin_nce"]
