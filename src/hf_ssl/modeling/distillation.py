"""Shared self-distillation core (DINO-style teacher/student), used by every method that distils an EMA
teacher's output distribution into a student (DINO/iBOT-style centering + sharpening).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021:
* `DINOHead`: 3-layer MLP (GELU, hidden 2048) -> 256-d bottleneck -> L2 normalisation -> a weight-normalised
  linear layer to K prototypes whose norm is fixed to 1 by default (`norm_last_layer=True`).
* `SelfDistillationLoss`: teacher probabilities `softmax((t - center) / tau_t)` (centering + sharpening),
  student log-probabilities `log_softmax(s / tau_s)`, cross entropy summed over every (teacher global view,
  student view) pair with different view indices and averaged over pairs. The center is an EMA of the
  teacher's batch-mean output over ALL processes (`all_reduce`), updated after the loss is computed.
* Teacher temperature warm-up and the EMA momentum schedule come from `momentum.warmup_then_constant` and
  `momentum.cosine_schedule`; the teacher is an EMA copy updated with `momentum.ema_update_`.
* First-epoch freezing of the last layer: `SSLTrainingArguments.freeze_last_layer_steps` (the trainer's
  `FreezeLastLayerCallback` applies `cancel_last_layer_gradients_` to every `DINOHead` after clipping).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .losses import all_reduce, world_size


class NormalizedLinear(nn.Module):
    """`y = x @ (g * v / ||v||)^T` with one row per output; `g` fixed to 1 unless `learn_scale` (this is
    weight normalisation with DINO's `norm_last_layer` option, written without torch parametrizations so the
    state dict stays two plain tensors)."""

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        # Official DINO builds the last layer after `DINOHead.apply(_init_weights)`, so its direction `v` keeps
        # `nn.Linear`'s default init (kaiming-uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), row norm ~ 1/sqrt(3))
        # rather than the MLP's truncated normal (std 0.02, row norm 0.02 * sqrt(in)). Because the forward pass
        # normalises each row, the init scale only sets how fast the prototypes turn: an (Adam) step of size lr moves
        # a row's direction by about lr / ||v||, i.e. 3.6x faster with std 0.02 at in_dim 64 than officially.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.scale = nn.Parameter(torch.ones(out_dim, 1)) if learn_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=1)
        if self.scale is not None:
            w = w * self.scale
        return x @ w.t()


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        layers: List[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class SelfDistillationLoss(nn.Module):
    """DINO's cross-view distillation loss with a DDP-synchronised center (buffer, saved with the model)."""

    def __init__(self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if student_temperature <= 0 or not 0 <= center_momentum < 1:
            raise ValueError("student_temperature must be > 0 and center_momentum in [0, 1)")
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probabilities(self, teacher_logits: torch.Tensor, teacher_temperature: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temperature, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher logits over the global batch."""
        batch_sum = all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    def forward(self, student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor],
                teacher_temperature: float, update_center: bool = True,
                teacher_view_index: Optional[Sequence[int]] = None) -> torch.Tensor:
        """`student_logits[v]` `[B, K]` for every view v; `teacher_logits[i]` `[B, K]` for the teacher views,
        which are student views `teacher_view_index[i]` (default: the first ones). Pairs of the same view
        are skipped."""
        teacher_view_index = list(teacher_view_index or range(len(teacher_logits)))
        targets = [self.teacher_probabilities(t, teacher_temperature) for t in teacher_logits]
        # each student view's log-probabilities once (not once per teacher view they are paired with)
        log_probs = [F.log_softmax(s.float() / self.student_temperature, dim=-1) for s in student_logits]
        total, pairs = 0.0, 0
        for i, q in zip(teacher_view_index, targets):
            for v, log_p in enumerate(log_probs):
                if v == i:
                    continue
                total = total + torch.sum(-q * log_p, dim=-1).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("self-distillation needs at least two views")
        if update_center and self.training:
            self.update_center(torch.cat(list(teacher_logits)))
        return total / pairs


def cancel_last_layer_gradients_(head: DINOHead) -> None:
    """DINO freezes the last layer during the first epoch: drop its gradients before the optimizer step. Every last
    layer of the head is frozen (children named `last_layer*`, e.g. a separate patch last layer as in iBOT / Alice,
    like the official `"last_layer" in name` test); a plain `DINOHead` has just `last_layer`."""
    for name, module in head.named_children():
        if name.startswith("last_layer"):
            for p in module.parameters():
                p.grad = None


def matched_region_distillation(student_logits: torch.Tensor, student_features: torch.Tensor,
                                teacher_probs: torch.Tensor, teacher_features: torch.Tensor,
                                student_temperature: float) -> torch.Tensor:
    """Region-level (patch-token) self-distillation with feature matching (EsViT's region loss, Li et al., ICLR 2022;
    also CMD's intra-level region term).

    `student_logits [B, Ns, K]` / `student_features [B, Ns, D]`: one view's patch-head outputs and backbone patch
    features; `teacher_probs [B, Nt, K]` (already centred and sharpened, e.g. `SelfDistillationLoss.
    teacher_probabilities`) and `teacher_features [B, Nt, D]` of another view. Every student patch is paired with
    the teacher patch whose backbone feature has the highest cosine similarity (no gradient through the matching),
    and the loss is the cross entropy `-sum_k q_k log softmax(s / tau_s)_k` averaged over student patches and images.
    """
    if student_logits.dim() != 3 or teacher_probs.dim() != 3:
        raise ValueError("region logits/probabilities must be [batch, patches, prototypes]")
    if student_logits.shape[0] != teacher_probs.shape[0] or student_logits.shape[-1] != teacher_probs.shape[-1]:
        raise ValueError(f"student {list(student_logits.shape)} and teacher {list(teacher_probs.shape)} region outputs "
                         "need the same batch size and number of prototypes")
    with torch.no_grad():
        sim = F.normalize(student_features.detach().float(), dim=-1) @ \
            F.normalize(teacher_features.detach().float(), dim=-1).transpose(1, 2)  # [B, Ns, Nt]
        match = sim.argmax(dim=-1)  # [B, Ns]
        targets = torch.gather(teacher_probs.float(), 1,
                               match.unsqueeze(-1).expand(-1, -1, teacher_probs.shape[-1]))
    log_p = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
    return torch.sum(-targets * log_p, dim=-1).mean()


def masked_patch_distillation(student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
                              student_temperature: float) -> torch.Tensor:
    """iBOT's masked-image-modeling term (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
    ICLR 2022; official `iBOTLoss`): the student sees a view whose masked patches were replaced by a mask token and
    predicts, at every masked position, the EMA teacher's (centred, sharpened) patch distribution of the same
    *unmasked* view.

    `student_logits [B, N, K]`, `teacher_probs [B, N, K]` (e.g. `SelfDistillationLoss.teacher_probabilities` of a
    patch-level center), `mask [B, N]` bool (True = masked). Per image the cross entropy
    `-sum_k q_k log softmax(s / tau_s)_k` is averaged over its masked patches (an image without masked patches
    contributes 0), then averaged over the batch, as in the official code. Only masked positions carry loss."""
    if student_logits.dim() != 3 or teacher_probs.shape != student_logits.shape:
        raise ValueError(f"student logits {list(student_logits.shape)} and teacher probabilities "
                         f"{list(teacher_probs.shape)} must both be [batch, patches, prototypes]")
    if tuple(mask.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(f"mask must be [batch, patches] = {list(student_logits.shape[:2])}, got {list(mask.shape)}")
    mask = mask.float()
    ce = torch.sum(-teacher_probs.detach().float() * F.log_softmax(student_logits.float() / student_temperature,
                                                                  dim=-1), dim=-1)  # [B, N]
    per_image = (ce * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_image.mean()


__all__ = ["NormalizedLinear", "DINOHead", "SelfDistillationLoss", "cancel_last_layer_gradients_",
           "matched_region_distillation", "masked_patch_distillation"]
