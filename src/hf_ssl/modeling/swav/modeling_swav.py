"""SwAV model: multi-crop encoder, projection head, prototypes, Sinkhorn codes and swapped prediction.

Data flow of one step (V crops of B images each, crops grouped by resolution for the encoder):

    crops --encoder (one call per resolution)--> h [V*B, D] --projection MLP--> --L2 normalize--> z [V*B, d]
    z --prototypes C (unit rows, no gradient during the first `freeze_prototypes_steps` steps)--> scores [V*B, K]
    for each crop s in crops_for_assign:  q_s = Sinkhorn([queue_s C^T ; scores_s].detach())[-B:]   (no gradient)
        loss_s = mean over v != s of CE(q_s, softmax(scores_v / tau))
    loss = mean_s loss_s ;  queue_s <- [all_gather(z_s) ; queue_s][:L]   (when the queue runs)
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encode, encode_multicrop, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead, Prototypes
from ..losses import all_gather, rank, sinkhorn_knopp, soft_cross_entropy, world_size
from ..outputs import SSLOutput
from .configuration_swav import SwAVConfig


class SwAVForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SwAV (Caron et al., NeurIPS 2020) on any stock transformers backbone.

    Attributes:
        encoder: the stock backbone (what `export_encoder` writes).
        projection_head: `MLPHead` (official: Linear(D, 2048)-BN-ReLU-Linear(2048, 128)).
        prototypes: `Prototypes` `[K, d]`, kept on the unit sphere (normalized at init and after every optimizer
            step in `on_step_end`, which is what the official per-iteration normalization amounts to).
        optimizer_step: persistent buffer, the number of optimizer steps taken (drives prototype freezing and the
            queue start; saved in checkpoints so resuming continues the schedule).
        queue: persistent buffer `[len(crops_for_assign), queue_length, d]` (only when `queue_length > 0`), newest
            embeddings first. It holds the embeddings of *all* processes (identical on every rank); in the
            distributed Sinkhorn each rank prepends its own slice of `queue_length / world_size` rows, so the
            columns over all ranks are exactly the official per-rank queues.
    """

    config_class = SwAVConfig

    def __init__(self, config: SwAVConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.projection_head = MLPHead(
            feature_dim(config.backbone_config),
            config.projection_hidden_dim,
            config.projection_dim,
            num_layers=config.projection_num_layers,
            batch_norm=config.projection_batch_norm,
        )
        self.prototypes = Prototypes(config.projection_dim, config.num_prototypes)
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        if config.queue_length > 0:
            self.register_buffer(
                "queue", torch.zeros(len(config.crops_for_assign), config.queue_length, config.projection_dim)
            )
        else:
            self.queue = None
        # Host-side flag "the queue is full", so the training step reads no device tensor (a device->host sync per
        # step on GPU); reset whenever a state dict is loaded (resume). The step counter uses the shared mirror
        # (`host_int("optimizer_step")`).
        self._host_queue_full = False
        self.register_load_state_dict_post_hook(SwAVForSelfSupervisedPretraining._reset_host_mirrors)
        self.post_init()

    @staticmethod
    def _reset_host_mirrors(module, incompatible_keys=None) -> None:
        module._host_queue_full = False

    # -- initialisation (official: PyTorch-default Linear init for head and prototypes, prototypes normalized) ------
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, Prototypes):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.copy_(module.weight, F.normalize(module.weight.detach().float(), dim=1).to(module.weight.dtype))
        else:
            super()._init_weights(module)
        if module is self:
            self._reset_host_mirrors(self)
            init.zeros_(self.optimizer_step)
            if self.queue is not None:
                init.zeros_(self.queue)

    # -- schedule state ---------------------------------------------------------------------------------------
    def prototypes_frozen(self, step: Optional[int] = None) -> bool:
        """True while the prototypes receive no gradient (the first `freeze_prototypes_steps` optimizer steps)."""
        step = self.current_step() if step is None else step
        return step < self.config.freeze_prototypes_steps

    def current_step(self) -> int:
        """Optimizer steps taken (host mirror of the `optimizer_step` buffer; one device read after a load)."""
        return self.host_int("optimizer_step")

    def queue_is_full(self) -> bool:
        """Official `use_the_queue` test: the queue's last row is non-zero (it has been filled completely). Once
        true it stays true (rows are only ever replaced), so the device is read only until the queue fills."""
        if self.queue is None:
            return False
        if not self._host_queue_full:
            self._host_queue_full = bool((self.queue[:, -1] != 0).any())
        return self._host_queue_full

    # -- building blocks --------------------------------------------------------------------------------------
    def encode_crops(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled encoder features `[V*B, D]` of all crops in order; consecutive crops of the same resolution go
        through the encoder in one call (the official multi-resolution forward)."""
        return encode_multicrop(self.encoder, crops, self.config.feature_pooling)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalized projections `z` (the official `normalize=True` before the prototypes)."""
        return F.normalize(self.projection_head(features), dim=1)

    def prototype_scores(self, z: torch.Tensor, frozen: Optional[bool] = None) -> torch.Tensor:
        """`z @ C^T`; the prototypes are detached (no gradient) while frozen."""
        weight = self.prototypes.weight
        if self.prototypes_frozen() if frozen is None else frozen:
            weight = weight.detach()
        return F.linear(z, weight)

    @torch.no_grad()
    def compute_codes(self, scores: torch.Tensor, queue_scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sinkhorn-Knopp codes `q` `[B, K]` of one crop, without gradient. With `queue_scores` `[L', K]` the
        problem is solved on `[queue; batch]` and only the batch rows are kept (official `[-bs:]`). Equipartition
        runs over all processes (`losses.sinkhorn_knopp`)."""
        out = scores.detach().float()
        if queue_scores is not None:
            out = torch.cat([queue_scores.detach().float(), out], dim=0)
        q = sinkhorn_knopp(out, self.config.sinkhorn_epsilon, self.config.sinkhorn_iterations)
        return q[-scores.shape[0]:]

    def swapped_prediction_loss(self, scores: Sequence[torch.Tensor], codes: Dict[int, torch.Tensor]) -> torch.Tensor:
        """Official averaging: for each assigned crop s, the mean over the other crops v != s of
        `-mean_b sum_k q_s log softmax(scores_v / tau)`, then the mean over assigned crops."""
        n = len(scores)
        if n < 2:
            raise ValueError("the swapped prediction needs at least 2 crops")
        tau = self.config.swav_temperature
        total = 0.0
        for crop_id, q in codes.items():
            subloss = 0.0
            for v in range(n):
                if v != crop_id:
                    subloss = subloss + soft_cross_entropy(scores[v].float() / tau, q)
            total = total + subloss / (n - 1)
        return total / len(codes)

    def _queue_rows(self, index: int) -> torch.Tensor:
        """This rank's share of queue `index` (all of it in a single process)."""
        length = self.queue.shape[1]
        per_rank = length // world_size()
        start = rank() * per_rank
        return self.queue[index, start:start + per_rank]

    def _check_queue_batch(self, batch_size: int) -> None:
        global_batch = batch_size * world_size()
        length = self.config.queue_length
        if length % global_batch:
            raise ValueError(
                f"queue_length ({length}) must be a multiple of the global batch size ({batch_size} per process x "
                f"{world_size()} processes = {global_batch}), as in the official code. Change queue_length, or the "
                "batch size; use dataloader_drop_last=True so that no partial batch reaches the queue."
            )

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor, batch_size: int) -> None:
        """Push the current batch's normalized embeddings of each assigned crop (from every process, in rank order)
        to the front of its queue, dropping the oldest (official round-robin update)."""
        for i, crop_id in enumerate(self.config.crops_for_assign):
            new = all_gather(z[crop_id * batch_size:(crop_id + 1) * batch_size].detach()).to(self.queue.dtype)
            n = new.shape[0]
            self.queue[i, n:] = self.queue[i, :-n].clone()
            self.queue[i, :n] = new

    def _check_crops(self, pixel_values) -> List[torch.Tensor]:
        crops = list(pixel_values)
        if len(crops) < 2:
            raise ValueError(
                f"SwAV needs a list of at least 2 crops (got {len(crops)}); pass a single tensor to get embeddings only."
            )
        for i, crop in enumerate(crops):
            self.check_pixel_values(crop, name=f"pixel_values[{i}]")
        batch = crops[0].shape[0]
        if any(c.shape[0] != batch for c in crops):
            raise ValueError(f"every crop needs the same batch size, got {[c.shape[0] for c in crops]}")
        if max(self.config.crops_for_assign) >= len(crops):
            raise ValueError(
                f"crops_for_assign {self.config.crops_for_assign} refers to crops beyond the {len(crops)} given"
            )
        return crops

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: a list of crops, one `[B, C, H, W]` tensor per crop (the first `num_global` are the global
                crops, the rest local; same-size crops are encoded together), or a single `[B, C, H, W]` tensor, for
                which only `embeddings` are returned (no loss).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = pooled encoder features of the first crop
            (detached), `logits` = prototype scores of crop 0 `[B, K]`, `metrics` = detached scalars (`swav_loss`,
            `assignment_entropy`, `prototype_usage`, `prototypes_frozen`, `queue_in_use`).
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            embeddings = encode(self.encoder, pixel_values, self.config.feature_pooling)
            output = SSLOutput(embeddings=embeddings)
            return output if return_dict else output.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of tensors, got {type(pixel_values).__name__}")

        crops = self._check_crops(pixel_values)
        bs = crops[0].shape[0]
        step = self.current_step()
        frozen = self.prototypes_frozen(step)
        queue_running = self.queue is not None and step >= self.config.queue_start_step
        if queue_running:
            self._check_queue_batch(bs)
        use_queue = queue_running and self.queue_is_full()

        features = self.encode_crops(crops)
        z = self.project(features)
        scores = self.prototype_scores(z, frozen=frozen)
        crop_scores = list(scores.split(bs, dim=0))

        codes: Dict[int, torch.Tensor] = {}
        with torch.no_grad():
            prototypes = self.prototypes.weight.detach().float()
            for i, crop_id in enumerate(self.config.crops_for_assign):
                queue_scores = self._queue_rows(i).float() @ prototypes.t() if use_queue else None
                codes[crop_id] = self.compute_codes(crop_scores[crop_id], queue_scores)
        loss = self.swapped_prediction_loss(crop_scores, codes)

        if queue_running and self.training:
            self._enqueue(z, bs)

        with torch.no_grad():
            q_all = torch.cat(list(codes.values()), dim=0)
            entropy = -torch.special.xlogy(q_all, q_all).sum(dim=1).mean()
            usage = torch.zeros(self.config.num_prototypes, device=q_all.device)
            usage.scatter_(0, q_all.argmax(dim=1), 1.0)
        metrics = {
            "swav_loss": loss.detach(),
            "assignment_entropy": entropy,
            "prototype_usage": usage.mean(),
            "prototypes_frozen": torch.tensor(float(frozen), device=loss.device),
            "queue_in_use": torch.tensor(float(use_queue), device=loss.device),
        }
        output = SSLOutput(loss=loss, embeddings=features[:bs].detach(), logits=crop_scores[0], metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """After each optimizer step: record the step (prototype freezing, queue start) and project the prototypes
        back onto the unit sphere (the official code normalizes them at the start of every iteration)."""
        self.set_host_int("optimizer_step", step)
        self.prototypes.normalize_()


__all__ = ["SwAVForSelfSupervisedPretraining"]
