"""Heads shared by methods: projection/prediction MLPs, prototypes, transformer blocks and decoders."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class MLPHead(nn.Module):
    """Linear-(BN)-act blocks ending in a linear layer (SimCLR/SwAV/BYOL projection and prediction heads).

    `num_layers=1` is a single linear map. `last_norm` adds a BatchNorm without affine parameters at the end
    (SimCLR v2 / MoCo v3). `layer_norm=True` (with `batch_norm=False`) puts a LayerNorm after each hidden
    linear instead (BYOL-style heads of FSFM/CMAE that avoid batch statistics)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True,
                 last_norm: bool = False, activation: str = "relu", layer_norm: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        act = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
        # `hidden_dim` may also be a list with one width per hidden layer (e.g. G-SimCLR's 256-128 head)
        if isinstance(hidden_dim, (list, tuple)):
            if len(hidden_dim) != num_layers - 1:
                raise ValueError(f"hidden_dim lists {len(hidden_dim)} widths for {num_layers - 1} hidden layers")
            hidden_dims = [int(h) for h in hidden_dim]
        else:
            hidden_dims = [hidden_dim] * (num_layers - 1)
        layers = []
        dim = in_dim
        for hidden_dim in hidden_dims:
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            elif layer_norm:
                layers.append(nn.LayerNorm(hidden_dim))
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
        q, k, v = self.project(x, context, value_context)
        return self.attend(q, k, v, attn_mask)

    def project(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                value_context: Optional[torch.Tensor] = None):
        """Per-head queries `[B, h, N, d/h]` from `x`, keys/values from `context` (default `x`)."""
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
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, h, n, dh = q.shape
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, h * dh))


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


# fixed 2-D sin-cos tables, cached per (dim, grid, device, dtype) so nothing is rebuilt every step
_SINCOS_CACHE: Dict[tuple, torch.Tensor] = {}


def cached_sincos_table(dim: int, grid: Tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """`backbones.sincos_pos_embed_2d(dim, *grid)` `[H*W, dim]` on `device`/`dtype`, built once and cached."""
    key = (dim, tuple(grid), str(device), dtype)
    table = _SINCOS_CACHE.get(key)
    if table is None:
        from .backbones import sincos_pos_embed_2d

        table = sincos_pos_embed_2d(dim, grid[0], grid[1]).to(device=device, dtype=dtype)
        _SINCOS_CACHE[key] = table
    return table


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation `x * (1 + scale) + shift` with per-sample `[B, D]` shift/scale broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNTransformerBlock(nn.Module):
    """Pre-norm self-attention block with adaLN-Zero conditioning (DiT, Peebles & Xie 2023): a linear map of the
    condition vector (applied to `SiLU(cond)` by the caller or with `silu_condition=True`) gives shift, scale and
    gate for both residual branches; it is zero-initialised (`modulation`), so each block starts as the identity.
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(cond_dim, 6 * dim)
        self.modulation._zero_init = True  # model `_init_weights` hooks keep it zero (adaLN-Zero)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class MaskedAutoencoderDecoder(nn.Module):
    """MAE-style decoder shared by masked-image-modeling methods (MAE, FSFM, UMD, ...).

    Input: encoder tokens of the visible patches `[B, P + K, in_dim]` whose first `P = num_prefix_tokens` tokens
    are prefix tokens (CLS), and the patch indices `visible_index [B, K]` of the other K tokens. The tokens are
    embedded to the decoder width (`embed=True`: a linear map, as in MAE; `False` needs `in_dim == dim`), a shared
    learned `mask_token` fills every position not in `visible_index`, the sequence is put back in row-major patch
    order, position embeddings are added to the patch tokens (`pos_embed="sincos"`: fixed 2-D sin-cos as in MAE;
    `"learned"`: a learned table `pos_embed_table [1, num_patches, dim]`; prefix tokens get no position), and the
    sequence runs through `depth` transformer blocks, a final LayerNorm and a linear prediction layer.

    With `cond_dim` set, the blocks are :class:`AdaLNTransformerBlock` conditioned on a vector `cond [B, cond_dim]`
    (e.g. a diffusion timestep embedding) and a zero-initialised `final_modulation` shifts/scales the normalised
    output before the prediction layer (DiT's final layer).

    Returns `[B, P + N, out_dim]` (prefix tokens first); callers slice off the prefix when they predict patches.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 num_prefix_tokens: int = 1, pos_embed: str = "sincos", num_patches: Optional[int] = None,
                 embed: bool = True, cond_dim: Optional[int] = None, layer_norm_eps: float = 1e-6):
        super().__init__()
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if pos_embed == "learned" and not num_patches:
            raise ValueError("pos_embed='learned' needs num_patches")
        if not embed and in_dim != dim:
            raise ValueError(f"embed=False needs in_dim == dim, got {in_dim} and {dim}")
        self.dim = dim
        self.num_prefix_tokens = num_prefix_tokens
        self.pos_embed_type = pos_embed
        self.embed = nn.Linear(in_dim, dim) if embed else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        if pos_embed == "learned":
            self.pos_embed_table = nn.Parameter(torch.zeros(1, num_patches, dim))
            nn.init.normal_(self.pos_embed_table, std=num_patches**-0.5)
        else:
            self.pos_embed_table = None
        self.cond_dim = cond_dim
        if cond_dim:
            self.blocks = nn.ModuleList([AdaLNTransformerBlock(dim, num_heads, cond_dim, mlp_ratio, layer_norm_eps)
                                         for _ in range(depth)])
            self.final_modulation = nn.Linear(cond_dim, 2 * dim)
            self.final_modulation._zero_init = True
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)
        else:
            self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads, mlp_ratio, layer_norm_eps=layer_norm_eps)
                                         for _ in range(depth)])
            self.final_modulation = None
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.head = nn.Linear(dim, out_dim)

    def positions(self, num_patches: int, grid: Optional[Tuple[int, int]], device, dtype) -> torch.Tensor:
        if self.pos_embed_table is not None:
            if self.pos_embed_table.shape[1] != num_patches:
                raise ValueError(f"learned decoder positions cover {self.pos_embed_table.shape[1]} patches, "
                                 f"got {num_patches}")
            return self.pos_embed_table.to(dtype)
        if grid is None or grid[0] * grid[1] != num_patches:
            raise ValueError(f"sin-cos decoder positions need the patch grid (got {grid} for {num_patches} patches)")
        return cached_sincos_table(self.dim, grid, device, dtype).unsqueeze(0)

    def forward(self, tokens: torch.Tensor, visible_index: torch.Tensor, num_patches: int,
                grid: Optional[Tuple[int, int]] = None, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = self.num_prefix_tokens
        x = self.embed(tokens)
        b, d = x.shape[0], x.shape[-1]
        if visible_index.shape != (b, x.shape[1] - p):
            raise ValueError(f"visible_index must be [batch, {x.shape[1] - p}], got {list(visible_index.shape)}")
        full = self.mask_token.to(x.dtype).expand(b, num_patches, d)
        full = full.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, d), x[:, p:])
        full = full + self.positions(num_patches, grid, x.device, x.dtype)
        x = torch.cat([x[:, :p], full], dim=1)
        if self.cond_dim:
            if cond is None:
                raise ValueError("this decoder is conditioned: pass cond [batch, cond_dim]")
            for block in self.blocks:
                x = block(x, cond)
            shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
            x = modulate(self.norm(x), shift, scale)
        else:
            for block in self.blocks:
                x = block(x)
            x = self.norm(x)
        return self.head(x)


def patch_positions(grid: Tuple[int, int], device=None) -> torch.Tensor:
    """Integer (row, column) of every patch in row-major order, `[H*W, 2]` (what RoPE rotates by)."""
    rows = torch.arange(grid[0], device=device)
    cols = torch.arange(grid[1], device=device)
    return torch.cartesian_prod(rows, cols)


class RoPE2D(nn.Module):
    """2-D rotary position embedding (Su et al., RoFormer; the 2-D form of CroCo v2's "RoPE100").

    The channels of each head are split in two halves: the first half is rotated by the token's row index, the
    second by its column index. Within a half of width `c`, channel pairs `(i, i + c/2)` rotate by the angle
    `pos * base ** (-2i / c)`. Applied to queries and keys only, it makes attention logits depend on relative
    positions. Parameter-free (nothing is saved); cos/sin tables are cached per (width, length, device, dtype)."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        if base <= 0:
            raise ValueError(f"RoPE base frequency must be > 0, got {base}")
        self.base = float(base)
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, width: int, length: int, device, dtype):
        key = (width, length, str(device), dtype)
        if key not in self._cache:
            inv_freq = self.base ** (-torch.arange(0, width, 2, device=device, dtype=torch.float32) / width)
            angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None]
            angles = torch.cat([angles, angles], dim=-1)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def _rotate(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = cos[pos].unsqueeze(1)  # [B, 1, N, width]
        s = sin[pos].unsqueeze(1)
        return x * c + self._rotate_half(x) * s

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`x [B, heads, N, d]` (d divisible by 4), `positions [B, N, 2]` or `[N, 2]` integer (row, col)."""
        d = x.shape[-1]
        if d % 4:
            raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {d}")
        positions = positions.long()
        if positions.dim() == 2:
            positions = positions.unsqueeze(0).expand(x.shape[0], -1, -1)
        cos, sin = self._tables(d // 2, int(positions.max()) + 1, x.device, x.dtype)
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate(rows, positions[..., 0], cos, sin),
                          self._rotate(cols, positions[..., 1], cos, sin)], dim=-1)


class RotaryAttention(Attention):
    """:class:`Attention` whose queries and keys are rotated by :class:`RoPE2D` before the dot product (self- or
    cross-attention; `x_pos` / `context_pos` are the tokens' (row, col) positions). With `rope=None` it is
    plain :class:`Attention`."""

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, value_context: Optional[torch.Tensor] = None,
                rope: Optional[RoPE2D] = None, x_pos: Optional[torch.Tensor] = None,
                context_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.project(x, context, value_context)
        if rope is not None:
            if x_pos is None:
                raise ValueError("RoPE attention needs the query positions x_pos")
            if context is not None and context_pos is None:
                raise ValueError("RoPE cross-attention needs the context positions context_pos")
            q = rope(q, x_pos)
            k = rope(k, x_pos if context is None else context_pos)
        return self.attend(q, k, v, attn_mask)


__all__ = ["MLPHead", "Prototypes", "Attention", "TransformerBlock", "TransformerDecoder", "cached_sincos_table",
           "modulate", "AdaLNTransformerBlock", "MaskedAutoencoderDecoder", "patch_positions", "RoPE2D",
           "RotaryAttention"]
