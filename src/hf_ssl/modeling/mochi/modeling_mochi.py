"""MoCHi model: MoCo v2 (EMA key encoder, queue, InfoNCE) + hard negative mixing in the embedding space.

One training step (B images per process, two views):

    q = normalize(head(encoder(view1)))                           queries, gradient             [B, d]
    k = normalize(teacher_head(teacher_encoder(view2)))           keys, no gradient, shuffle-BN [B, d]
    hard_i = the N queue keys most similar to q_i                  (sorted by q_i . key)         [B, N, d]
    mixed_i = normalize(a * hard_i[u] + (1 - a) * hard_i[v])       s per query, a ~ U(0, 1)
    qmixed_i = normalize(b * q_i + (1 - b) * hard_i[v])            s' per query, b ~ U(0, 0.5)
    logits_i = [q_i . k_i, q_i . queue, q_i . mixed_i, q_i . qmixed_i] / T     (synthetic ones: constants)
    loss = cross_entropy(logits, 0); then queue <- all_gather(k) (FIFO); on_step_end: EMA of encoder + head.

The random draws (mixing indices/coefficients, shuffle permutation) come from a generator seeded by
`mixing_seed` and a forward counter and are made for the *global* batch, each process keeping its rows, so N
processes compute exactly what one process computes on the concatenated batch (up to BatchNorm statistics).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from transformers import initialization as init

from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, broadcast, is_distributed, rank, world_size
from ..momentum import ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_mochi import MoCHiConfig


@torch.no_grad()
def hard_negatives(query: torch.Tensor, queue: torch.Tensor, num_hard: int):
    """Indices `[B, N]` and keys `[B, N, d]` of the `num_hard` queue keys most similar to each query, hardest
    first."""
    sims = query.detach().float() @ queue.detach().float().t()
    idx = sims.topk(min(num_hard, queue.shape[0]), dim=1).indices
    return idx, queue.detach()[idx]


@torch.no_grad()
def mix_hard_negatives(query: torch.Tensor, hard: torch.Tensor, pair_index: torch.Tensor, alpha: torch.Tensor,
                       query_index: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """MoCHi's synthetic negatives (no gradient), L2-normalized.

    query `[B, d]`, hard `[B, N, d]`; pair_index `[B, s, 2]` and alpha `[B, s]` give
    `normalize(alpha * hard[i] + (1 - alpha) * hard[j])`; query_index `[B, s']` and beta `[B, s']` give
    `normalize(beta * q + (1 - beta) * hard[j])`. Returns `[B, s + s', d]`."""
    rows = torch.arange(hard.shape[0], device=hard.device).unsqueeze(1)
    out = []
    if pair_index.shape[1]:
        a = alpha.unsqueeze(2).to(hard.dtype)
        mixed = a * hard[rows, pair_index[..., 0]] + (1 - a) * hard[rows, pair_index[..., 1]]
        out.append(F.normalize(mixed, dim=2))
    if query_index.shape[1]:
        b_ = beta.unsqueeze(2).to(hard.dtype)
        mixed = b_ * query.detach().unsqueeze(1).to(hard.dtype) + (1 - b_) * hard[rows, query_index]
        out.append(F.normalize(mixed, dim=2))
    if not out:
        return hard.new_zeros(hard.shape[0], 0, hard.shape[2])
    return torch.cat(out, dim=1)


class MoCHiForSelfSupervisedPretraining(SSLPreTrainedModel):
    """MoCHi (Kalantidis et al., NeurIPS 2020) on any stock transformers backbone.

    Attributes:
        encoder / projection_head: query encoder + MoCo v2 MLP head (gradient path).
        teacher_encoder / teacher_projection_head: EMA key encoder + head (frozen, updated in `on_step_end`).
        queue `[queue_size, d]`, queue_ptr: FIFO of all processes' keys; queue_batch: the largest global batch
            enqueued so far (for the divisibility check).
        optimizer_step: last optimizer step seen by `on_step_end` (gates the mixing warm-up).
        forward_count: training forwards so far (seeds the random draws).
    """

    config_class = MoCHiConfig

    def __init__(self, config: MoCHiConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        hidden = config.projection_hidden_dim or dim
        self.encoder = self._build_encoder()
        self.projection_head = MLPHead(dim, hidden, config.projection_dim, num_layers=2, batch_norm=False)
        self.teacher_encoder = self._build_encoder()
        self.teacher_projection_head = MLPHead(dim, hidden, config.projection_dim, num_layers=2, batch_norm=False)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_batch", torch.zeros((), dtype=torch.long))
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))
        self.post_init()
        self.apply_frozen_parameters_()  # the key encoder/head never take gradients, even before `.train()`

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_projection_head.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # MoCo: the key encoder starts as a copy of the query encoder
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_projection_head, self.projection_head))
            init.copy_(self.queue, F.normalize(torch.randn_like(self.queue), dim=1))
            init.zeros_(self.queue_ptr)
            init.zeros_(self.queue_batch)
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

    def _generator(self, device, salt: int = 0) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed((self.config.mixing_seed * 1_000_003 + self.host_int("forward_count")) * 7 + salt)
        return g

    @torch.no_grad()
    def shuffled_keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Keys computed under MoCo's shuffling BN: the global batch is permuted (permutation drawn on rank 0 and
        broadcast), each process encodes its slice of the permuted batch, the keys are gathered and un-shuffled.
        Single process: the permutation is within the batch (BatchNorm then sees the same batch, as in MoCo on one
        GPU)."""
        if not self.config.shuffle_bn:
            return self.key(pixel_values)
        b = pixel_values.shape[0]
        if not is_distributed():
            perm = torch.randperm(b, generator=self._generator("cpu", 1)).to(pixel_values.device)
            keys = self.key(pixel_values[perm])
            return torch.empty_like(keys).index_copy_(0, perm, keys)
        images = all_gather(pixel_values)
        n = images.shape[0]
        perm = torch.randperm(n, generator=self._generator("cpu", 1)).to(pixel_values.device)
        broadcast(perm, src=0)
        mine = perm[rank() * b:(rank() + 1) * b]
        keys_all = all_gather(self.key(images[mine]))  # row j is the key of global image perm[j]
        unshuffled = torch.empty_like(keys_all).index_copy_(0, perm, keys_all)
        return unshuffled[rank() * b:(rank() + 1) * b]

    def mixing_active(self) -> bool:
        cfg = self.config
        return (cfg.num_mixed_negatives + cfg.num_query_mixes) > 0 and self.host_int("optimizer_step") >= cfg.mixing_start_step

    @torch.no_grad()
    def synthesize(self, q: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """Synthetic hard negatives `[B, s + s', d]` for this process's queries (draws made for the global batch)."""
        cfg = self.config
        b = q.shape[0]
        n_global = b * world_size()
        rows = slice(rank() * b, (rank() + 1) * b)
        _, hard = hard_negatives(q, queue, cfg.num_hard_negatives)
        n_hard = hard.shape[1]
        g = self._generator(q.device, 2)
        pair_index = torch.randint(n_hard, (n_global, cfg.num_mixed_negatives, 2), generator=g, device=q.device)
        alpha = torch.rand(n_global, cfg.num_mixed_negatives, generator=g, device=q.device)
        query_index = torch.randint(n_hard, (n_global, cfg.num_query_mixes), generator=g, device=q.device)
        beta = torch.rand(n_global, cfg.num_query_mixes, generator=g, device=q.device) * cfg.query_mix_max
        return mix_hard_negatives(q, hard, pair_index[rows], alpha[rows], query_index[rows], beta[rows])

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[query_view, key_view]` (two `[B, C, H, W]` tensors), or one tensor (embeddings only).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` `[B, 1 + queue_size (+ s + s')]` before the
            temperature, positive first.
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of 2 tensors, got {type(pixel_values).__name__}")
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"MoCHi needs a list of 2 views (query, key), got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        v1, v2 = views
        if v1.shape[0] != v2.shape[0]:
            raise ValueError(f"both views need the same batch size, got {v1.shape[0]} and {v2.shape[0]}")
        cfg = self.config

        features, q = self.query(v1)
        k = self.shuffled_keys(v2)
        queue = self.queue.detach().clone().to(q.dtype)
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ queue.t()
        parts = [pos, neg]
        active = self.mixing_active()
        if active:
            synthetic = self.synthesize(q, queue).to(q.dtype)
            parts.append(torch.bmm(synthetic, q.unsqueeze(2)).squeeze(2))
        logits = torch.cat(parts, dim=1)
        scaled = logits / cfg.contrastive_temperature
        if scaled.dtype in (torch.float16, torch.bfloat16):
            scaled = scaled.float()
        loss = F.cross_entropy(scaled, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        metrics = {
            "moco_loss": loss.detach(),
            "positive_similarity": pos.detach().mean(),
            "hardest_queue_similarity": neg.detach().max(dim=1).values.mean(),
            "mixing_active": torch.tensor(float(active), device=q.device),
        }
        if self.training:
            with torch.no_grad():
                self._enqueue(all_gather(k))
                self.add_host_int("forward_count")
        out = SSLOutput(loss=loss, embeddings=features.detach(), logits=logits.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: the global batch of keys (rank order) overwrites the oldest queue entries at the pointer."""
        n, length = keys.shape[0], self.config.queue_size
        if n > length:
            raise ValueError(f"the global batch ({n}) is larger than queue_size ({length})")
        largest = self.host_int("queue_batch")
        if length % n and n >= largest:
            raise ValueError(
                f"queue_size ({length}) must be divisible by the global batch size ({n}, = per-device batch x "
                f"processes), as in MoCo; choose e.g. queue_size={max(n, length // n * n)}")
        self.set_host_int("queue_batch", max(largest, n))
        ptr = self.host_int("queue_ptr")
        slots = (ptr + torch.arange(n, device=keys.device)) % length  # a smaller last batch of a stream wraps
        self.queue[slots] = keys.to(self.queue.dtype)
        self.set_host_int("queue_ptr", (ptr + n) % length)

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        m = self.config.teacher_momentum
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_projection_head, self.projection_head, m)
        self.set_host_int("optimizer_step", step)


__all__ = ["MoCHiForSelfSupervisedPretraining", "hard_negatives", "mix_hard_negatives"]
