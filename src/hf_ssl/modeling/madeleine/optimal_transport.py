"""Graph optimal transport (GOT; Chen et al., "Graph Optimal Transport for Cross-Domain Alignment", ICML 2020) as used
by MADELEINE's local loss: Wasserstein distance (IPOT solver) between two token sets plus the Gromov-Wasserstein
distance between their intra-set cosine graphs.

Everything is per sample except the sparsifying threshold of the cosine costs (`min + 0.1 (max - min)` over the whole
batch, official `cost_matrix_batch_torch` / `cos_batch_torch`): its min / max go through `losses.all_reduce`, so N
processes use the threshold of the global batch (treated as a constant, see the package docstring)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..losses import all_reduce


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`1 - cos(x_i, y_j)` `[B, n, m]` for token sets `x` `[B, n, D]`, `y` `[B, m, D]`."""
    return 1 - F.normalize(x, dim=-1, eps=1e-12) @ F.normalize(y, dim=-1, eps=1e-12).transpose(1, 2)


def sparsify_cost(cost: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """`relu(cost - (min + beta (max - min)))` with min / max over the global batch (all processes), detached."""
    lo = all_reduce(-cost.detach().min().clone().reshape(1), "max").neg()
    hi = all_reduce(cost.detach().max().clone().reshape(1), "max")
    return F.relu(cost - (lo + beta * (hi - lo)))


def ipot_plan(cost: torch.Tensor, beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """Inexact proximal point OT plan (Xie et al., 2019; official `IPOT_torch_batch_uniform`) between uniform
    marginals: `T` `[B, n, m]` with rows summing to 1/n and columns to 1/m at convergence (columns exactly after every
    iteration). Differentiable (unrolled) in `cost`, as in the official code."""
    b, n, m = cost.shape
    sigma = torch.full((b, m, 1), 1.0 / m, device=cost.device, dtype=cost.dtype)
    plan = torch.ones(b, n, m, device=cost.device, dtype=cost.dtype)
    kernel = torch.exp(-cost / beta)
    for _ in range(iterations):
        q = kernel * plan
        delta = 1.0 / (n * torch.bmm(q, sigma))
        a = torch.bmm(q.transpose(1, 2), delta)
        sigma = 1.0 / (m * a)
        plan = delta * q * sigma.transpose(1, 2)
    return plan


def wasserstein_distance(cost: torch.Tensor, iterations: int = 30, beta: float = 0.5) -> torch.Tensor:
    """Per-sample `<C, T>` `[B]` with the IPOT plan of `C` (official `IPOT_distance_torch_batch_uniform`)."""
    plan = ipot_plan(cost, beta=beta, iterations=iterations)
    return (cost * plan).sum(dim=(1, 2))


def gromov_wasserstein_distance(x: torch.Tensor, y: torch.Tensor, lamda: float = 0.1, iterations: int = 5,
                                ot_iterations: int = 20, threshold_beta: float = 0.1) -> torch.Tensor:
    """Per-sample Gromov-Wasserstein distance `[B]` between the sparsified cosine graphs of `x` `[B, n, D]` and `y`
    `[B, m, D]` (official `GW_distance_uniform`): the transport plan is refined by `iterations` IPOT solves of the
    linearised GW cost and detached; the distance is `<C_gamma, gamma>`."""
    cs = sparsify_cost(cosine_cost(x, x), threshold_beta)
    ct = sparsify_cost(cosine_cost(y, y), threshold_beta)
    b, n, m = x.shape[0], x.shape[1], y.shape[1]
    p = torch.full((b, n, 1), 1.0 / n, device=x.device, dtype=cs.dtype)
    q = torch.full((b, m, 1), 1.0 / m, device=x.device, dtype=cs.dtype)
    ones_m = torch.ones(b, m, 1, device=x.device, dtype=cs.dtype)
    ones_n = torch.ones(b, n, 1, device=x.device, dtype=cs.dtype)
    cst = torch.bmm(torch.bmm(cs ** 2, p), ones_m.transpose(1, 2)) + \
        torch.bmm(ones_n, torch.bmm(q.transpose(1, 2), (ct ** 2).transpose(1, 2)))
    gamma = torch.bmm(p, q.transpose(1, 2))
    for _ in range(iterations):
        c_gamma = cst - 2 * torch.bmm(torch.bmm(cs, gamma), ct.transpose(1, 2))
        gamma = ipot_plan(c_gamma, beta=lamda, iterations=ot_iterations)
    gamma = gamma.detach()
    c_gamma = cst - 2 * torch.bmm(torch.bmm(cs, gamma), ct.transpose(1, 2))
    return (c_gamma * gamma).sum(dim=(1, 2))


def graph_optimal_transport(x: torch.Tensor, y: torch.Tensor, subsample: Optional[int] = 256,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample GOT distance `[B]` = Wasserstein (IPOT, 30 iterations, sparsified cosine cost) + Gromov-Wasserstein
    between token sets `x`, `y` `[B, N, D]` (official `GOT`). `subsample`: the same random `subsample` token
    positions are kept in both sets (official: 256, to bound memory); None keeps all."""
    if subsample is not None and subsample < x.shape[1]:
        keep = torch.randperm(x.shape[1], generator=generator, device="cpu")[:subsample].to(x.device)
        x, y = x[:, keep], y[:, keep]
    cost = sparsify_cost(cosine_cost(x, y), 0.1)
    wd = wasserstein_distance(cost, iterations=30)
    gwd = gromov_wasserstein_distance(x, y)
    return wd + gwd


__all__ = ["cosine_cost", "sparsify_cost", "ipot_plan", "wasserstein_distance", "gromov_wasserstein_distance",
           "graph_optimal_transport"]
