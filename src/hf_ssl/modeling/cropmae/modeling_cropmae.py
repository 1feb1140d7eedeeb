"""CropMAE model: a siamese ViT encodes the whole first crop and the few visible patches of the second crop (a crop
of the first); a decoder of (cross-attention -> MLP -> self-attention) post-norm blocks reconstructs the second crop
from its visible tokens + mask tokens while attending to the first crop's tokens; normalized-pixel MSE on masked
patches.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..backbones import (init_sincos_position_embeddings_, patchify, pool_vit_tokens, vit_embed_patches,
                         vit_forward_tokens, vit_forward_visible, vit_grid)
from ..base import SSLPreTrainedModel
from ..heads import Attention, cached_sincos_table
from ..losses import normalized_pixel_targets
from ..masking import mask_to_index, resolve_patch_mask, random_mask_torch
from ..outputs import SSLOutput
from .configuration_cropmae import CropMAEConfig


class CropMAEDecoderBlock(nn.Module):
    """Official `DecoderBlock` (post-norm, `norm_first=False`): `x = LN2(x + CrossAttn(x, memory))`,
    `x = LN3(x + MLP(x))`, `x = LN1(x + SelfAttn(x))`; GELU MLP, dropout after each branch, LN eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout=dropout)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x + self.drop(self.cross_attn(x, memory)))
        x = self.norm3(x + self.drop(self.mlp(x)))
        return self.norm1(x + self.drop(self.self_attn(x)))


class CropMAEForSelfSupervisedPretraining(SSLPreTrainedModel):
    """CropMAE pretraining model (see `hf_ssl.modeling.cropmae`)."""

    config_class = CropMAEConfig

    def __init__(self, config: CropMAEConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        enc_dim, dim = config.backbone_config.hidden_size, config.decoder_hidden_size
        patch = config.backbone_config.patch_size
        self.decoder_embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_blocks = nn.ModuleList([
            CropMAEDecoderBlock(dim, config.decoder_num_heads, config.decoder_mlp_dim, config.decoder_dropout)
            for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, patch * patch * config.num_channels)
        self.apply_frozen_parameters_()
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.normal_(self.mask_token, std=0.02)  # MAE: torch.nn.init.normal_(mask_token, std=.02)
            if self.config.encoder_sincos_pos_embed:
                init_sincos_position_embeddings_(self.encoder)

    def generate_mask(self, batch_size: int, num_patches: int, device=None, generator=None) -> torch.Tensor:
        m = num_patches - self.config.num_visible(num_patches)
        return random_mask_torch(batch_size, num_patches, m / num_patches, device=device, generator=generator)

    def encode_full(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All tokens `[B, 1 + N, D]` of the first (unmasked) view."""
        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        return vit_forward_tokens(self.encoder, torch.cat([cls, tokens], dim=1))

    def decode(self, view1_tokens: torch.Tensor, visible_tokens: torch.Tensor, visible_index: torch.Tensor,
               grid) -> torch.Tensor:
        """Predictions `[B, N, p*p*C]` for every patch of the second view."""
        memory = self.decoder_embed(view1_tokens)
        x = self.decoder_embed(visible_tokens)
        b, d = x.shape[0], x.shape[-1]
        n = grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(b, n, d)
        full = full.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        pos = cached_sincos_table(d, grid, x.device, x.dtype).unsqueeze(0)
        x = torch.cat([x[:, :1], full + pos], dim=1)  # CLS gets the zero position, as in MAE's table
        for block in self.decoder_blocks:
            x = block(x, memory)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, pixel_values, bool_masked_pos: Optional[torch.Tensor] = None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values: `[view1, view2]` (list/tuple of `[B, C, H, W]`, or a `[B, 2, C, H, W]` tensor): the first
                crop (seen whole) and the second crop (a crop of the first, reconstructed).
            bool_masked_pos: `[B, N]` mask of the second view (True = masked), same count per sample; drawn with
                `config.mask_ratio` when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = predictions for all N patches of view 2
            (the loss covers masked ones only); `embeddings` = pooled tokens of view 1 (detached).
        """
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            pixel_values = list(pixel_values.unbind(1))
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != 2:
            raise ValueError("CropMAE needs pixel_values = [first_crop, second_crop] (two [B, C, H, W] tensors)")
        view1, view2 = pixel_values
        self.check_pixel_values(view1, "pixel_values[0]")
        self.check_pixel_values(view2, "pixel_values[1]")
        if view1.shape != view2.shape:
            raise ValueError(f"both crops must have the same shape, got {list(view1.shape)} and {list(view2.shape)}")
        b = view2.shape[0]
        grid = vit_grid(self.encoder.config, tuple(view2.shape[-2:]))
        n = grid[0] * grid[1]
        mask = resolve_patch_mask(bool_masked_pos, b, n, self.generate_mask, device=view2.device)
        visible_index, _ = mask_to_index(mask)
        view1_tokens = self.encode_full(view1)
        visible_tokens = vit_forward_visible(self.encoder, view2, visible_index)
        pred = self.decode(view1_tokens, visible_tokens, visible_index, grid)
        target = patchify(view2.detach().float(), self.encoder.config.patch_size)
        if self.config.norm_pix_loss:
            target = normalized_pixel_targets(target)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        m = mask.float()
        loss = (per_patch * m).sum() / m.sum()
        output = SSLOutput(loss=loss, embeddings=pool_vit_tokens(view1_tokens, self.config.feature_pooling).detach(),
                           logits=pred, metrics={"reconstruction_loss": loss.detach(),
                                                 "mask_fraction": m.mean().detach()})
        return output if return_dict else output.to_tuple()


__all__ = ["CropMAEForSelfSupervisedPretraining", "CropMAEDecoderBlock"]
