"""SemAIM model: semantic-aware permutation + two-stream (content / query) autoregressive ViT.

One step (B images, N patches, encoder depth L, query depth Q, step = L // Q):

    image --encoder, full attention, no_grad--> tokens T (final norm)      (semantic similarity / feature targets)
    sim = cos(anchor(T), T_patches), anchor = CLS (or patch mean); center = argmax sim
    rank[n] = ||pos(n) - pos(center)|| + U(0, 1e-3)          (attention_center; smaller rank = predicted earlier)
    content stream h = [CLS ; patches + pos]: stock ViT layers with additive mask M_h (n sees m iff rank_m <= rank_n)
    query stream   g = fixed positions:  after every `step` encoder layers, g = QueryBlock(g, h, M_g)
                                          (n sees content m iff rank_m < rank_n; every token sees CLS)
    prediction = head(LN(g))[:, 1:]; loss = mean over ALL patches of (prediction - target)^2
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import _vit_layers, init_sincos_position_embeddings_, patchify, pool_vit_tokens, vit_embed_patches
from ..base import SSLPreTrainedModel
from ..heads import Attention
from ..losses import normalized_pixel_targets
from ..outputs import SSLOutput
from .configuration_semaim import SemAIMConfig

_LN_EPS = 1e-6
_PIXEL_NORM_EPS = 1e-6
_TIE_NOISE = 1e-3  # official: random tie-break among patches at the same distance


class SemAIMQueryBlock(nn.Module):
    """Query-stream block (official `Block_SelfCrossMask` used as cross-attention): queries from the query stream,
    keys/values from the content stream, one shared pre-norm for both, masked attention, residual MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: torch.Tensor, content: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = queries + self.attn(self.norm1(queries), self.norm1(content), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


def permutation_attention_masks(rank: torch.Tensor, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Additive masks `[B, 1, N+1, N+1]` (index 0 = CLS) from per-patch ranks `[B, N]` (smaller = earlier).

    content mask: patch n attends to patch m iff rank_m <= rank_n (itself and earlier patches);
    query mask:   patch n attends to patch m iff rank_m <  rank_n (strictly earlier patches);
    every token attends to CLS; CLS attends only to itself (official `generate_attention_mask`)."""
    b, n = rank.shape
    neg = torch.finfo(dtype).min
    later_h = rank.unsqueeze(-1) < rank.unsqueeze(1)  # [B, n(query), m(key)]: key m later than query n
    later_g = rank.unsqueeze(-1) <= rank.unsqueeze(1)
    full_h = torch.zeros(b, n + 1, n + 1, dtype=dtype, device=rank.device)
    full_g = torch.zeros(b, n + 1, n + 1, dtype=dtype, device=rank.device)
    full_h[:, 1:, 1:] = later_h.to(dtype) * neg
    full_g[:, 1:, 1:] = later_g.to(dtype) * neg
    full_h[:, 0, 1:] = neg
    full_g[:, 0, 1:] = neg
    return full_h.unsqueeze(1), full_g.unsqueeze(1)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Depth-wise Gaussian blur with zero padding (official `GaussianConv2d`)."""
    c = images.shape[1]
    ax = torch.arange(kernel_size, dtype=torch.float32, device=images.device) - (kernel_size - 1) // 2
    g = torch.exp(-(ax ** 2) / (2 * float(sigma) ** 2))
    kernel = torch.outer(g, g)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    weight = kernel.view(1, 1, kernel_size, kernel_size).repeat(c, 1, 1, 1)
    return F.conv2d(images, weight, groups=c, padding=kernel_size // 2)


class SemAIMForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SemAIM pretraining model. See the package docstring (`hf_ssl.modeling.semaim`).

    Attributes:
        encoder: stock transformers ViT (content stream; exported).
        query_blocks: `query_depth` :class:`SemAIMQueryBlock` (query stream).
        query_norm, prediction_head: final LayerNorm and MLP/linear head on the query stream.
    """

    config_class = SemAIMConfig

    def __init__(self, config: SemAIMConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        bc = config.backbone_config
        dim = bc.hidden_size
        mlp_ratio = bc.intermediate_size / dim
        self.query_blocks = nn.ModuleList(
            [SemAIMQueryBlock(dim, bc.num_attention_heads, mlp_ratio) for _ in range(config.resolved_query_depth)])
        self.query_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        patch = bc.patch_size
        out_dim = dim if config.target == "features" else patch * patch * config.num_channels
        if config.prediction_head == "mlp":
            self.prediction_head = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(),
                                                 nn.Linear(int(dim * mlp_ratio), out_dim))
        else:
            self.prediction_head = nn.Linear(dim, out_dim)
        self.apply_frozen_parameters_()
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if module is self and self.config.encoder_sincos_pos_embed:
            init_sincos_position_embeddings_(self.encoder)

    # -- semantic-aware permutation ----------------------------------------------------------------------
    def semantic_similarity(self, tokens: torch.Tensor) -> torch.Tensor:
        """Softmax over patches of cos(anchor, patch) `[B, N]` from final encoder tokens `[B, 1+N, D]`
        (official `calculate_attention_cls` / `calculate_attention_gap`)."""
        tokens = tokens.float()
        if self.config.similarity_type == "cls":
            anchor = tokens[:, :1]
        else:
            anchor = tokens[:, 1:].mean(dim=1, keepdim=True)
        sim = (F.normalize(anchor, dim=-1) * F.normalize(tokens[:, 1:], dim=-1)).sum(-1)
        return sim.softmax(dim=1)

    def permutation_ranks(self, similarity: Optional[torch.Tensor], batch_size: int, grid: Tuple[int, int],
                          device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-patch ranks `[B, N]` (smaller = predicted earlier; `argsort` gives the order)."""
        n = grid[0] * grid[1]
        kind = self.config.permutation_type
        noise = torch.rand(batch_size, n, device=device, generator=generator)
        if kind == "stochastic":
            return noise
        if kind == "raster":
            return torch.arange(n, device=device, dtype=torch.float32).expand(batch_size, n).clone()
        if similarity is None:
            raise ValueError(f"permutation_type={kind!r} needs the semantic similarity")
        if kind == "attention":
            return 1.0 - similarity
        center = similarity.argmax(dim=1)  # attention_center
        rows = torch.arange(n, device=device) // grid[1]
        cols = torch.arange(n, device=device) % grid[1]
        cr, cc = (center // grid[1]).unsqueeze(1), (center % grid[1]).unsqueeze(1)
        dist = ((rows.unsqueeze(0) - cr) ** 2 + (cols.unsqueeze(0) - cc) ** 2).float().sqrt()
        return dist + noise * _TIE_NOISE

    # -- targets -----------------------------------------------------------------------------------------
    def pixel_targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        images = pixel_values.detach().float()
        k = self.config.target_blur_kernel_size
        if k is not None and k > 1:
            images = gaussian_blur(images, k, self.config.target_blur_sigma)
        patches = patchify(images, self.config.backbone_config.patch_size)
        if self.config.target == "pixel_norm":
            patches = normalized_pixel_targets(patches, eps=_PIXEL_NORM_EPS)
        return patches

    def _grid(self, pixel_values: torch.Tensor) -> Tuple[int, int]:
        p = self.config.backbone_config.patch_size
        h, w = pixel_values.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"image size {(h, w)} is not divisible by the patch size {p}")
        return h // p, w // p

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, permutation: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` normalized images.
            permutation: optional per-patch ranks `[B, N]` (smaller = earlier) overriding the semantic order.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = predictions of every patch `[B, N, P]` in
            row-major patch order; the ranks used are kept in `model.last_permutation`.
        """
        self.check_pixel_values(pixel_values)
        b, _, h_px, w_px = pixel_values.shape
        grid = self._grid(pixel_values)
        n = grid[0] * grid[1]
        cfg = self.config
        needs_full = permutation is None and cfg.permutation_type in ("attention_center", "attention")
        full_tokens = None
        if needs_full or cfg.target == "features":
            with torch.no_grad():  # stop-gradient semantic guidance / feature targets (official: model.eval())
                size = cfg.backbone_config.image_size
                size = size if isinstance(size, (tuple, list)) else (size, size)
                full_tokens = self.encoder(
                    pixel_values=pixel_values, interpolate_pos_encoding=(h_px, w_px) != tuple(size)
                ).last_hidden_state.detach()
        if permutation is None:
            sim = self.semantic_similarity(full_tokens) if full_tokens is not None else None
            rank = self.permutation_ranks(sim, b, grid, device=pixel_values.device)
        else:
            rank = torch.as_tensor(permutation, device=pixel_values.device).float()
            if rank.shape != (b, n):
                raise ValueError(f"permutation must be [batch, num_patches] = {[b, n]}, got {list(rank.shape)}")
        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        dtype = tokens.dtype
        mask_h, mask_g = permutation_attention_masks(rank, dtype=dtype)

        emb = self.encoder.embeddings
        pos = emb.interpolate_pos_encoding(torch.zeros(1, n + 1, tokens.shape[-1], dtype=dtype,
                                                       device=tokens.device), h_px, w_px)
        h = emb.dropout(torch.cat([cls, tokens], dim=1))
        g = pos.expand(b, -1, -1)
        layers = _vit_layers(self.encoder)
        step = len(layers) // len(self.query_blocks)
        for i, layer in enumerate(layers):
            out = layer(h, mask_h)
            h = out[0] if isinstance(out, tuple) else out
            if (i + 1) % step == 0:
                g = self.query_blocks[i // step](g, h, mask_g)
        pred = self.prediction_head(self.query_norm(g))[:, 1:]

        if cfg.target == "features":
            target = full_tokens[:, 1:].float()
            per_patch = ((F.normalize(pred.float(), dim=-1) - F.normalize(target, dim=-1)) ** 2).sum(-1)
        else:
            target = self.pixel_targets(pixel_values)
            diff = pred.float() - target
            per_patch = (diff.abs() if cfg.loss_type == "l1" else diff ** 2).mean(-1)
        loss = per_patch.mean()

        if full_tokens is not None:
            embeddings = pool_vit_tokens(full_tokens, cfg.feature_pooling)
        else:
            embeddings = pool_vit_tokens(self.encoder.layernorm(h), cfg.feature_pooling).detach()
        output = SSLOutput(loss=loss, embeddings=embeddings, logits=pred,
                           metrics={"autoregressive_loss": loss.detach()})
        self.__dict__["last_permutation"] = rank.detach()  # plain attribute (inspection / tests), never saved
        return output if return_dict else output.to_tuple()


__all__ = ["SemAIMForSelfSupervisedPretraining", "permutation_attention_masks", "gaussian_blur"]
