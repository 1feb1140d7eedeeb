"""Gaussian diffusion noise schedules used by UMD (the improved-DDPM schedules of the official code).

`beta_schedule(name, T)` gives the betas of the T noising steps; `alphas_cumprod` is their running product
`alpha_bar_t = prod_{s<=t} (1 - beta_s)` and `q_sample` draws `x_t ~ q(x_t | x_0)`:

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

Timestep indices here are 0-based noising steps `0..T-1` (index 0 = one step of noise), as in the official
`q_sample`; the model is conditioned on `t = index + 1` so that `t = 0` means "no noise" (UMD's mask step).
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

BETA_SCHEDULES = ("cosine", "linear")
_MAX_BETA = 0.999


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """float64 betas `[T]`. `cosine`: Nichol & Dhariwal (2021), alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)
    with betas clipped at 0.999; `linear`: Ho et al. (2020), from 1e-4 to 0.02 rescaled by 1000 / T."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        scale = 1000.0 / num_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
        if betas.max() >= 1.0:
            raise ValueError(f"the linear schedule needs num_timesteps > 20 (got {num_timesteps}: beta_T >= 1)")
        return betas
    if name == "cosine":
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), _MAX_BETA)
                         for i in range(num_timesteps)], dtype=np.float64)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {name!r}")


_CACHE: Dict[tuple, torch.Tensor] = {}


def alphas_cumprod(name: str, num_timesteps: int, device=None) -> torch.Tensor:
    """`alpha_bar` `[T]` (float64 -> float32 on `device`), cached."""
    key = (name, num_timesteps, str(device))
    table = _CACHE.get(key)
    if table is None:
        table = torch.from_numpy(np.cumprod(1.0 - beta_schedule(name, num_timesteps))).float().to(device)
        _CACHE[key] = table
    return table


def q_sample(x0: torch.Tensor, timestep_index: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """`sqrt(alpha_bar[i]) * x0 + sqrt(1 - alpha_bar[i]) * noise` per sample (`timestep_index` `[B]`, 0-based)."""
    a = alpha_bar.to(x0.device)[timestep_index.long()].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding `[B, dim]` of integer timesteps: `[sin(t * f_k), cos(t * f_k)]` with
    `f_k = exp(-log(10000) * k / (dim/2 - 1))`, k = 0..dim/2-1 (the official `TimeEmb`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


__all__ = ["BETA_SCHEDULES", "beta_schedule", "alphas_cumprod", "q_sample", "timestep_embedding"]
