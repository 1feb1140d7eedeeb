"""Losses and the one place where cross-process (DDP) communication happens.

Any loss that uses statistics across the batch (Sinkhorn-Knopp, negatives, queues, centering) goes
through :func:`all_gather` / :func:`all_reduce` here, so that an N-process run computes the same thing as
one process on the concatenated batch. Both are no-ops outside `torch.distributed`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------------
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every process its slice of the summed gradient, so the result is
    what a single process would get from the concatenated batch (as in SimCLR/MoCo v3/CLIP DDP code)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def all_gather(x: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
    """Concatenate `x` from all processes along dim 0 (in rank order). `with_grad=True` lets gradients flow
    back to the process that produced each slice; otherwise the result is detached."""
    if not is_distributed():
        return x if with_grad else x.detach()
    if with_grad:
        return torch.cat(_AllGatherWithGrad.apply(x), dim=0)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum/mean/max over processes (no gradient), returns `x`."""
    if not is_distributed():
        return x
    if op == "max":
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    else:
        dist.all_reduce(x)
        if op == "mean":
            x /= dist.get_world_size()
    return x


# ----------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft assignments (SwAV, Caron et al. 2020, Algorithm 1, distributed).

    `scores` `[B, K]` are prototype scores of this process's batch. Returns `Q` `[B, K]` whose rows sum to 1
    and whose columns (over the *global* batch) each sum to B_total / K after the last iteration.
    """
    q = torch.exp((scores.float() - all_reduce(scores.float().max().clone(), "max")) / epsilon).t()  # [K, B]
    b_total = q.shape[1] * world_size()
    k = q.shape[0]
    q /= all_reduce(q.sum().clone())
    for _ in range(iterations):
        row = all_reduce(q.sum(dim=1, keepdim=True))  # prototype marginals, global
        q /= row
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # sample marginals are local
        q /= b_total
    q *= b_total
    return q.t()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean over samples of `-sum_k targets_k log softmax(logits)_k`."""
    return -(targets * F.log_softmax(logits, dim=dim)).sum(dim=dim).mean()


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive per query and a shared bank of negatives (MoCo).

    query/positive `[B, D]`, negatives `[K, D]`, all expected L2-normalized."""
    pos = (query * positive).sum(dim=1, keepdim=True)
    neg = query @ negatives.t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """SimCLR's normalized-temperature cross entropy over 2N views; negatives come from all processes."""
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    b = z1.shape[0]
    offset = rank() * b if gather else 0
    a1 = all_gather(z1, with_grad=True) if gather else z1
    a2 = all_gather(z2, with_grad=True) if gather else z2
    n = a1.shape[0]
    idx = torch.arange(b, device=z1.device) + offset
    logits_11 = z1 @ a1.t() / temperature
    logits_12 = z1 @ a2.t() / temperature
    logits_22 = z2 @ a2.t() / temperature
    logits_21 = z2 @ a1.t() / temperature
    self_mask = F.one_hot(idx, n).bool()
    logits_11 = logits_11.masked_fill(self_mask, float("-inf"))
    logits_22 = logits_22.masked_fill(self_mask, float("-inf"))
    l1 = F.cross_entropy(torch.cat([logits_12, logits_11], dim=1), idx)
    l2 = F.cross_entropy(torch.cat([logits_21, logits_22], dim=1), idx)
    return (l1 + l2) / 2


def normalized_pixel_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalized pixel targets (MAE's `norm_pix_loss`): zero mean, unit variance per patch."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


__all__ = ["is_distributed", "world_size", "rank", "all_gather", "all_reduce", "sinkhorn_knopp",
           "soft_cross_entropy", "info_nce", "nt_xent", "normalized_pixel_targets"]
