"""Differentiable sorting networks (Petersen et al., "Differentiable Sorting Networks for Scalable Sorting and
Ranking Supervision", ICML 2021 / "Monotonic Differentiable Sorting Networks", ICLR 2022; reference library
github.com/Felix-Petersen/diffsort), used by GroCo.

A sorting network is a fixed sequence of layers of compare-and-swap operations on pairs of wires. Relaxing each
comparison of `a` (lower wire) and `b` (upper wire) with a soft probability `alpha = f(steepness * (b - a))` that the
pair is already in order gives

    min' = alpha * a + (1 - alpha) * b,        max' = (1 - alpha) * a + alpha * b,

and the same convex mixing applied to the columns of a running matrix `P` (initially the identity) yields a relaxed
permutation matrix: `P[b, i, j]` is the probability that input element `i` ends at output position `j` (ascending
order), `sorted = x @ P`. Every layer is a convex combination of two columns, so `P` stays doubly stochastic (rows
and columns sum to 1), and for distinct inputs it converges to the hard sorting permutation as the steepness grows.

Only the odd-even transposition network is implemented (n layers; layer `l` compares wires (i, i+1) for i = l mod 2,
l mod 2 + 2, ...), which is what GroCo's official code uses; wires without a partner in a layer are left unchanged
(the reference library encodes them as self-comparisons with weight 1/2 + 1/2, the same thing).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Tuple

import torch

SORTING_DISTRIBUTIONS = ("cauchy", "logistic", "logistic_phi", "gaussian", "reciprocal", "optimal")


@lru_cache(maxsize=64)
def odd_even_layers(n: int) -> Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]], ...]:
    """The comparators `(lower wires, upper wires)` of each of the `n` layers of the odd-even transposition network."""
    if n < 1:
        raise ValueError(f"a sorting network needs at least one wire, got {n}")
    layers = []
    for layer in range(n):
        lower = tuple(range(layer % 2, n - 1, 2))
        layers.append((lower, tuple(i + 1 for i in lower)))
    return tuple(layers)


def swap_probability(diff: torch.Tensor, steepness: float, distribution: str = "cauchy",
                     art_lambda: float = 0.25) -> torch.Tensor:
    """`alpha = P(a <= b)` for `diff = b - a`: a sigmoid-shaped function of `steepness * diff` with alpha(0) = 1/2.

    `cauchy` (GroCo's choice and the library default): `atan(s d) / pi + 1/2`; `logistic`: `sigmoid(s d)`;
    `logistic_phi`: `sigmoid(s d / (|d| + 1e-10)^art_lambda)`; `gaussian`: the normal CDF of `s d`; `reciprocal`:
    `(s d / (2 + |s d|) + 1) / 2`; `optimal`: the piecewise optimal monotonic sigmoid of the ICLR 2022 paper."""
    v = steepness * diff
    if distribution == "cauchy":
        return torch.atan(v) / math.pi + 0.5
    if distribution == "logistic":
        return torch.sigmoid(v)
    if distribution == "logistic_phi":
        return torch.sigmoid(v / (diff.abs() + 1e-10).pow(art_lambda))
    if distribution == "gaussian":
        return 0.5 + 0.5 * torch.erf(v / math.sqrt(2.0))
    if distribution == "reciprocal":
        return 0.5 * (v / (2 + v.abs()) + 1)
    if distribution == "optimal":
        outside = (v > 0.25).to(v.dtype) - (v < -0.25).to(v.dtype)
        return v.clamp(-0.25, 0.25) + 0.5 + outside * (0.25 - 1 / 16 / (v.abs() + 1e-10))
    raise ValueError(f"unknown sorting distribution {distribution!r}; choose one of {SORTING_DISTRIBUTIONS}")


def differentiable_sort(x: torch.Tensor, steepness: float = 1.0, distribution: str = "cauchy",
                        art_lambda: float = 0.25) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relaxed ascending sort of each row of `x` `[B, n]` with the odd-even sorting network.

    Returns `(sorted_x [B, n], P [B, n, n])` with `P[b, i, j]` = probability that input `i` lands at output rank `j`;
    `sorted_x = (x.unsqueeze(1) @ P).squeeze(1)`. Runs in float32 or float64 (half inputs are upcast)."""
    if x.dim() != 2:
        raise ValueError(f"differentiable_sort expects a [batch, n] tensor, got shape {tuple(x.shape)}")
    if steepness <= 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    b, n = x.shape
    perm = torch.eye(n, dtype=x.dtype, device=x.device).expand(b, n, n)
    for lower, upper in odd_even_layers(n):
        if not lower:
            continue
        lo = torch.tensor(lower, device=x.device)
        hi = torch.tensor(upper, device=x.device)
        a, c = x[:, lo], x[:, hi]
        alpha = swap_probability(c - a, steepness, distribution, art_lambda)
        new_x = x.clone()
        new_x[:, lo] = alpha * a + (1 - alpha) * c
        new_x[:, hi] = (1 - alpha) * a + alpha * c
        x = new_x
        pa, pc = perm[:, :, lo], perm[:, :, hi]
        w = alpha.unsqueeze(1)
        new_perm = perm.clone()
        new_perm[:, :, lo] = w * pa + (1 - w) * pc
        new_perm[:, :, hi] = (1 - w) * pa + w * pc
        perm = new_perm
    return x, perm


def hard_sort_permutation(x: torch.Tensor) -> torch.Tensor:
    """The hard counterpart of :func:`differentiable_sort`'s `P`: `P[b, i, j] = 1` iff input `i` has rank `j`."""
    order = torch.argsort(x, dim=1, stable=True)  # order[b, j] = input index at rank j
    perm = torch.zeros(*x.shape, x.shape[1], dtype=x.dtype, device=x.device)
    perm.scatter_(1, order.unsqueeze(1), 1.0)  # perm[b, order[b, j], j] = 1
    return perm


__all__: List[str] = ["SORTING_DISTRIBUTIONS", "odd_even_layers", "swap_probability", "differentiable_sort",
                      "hard_sort_permutation"]
