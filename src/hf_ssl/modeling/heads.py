"""Heads shared by methods: projection/prediction MLPs, prototypes, transformer blocks and decoders."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Module):
    """Linear-(BN)-act blocks ending in a linear layer (SimCLR/SwAV/BYOL projection and prediction heads).

    `num_layers=1` is a single linear map. `last_norm` adds a BatchNorm without affine parameters at the end
    (SimCLR v2 / MoCo v3)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
                 last_norm: bool = False, activation: str = "relu"):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        act = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
        layers = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(act())
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_norm))
        if last_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Prototypes(nn.Module):
    """A bank of K learnable prototype vectors scored by dot product (SwAV); `normalize_()` projects each
    prototype back onto the unit sphere."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.normal_(self.weight, std=dim**-0.5)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class Attention(nn.Module):
    """Multi-head attention; queries and keys/values may come from different token sets (cross-attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None,
                value_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`value_context` (same length as `context`) feeds the values while `context` feeds the keys, for
        blocks that add position embeddings to keys but not to values (CAE's regressor)."""
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        if value_context is None:
            k, v = self.kv(context).reshape(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        else:
            w_k, w_v = self.kv.weight.chunk(2, dim=0)
            b_k, b_v = self.kv.bias.chunk(2) if self.kv.bias is not None else (None, None)
            k = F.linear(context, w_k, b_k).reshape(b, context.shape[1], h, d // h).transpose(1, 2)
            v = F.linear(value_context, w_v, b_v).reshape(b, value_context.shape[1], h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block. With `cross_attention=True` the attention reads keys/values from a
    `context` sequence (CAE's latent contextual regressor), otherwise it is ordinary self-attention.
    `layer_scale` (e.g. 0.1, BEiT/CAE) multiplies both residual branches by learnable per-channel gains
    initialised to that value (`gamma_1`, `gamma_2`); `None` disables them."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = False,
                 layer_norm_eps: float = 1e-6, layer_scale: Optional[float] = None):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm_context = nn.LayerNorm(dim, eps=layer_norm_eps) if cross_attention else None
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cross_attention:
            if context is None:
                raise ValueError("cross-attention block needs a context")
            a = self.attn(self.norm1(x), self.norm_context(context))
        else:
            a = self.attn(self.norm1(x))
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.gamma_2 is None else self.gamma_2 * m)


class TransformerDecoder(nn.Module):
    """A stack of transformer blocks, a final norm and a linear prediction layer (MAE/CAE pixel decoders)."""

    def __init__(self, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 cross_attention: bool = False, layer_scale: Optional[float] = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, mlp_ratio, cross_attention=cross_attention, layer_scale=layer_scale)
             for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim) if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return self.head(self.norm(x))


__all__ = ["MLPHead", "Prototypes", "Attention", "TransformerBlock", "TransformerDecoder"]
