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


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of `x` from process `src` to all processes (no gradient), returns `x` (e.g. MoCo's
    shuffle-BN permutation). No-op outside `torch.distributed`."""
    if is_distributed():
        dist.broadcast(x, src=src)
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


def nt_xent_label_masked(z1: torch.Tensor, z2: torch.Tensor, labels, temperature: float,
                         gather: bool = True) -> torch.Tensor:
    """:func:`nt_xent` in which negatives that share the anchor's label are removed from the denominator
    (G-SimCLR's pseudo-label guidance; also false-negative elimination). `labels` `[B]` are per image (both views
    of image i carry `labels[i]`); negative values mean "unknown" and never match anything; `labels=None` gives
    exactly :func:`nt_xent`. The positive (the other view of the same image) is always kept. Labels and embeddings
    are gathered from all processes like in :func:`nt_xent`."""
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    b = z1.shape[0]
    offset = rank() * b if gather else 0
    a1 = all_gather(z1, with_grad=True) if gather else z1
    a2 = all_gather(z2, with_grad=True) if gather else z2
    n = a1.shape[0]
    idx = torch.arange(b, device=z1.device) + offset
    if labels is None:
        labels = idx
    else:
        labels = torch.as_tensor(labels, device=z1.device).long().view(-1)
        if labels.shape[0] != b:
            raise ValueError(f"labels need one entry per image ({b}), got {labels.shape[0]}")
        labels = torch.where(labels < 0, -1 - idx, labels)  # unknown labels: unique negative ids
    all_labels = all_gather(labels) if gather else labels
    same = labels.unsqueeze(1) == all_labels.unsqueeze(0)  # [b, n], includes the image itself
    self_mask = F.one_hot(idx, n).bool()
    other_same = same & ~self_mask  # other images with the anchor's label: removed from both blocks
    logits_11 = (z1 @ a1.t() / temperature).masked_fill(same, float("-inf"))
    logits_22 = (z2 @ a2.t() / temperature).masked_fill(same, float("-inf"))
    logits_12 = (z1 @ a2.t() / temperature).masked_fill(other_same, float("-inf"))
    logits_21 = (z2 @ a1.t() / temperature).masked_fill(other_same, float("-inf"))
    l1 = F.cross_entropy(torch.cat([logits_12, logits_11], dim=1), idx)
    l2 = F.cross_entropy(torch.cat([logits_21, logits_22], dim=1), idx)
    return (l1 + l2) / 2


@torch.no_grad()
def kmeans(x: torch.Tensor, num_clusters: int, iterations: int = 20, seed: int = 0, gather: bool = False,
           spherical: bool = False):
    """Deterministic Lloyd k-means (k-means++ initialisation from a generator seeded with `seed`).

    `x` `[N, D]`; with `gather=True` every process contributes its rows and all processes get the k-means of the
    concatenation (rank order), so N processes compute what one computes on the full set. `spherical=True`
    L2-normalizes the centroids after each update (cosine k-means on normalized data). Empty clusters keep their
    previous centroid. Returns `(centroids [K, D], assignments [N_total])`."""
    if gather:
        x = all_gather(x)
    x = x.detach().float()
    n = x.shape[0]
    if n < num_clusters:
        raise ValueError(f"k-means needs at least num_clusters={num_clusters} points, got {n}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    first = int(torch.randint(n, (1,), generator=g))
    centroids = [x[first]]
    closest = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(1, num_clusters):
        probs = closest.clamp_min(0).cpu().double()
        total = float(probs.sum())
        if total <= 0:
            pick = int(torch.randint(n, (1,), generator=g))
        else:
            pick = int(torch.multinomial(probs / total, 1, generator=g))
        centroids.append(x[pick])
        closest = torch.minimum(closest, ((x - x[pick]) ** 2).sum(dim=1))
    c = torch.stack(centroids)

    def assign(c):
        return (x @ c.t() - 0.5 * (c * c).sum(dim=1)).argmax(dim=1)

    for _ in range(iterations):
        labels = assign(c)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_clusters)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1)
        if spherical:
            c = F.normalize(c, dim=1)
    return c, assign(c)


def normalized_pixel_targets(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalized pixel targets (MAE's `norm_pix_loss`): zero mean, unit variance per patch."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


__all__ = ["is_distributed", "world_size", "rank", "all_gather", "all_reduce", "sinkhorn_knopp",
           "soft_cross_entropy", "info_nce", "nt_xent", "normalized_pixel_targets", "broadcast",
           "nt_xent_label_masked", "kmeans"]


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale, label_smoothing: float = 0.0,
                               gather: bool = True):
    """Symmetric InfoNCE between paired rows of `a` and `b` `[B, D]` (expected L2-normalised; row i of each is a
    positive pair), `(CE(s a B^T, y) + CE(s b A^T, y)) / 2`, with optional label smoothing of both cross entropies
    (ALIGN uses 0.1). Under DDP each process scores its rows against the rows of all processes
    (`all_gather(with_grad=True)`), targets offset by `rank * B`, so N processes give the single-process loss and
    gradients on the concatenated batch (label smoothing spreads over the global batch, as on one process).
    Returns `(loss, logits_a_to_b [B, N*B])`."""
    all_b = all_gather(b, with_grad=True) if gather else b
    all_a = all_gather(a, with_grad=True) if gather else a
    logits_ab = logit_scale * a @ all_b.t()
    logits_ba = logit_scale * b @ all_a.t()
    n = a.shape[0]
    targets = torch.arange(n, device=a.device) + (rank() * n if gather else 0)
    loss = (F.cross_entropy(logits_ab.float(), targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_ba.float(), targets, label_smoothing=label_smoothing)) / 2
    return loss, logits_ab


__all__ += ["symmetric_contrastive_loss"]


def hinge_ranking_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, margin: float = 0.2,
                       max_violation: bool = True, reduction: str = "sum", gather: bool = True):
    """Bidirectional hinge (triplet) ranking loss of paired, L2-normalised `image_embeds` / `text_embeds` `[B, D]`
    (row i of each is a matching pair), as in VSE++ (Faghri et al., BMVC 2018) and the visually grounded
    sentence encoders built on it.

    For image i, every non-matching caption j costs `[margin + s(i, j) - s(i, i)]_+` (caption retrieval); for
    caption i every non-matching image j costs `[margin + s(j, i) - s(i, i)]_+` (image retrieval).
    `max_violation=True` keeps only the hardest negative of each query (VSE++ "MH"), otherwise all hinges are
    summed ("SH", the VSE0 loss of Kiros et al.). Negatives come from the whole DDP-gathered batch (with gradient):
    each process scores its queries against the gathered other modality. `reduction="sum"` (VSE++ official code:
    sum over the batch) is scaled by the world size so that DDP's gradient averaging reproduces the single-process
    sum over the global batch; `"mean"` divides by the local batch (= global mean after averaging).
    Returns `(loss, scores_i2t [B, N*B])`."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    b = image_embeds.shape[0]
    all_text = all_gather(text_embeds, with_grad=True) if gather else text_embeds
    all_image = all_gather(image_embeds, with_grad=True) if gather else image_embeds
    offset = rank() * b if gather else 0
    positive = (image_embeds * text_embeds).sum(dim=1, keepdim=True)  # s(i, i)
    scores_i2t = image_embeds @ all_text.t()  # [b, N]
    scores_t2i = text_embeds @ all_image.t()
    self_mask = F.one_hot(torch.arange(b, device=image_embeds.device) + offset, all_text.shape[0]).bool()
    cost_caption = (margin + scores_i2t - positive).clamp(min=0).masked_fill(self_mask, 0.0)
    cost_image = (margin + scores_t2i - positive).clamp(min=0).masked_fill(self_mask, 0.0)
    if max_violation:
        cost_caption = cost_caption.max(dim=1).values
        cost_image = cost_image.max(dim=1).values
    total = cost_caption.sum() + cost_image.sum()
    loss = total * (world_size() if gather else 1) if reduction == "sum" else total / b
    return loss, scores_i2t


__all__ += ["hinge_ranking_loss"]
