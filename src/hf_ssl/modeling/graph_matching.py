"""Graph matching between two graphs with the same number of nodes: a combinatorial (hard) quadratic-assignment
solver made differentiable by blackbox differentiation (Vlastelica et al., "Differentiation of Blackbox
Combinatorial Solvers", ICLR 2020; used for deep graph matching by Rolinek et al., "Deep Graph Matching via Blackbox
Differentiation of Combinatorial Solvers", ECCV 2020), and an entropic (Sinkhorn / graduated-assignment) relaxation.
Used by LVM-Med; nothing here is method specific.

Problem. Two graphs on N nodes each: symmetric 0/1 adjacencies `A_s`, `A_t` `[N, N]` (e.g. k-NN graphs) and node
features `U_s`, `U_t` `[N, D]`. A matching is a permutation matrix `X` (`X[i, j] = 1`: node i of graph s <-> node j of
graph t). Its score is

    J(X) = <S, X> + beta * Q(X)                                      (maximised)
    Q(X) = sum_{i,j,k,l} X_ij X_kl A_s[i,k] A_t[j,l] <u_i - u_k, v_j - v_l>

with vertex affinities `S` `[N, N]` (first order) and, as second-order (edge) affinity, the inner product of the two
edges' difference vectors (BB-GM's node-to-edge features). With `P = U_s U_t^T` the edge affinity is
`P_ij - P_il - P_kj + P_kl`, which gives the O(N^3) closed form (A symmetric)

    Q(X) = 2 * ( sum(X * P * (A_s X A_t)) - sum(P * (A_s X) * (X A_t)) )

and its gradient `dQ/dX = 2 K X`, so the N^2 x N^2 affinity matrix `K` of Lawler's QAP is never built. `Q` is
a symmetric quadratic form in `X` and linear in `P`.

Hard solver (`solve_quadratic_assignment`): integer projected fixed point (IPFP, Leordeanu et al., NIPS 2009) started
from the linear assignment of `S`: repeatedly the linear assignment (Hungarian algorithm,
`scipy.optimize.linear_sum_assignment`) of the gradient `S + beta * dQ/dX` gives a discrete direction, an exact line
search on the quadratic score moves the continuous iterate, and the best permutation seen is returned.
Deterministic. The official LVM-Med code calls a dual block-coordinate-ascent solver from LPMP (Swoboda et al.,
CVPR 2017) instead; any solver that maps (S, P) to a permutation fits the same blackbox gradient.

Blackbox gradient (`BlackboxGraphMatching`): for a loss L(X), the backward pass solves again with the vertex scores
perturbed by the incoming gradient, `X' = solve(S - lambda * dL/dX, P)`, and returns
`dL/dS = (X - X') / lambda` and `dL/dP = (dQ/dP(X) - dQ/dP(X')) / lambda` (the gradient of the piecewise-linear
interpolation of L; for a minimisation solver the usual form is `-(y(w) - y(w'))/lambda` with `w' = w + lambda dL/dy`).

Relaxation (`graduated_assignment`): a few fixed-point steps X <- Sinkhorn((S + beta dQ/dX) / tau) (Gold & Rangarajan,
1996) with log-domain Sinkhorn; X is doubly stochastic and differentiable by ordinary autograd (unrolled).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

MATCHING_SOLVERS = ("blackbox", "sinkhorn")


# ----------------------------------------------------------------------------------------------------
# the quadratic term in closed form
# ----------------------------------------------------------------------------------------------------
def quadratic_score(x: torch.Tensor, p: torch.Tensor, a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """`Q(X)` of the module docstring (scalar). `x`, `p`, `a_s`, `a_t` are `[N, N]`; the adjacencies are symmetric."""
    asx = a_s @ x
    xat = x @ a_t
    return 2 * ((x * p * (asx @ a_t)).sum() - (p * asx * xat).sum())


def quadratic_gradient(x: torch.Tensor, p: torch.Tensor, a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """`dQ/dX` (`[N, N]`) in closed form (equals autograd of :func:`quadratic_score`)."""
    asx = a_s @ x
    xat = x @ a_t
    return 2 * (p * (asx @ a_t) + a_s @ (x * p) @ a_t - a_s @ (p * xat) - (p * asx) @ a_t)


def matching_score(x, s, p, a_s, a_t, beta: float) -> torch.Tensor:
    """`J(X) = <S, X> + beta * Q(X)`."""
    out = (s * x).sum()
    if beta:
        out = out + beta * quadratic_score(x, p, a_s, a_t)
    return out


# ----------------------------------------------------------------------------------------------------
# hard solvers
# ----------------------------------------------------------------------------------------------------
def linear_assignment(scores: torch.Tensor) -> torch.Tensor:
    """Permutation matrix maximising `<scores, X>` (Hungarian algorithm, exact), same device/dtype as `scores`."""
    from scipy.optimize import linear_sum_assignment

    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"linear_assignment needs a square [N, N] score matrix, got {tuple(scores.shape)}")
    arr = scores.detach().double().cpu().numpy()
    if not np.isfinite(arr).all():
        raise ValueError("linear_assignment got non-finite scores")
    rows, cols = linear_sum_assignment(arr, maximize=True)
    x = torch.zeros_like(scores, dtype=scores.dtype if scores.is_floating_point() else torch.float32)
    x[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = 1
    return x


@torch.no_grad()
def solve_quadratic_assignment(s: torch.Tensor, p: Optional[torch.Tensor] = None, a_s: Optional[torch.Tensor] = None,
                               a_t: Optional[torch.Tensor] = None, beta: float = 0.0,
                               iterations: int = 10) -> torch.Tensor:
    """Permutation matrix (approximately) maximising `J(X) = <S, X> + beta Q(X)` with IPFP (see module docstring).
    With `beta = 0` (or no graphs) it is the exact linear assignment of `S`."""
    s = s.detach().float()
    x = linear_assignment(s)
    if not beta or p is None or a_s is None or a_t is None or iterations < 1:
        return x
    p, a_s, a_t = p.detach().float(), a_s.detach().float(), a_t.detach().float()
    best, best_score = x, matching_score(x, s, p, a_s, a_t, beta)
    cont = x
    prev = x
    for _ in range(iterations):
        grad = s + beta * quadratic_gradient(cont, p, a_s, a_t)
        b = linear_assignment(grad)
        score_b = matching_score(b, s, p, a_s, a_t, beta)
        if score_b > best_score:
            best, best_score = b, score_b
        d = b - cont
        c1 = (grad * d).sum()  # J(cont + t d) = J(cont) + t c1 + t^2 c2
        c2 = beta * quadratic_score(d, p, a_s, a_t)
        if c2 >= 0:
            t = 1.0
        else:
            t = float((-c1 / (2 * c2)).clamp(0.0, 1.0))
        cont = cont + t * d
        if torch.equal(b, prev) and t == 1.0:
            break
        prev = b
    return best


class BlackboxGraphMatching(torch.autograd.Function):
    """`X = solve(S, P)` in the forward pass, Vlastelica et al.'s interpolation gradient in the backward pass (see
    the module docstring). `a_s`, `a_t` (graph structure) get no gradient."""

    @staticmethod
    def forward(ctx, s, p, a_s, a_t, beta: float, lam: float, iterations: int):
        x = solve_quadratic_assignment(s, p, a_s, a_t, beta, iterations).to(s.dtype)
        ctx.save_for_backward(s, p, a_s, a_t, x)
        ctx.beta, ctx.lam, ctx.iterations = beta, lam, iterations
        return x

    @staticmethod
    def backward(ctx, grad_x):
        s, p, a_s, a_t, x = ctx.saved_tensors
        lam, beta = ctx.lam, ctx.beta
        # in float32 whatever the saved dtypes: under autocast `s`, `p` can be bfloat16 next to float32 graphs, and
        # the perturbed scores `s - lam dL/dX` rounded to bfloat16 would pick another matching
        x, a_s, a_t = x.float(), a_s.float(), a_t.float()
        x_pert = solve_quadratic_assignment(s.float() - lam * grad_x.float(), p, a_s, a_t, beta, ctx.iterations)
        grad_s = ((x - x_pert) / lam).to(s.dtype)
        grad_p = None
        if beta and ctx.needs_input_grad[1]:
            # Q is linear in P: dQ/dP at X is (autograd of) Q itself
            with torch.enable_grad():
                pv = p.detach().float().requires_grad_(True)
                diff = beta * (quadratic_score(x, pv, a_s, a_t) - quadratic_score(x_pert, pv, a_s, a_t))
                (grad_p,) = torch.autograd.grad(diff, pv)
            grad_p = (grad_p / lam).to(p.dtype)
        return grad_s, grad_p, None, None, None, None, None


def blackbox_graph_matching(s: torch.Tensor, p: Optional[torch.Tensor] = None, a_s: Optional[torch.Tensor] = None,
                            a_t: Optional[torch.Tensor] = None, beta: float = 0.0, lam: float = 80.0,
                            iterations: int = 10) -> torch.Tensor:
    """Hard matching `X [N, N]` (a permutation matrix) that is differentiable w.r.t. `s` and `p` by blackbox
    differentiation with interpolation strength `lam` (BB-GM's default 80)."""
    if lam <= 0:
        raise ValueError(f"blackbox interpolation lambda must be > 0, got {lam}")
    if p is None:
        p = torch.zeros_like(s)
        beta = 0.0
    if a_s is None or a_t is None:
        a_s = a_t = torch.zeros_like(s)
        beta = 0.0
    return BlackboxGraphMatching.apply(s, p, a_s.detach(), a_t.detach(), float(beta), float(lam), int(iterations))


# ----------------------------------------------------------------------------------------------------
# entropic relaxation
# ----------------------------------------------------------------------------------------------------
def log_sinkhorn(logits: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Doubly stochastic matrix `exp(logits)` normalised alternately over rows and columns in the log domain
    (differentiable). Rows and columns sum to 1 up to the last-iteration tolerance (rows exactly)."""
    log_x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    for _ in range(iterations):
        log_x = log_x - torch.logsumexp(log_x, dim=0, keepdim=True)
        log_x = log_x - torch.logsumexp(log_x, dim=1, keepdim=True)
    return log_x.exp()


def graduated_assignment(s: torch.Tensor, p: Optional[torch.Tensor] = None, a_s: Optional[torch.Tensor] = None,
                         a_t: Optional[torch.Tensor] = None, beta: float = 0.0, temperature: float = 0.05,
                         outer_iterations: int = 3, sinkhorn_iterations: int = 20) -> torch.Tensor:
    """Soft (doubly stochastic) matching of the same QAP: `X_0 = Sinkhorn(S / tau)`, then
    `X <- Sinkhorn((S + beta dQ/dX(X)) / tau)` (graduated assignment at fixed temperature). Differentiable."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = log_sinkhorn(s / temperature, sinkhorn_iterations)
    if beta and p is not None and a_s is not None and a_t is not None:
        for _ in range(outer_iterations):
            x = log_sinkhorn((s + beta * quadratic_gradient(x, p, a_s, a_t)) / temperature, sinkhorn_iterations)
    return x


# ----------------------------------------------------------------------------------------------------
# graphs and losses
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def knn_adjacency(features: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetric 0/1 k-nearest-neighbour adjacency `[N, N]` (cosine similarity, no self loops): i ~ j when j is among
    the k nearest of i or i among the k nearest of j. Ties are broken by index (deterministic)."""
    n = features.shape[0]
    k = min(int(k), n - 1)
    adj = torch.zeros(n, n, device=features.device, dtype=torch.float32)
    if k <= 0:
        return adj
    f = torch.nn.functional.normalize(features.detach().float(), dim=1)
    sim = f @ f.t()
    sim.fill_diagonal_(float("-inf"))
    idx = sim.topk(k, dim=1).indices
    adj.scatter_(1, idx, 1.0)
    return ((adj + adj.t()) > 0).float()


def hamming_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`sum(X (1 - X*) + (1 - X) X*) / N`: wrongly set entries of the matching per node (BB-GM's loss)."""
    x, target = x.float(), target.float()  # float32 under autocast too (bfloat16 sums of 0/1 are inexact above 256)
    return (x * (1 - target) + (1 - x) * target).sum() / x.shape[0]


__all__ = ["MATCHING_SOLVERS", "quadratic_score", "quadratic_gradient", "matching_score", "linear_assignment",
           "solve_quadratic_assignment", "BlackboxGraphMatching", "blackbox_graph_matching", "log_sinkhorn",
           "graduated_assignment", "knn_adjacency", "hamming_loss"]
