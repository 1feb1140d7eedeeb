"""CroCo pretraining model: cross-view completion of a masked image from a second view of the same scene."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import initialization as init

from ..backbones import (patchify, pool_vit_tokens, init_sincos_position_embeddings_, vit_embed_patches, vit_forward_tokens,
                         vit_forward_visible, vit_grid)
from ..base import SSLPreTrainedModel
from ..heads import RoPE2D, RotaryAttention, cached_sincos_table, patch_positions
from ..losses import normalized_pixel_targets
from ..masking import mask_to_index, resolve_patch_mask, random_mask_torch
from ..outputs import SSLOutput
from .configuration_croco import CroCoConfig

_LN_EPS = 1e-6


class CroCoDecoderBlock(nn.Module):
    """Official `DecoderBlock`: pre-norm self-attention over the first image's tokens, pre-norm cross-attention to
    the second image's tokens (themselves LayerNorm-ed when `norm_memory`), pre-norm MLP; with `rope`, queries and
    keys of both attentions are rotated by their patch positions."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_memory: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = RotaryAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.cross_attn = RotaryAttention(dim, num_heads)
        self.norm_memory = nn.LayerNorm(dim, eps=_LN_EPS) if norm_memory else nn.Identity()
        self.norm3 = nn.LayerNorm(dim, eps=_LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, x_pos: torch.Tensor, memory_pos: torch.Tensor,
                rope: Optional[RoPE2D] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope=rope, x_pos=x_pos)
        m = self.norm_memory(memory)
        x = x + self.cross_attn(self.norm2(x), m, rope=rope, x_pos=x_pos, context_pos=memory_pos)
        return x + self.mlp(self.norm3(x))


class CroCoForSelfSupervisedPretraining(SSLPreTrainedModel):
    """CroCo / CroCo v2 pretraining model (see `hf_ssl.modeling.croco`).

    Attributes:
        encoder: stock transformers ViT shared by both images (siamese); the first image's masked patches never
            enter it.
        decoder_embed: linear map encoder width -> decoder width (applied to both images' tokens).
        mask_token: learned token filling the first image's masked positions.
        decoder_blocks: :class:`CroCoDecoderBlock` stack; `decoder_norm`; `prediction_head` to `patch**2 * C`.
        rope: :class:`RoPE2D` for CroCo v2 (`position_embedding="rope"`), else None (sin-cos tables).
    """

    config_class = CroCoConfig

    def __init__(self, config: CroCoConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        enc_dim, dim = config.backbone_config.hidden_size, config.decoder_hidden_size
        patch = config.backbone_config.patch_size
        self.decoder_embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_blocks = nn.ModuleList([
            CroCoDecoderBlock(dim, config.decoder_num_heads, config.decoder_mlp_ratio,
                              config.norm_second_image_in_decoder) for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.prediction_head = nn.Linear(dim, patch * patch * config.num_channels)
        self.rope = RoPE2D(config.rope_base) if config.position_embedding == "rope" else None
        self.apply_frozen_parameters_()
        self.post_init()

    def _init_weights(self, module):
        # official `_init_weights`: xavier-uniform linears with zero bias, LayerNorm 1/0; mask token N(0, 0.02)
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if module is self:
            init.normal_(self.mask_token, std=0.02)
            if self.config.encoder_sincos_pos_embed:
                init_sincos_position_embeddings_(self.encoder)

    # -- pieces ----------------------------------------------------------------------------------------
    def generate_mask(self, batch_size: int, num_patches: int, device=None, generator=None) -> torch.Tensor:
        k = self.config.num_masked(num_patches)
        return random_mask_torch(batch_size, num_patches, k / num_patches, device=device, generator=generator)

    def encode_full(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All tokens `[B, 1 + N, D]` (CLS first) of a fully visible image."""
        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        return vit_forward_tokens(self.encoder, torch.cat([cls, tokens], dim=1))

    def decode(self, visible_tokens: torch.Tensor, visible_index: torch.Tensor, reference_tokens: torch.Tensor,
               grid) -> torch.Tensor:
        """Predictions `[B, N, patch**2 * C]` for every patch of the first image from its visible patch tokens
        `[B, K, D]` (no CLS) and the reference image's patch tokens `[B, N2, D]`."""
        x = self.decoder_embed(visible_tokens)
        memory = self.decoder_embed(reference_tokens)
        b, d = x.shape[0], x.shape[-1]
        n = grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(b, n, d)
        full = full.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, d), x)
        pos = patch_positions(grid, x.device)
        if self.rope is None:
            table = cached_sincos_table(d, grid, x.device, x.dtype).unsqueeze(0)
            full, memory = full + table, memory + table
        for block in self.decoder_blocks:
            full = block(full, memory, pos, pos, self.rope)
        return self.prediction_head(self.decoder_norm(full))

    @staticmethod
    def _split_pair(pixel_values):
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            pixel_values = list(pixel_values.unbind(1))
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != 2:
            raise ValueError("CroCo needs pixel_values = [first_image, second_image] (two [B, C, H, W] tensors, or "
                             "one [B, 2, C, H, W] tensor): the first is masked and completed from the second")
        return pixel_values

    def forward(self, pixel_values, bool_masked_pos: Optional[torch.Tensor] = None,
                synthetic_pair: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[first, second]` images of one scene (list of two `[B, C, H, W]` or `[B, 2, C, H, W]`).
            bool_masked_pos: `[B, N]` mask of the first image (True = masked), the same count in every sample;
                drawn with `config.mask_ratio` when omitted.
            synthetic_pair: optional `[B]` flags from the view policy (True = homography second view), logged.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = predictions for all N patches of the first image
            (the loss covers masked ones only); `embeddings` = pooled tokens of the second, fully visible image.
        """
        first, second = self._split_pair(pixel_values)
        self.check_pixel_values(first, "pixel_values[0]")
        self.check_pixel_values(second, "pixel_values[1]")
        if first.shape != second.shape:
            raise ValueError(f"both images must have the same shape, got {list(first.shape)} and {list(second.shape)}")
        b = first.shape[0]
        grid = vit_grid(self.encoder.config, tuple(first.shape[-2:]))
        n = grid[0] * grid[1]
        mask = resolve_patch_mask(bool_masked_pos, b, n, self.generate_mask, device=first.device)
        visible_index, _ = mask_to_index(mask)
        visible = vit_forward_visible(self.encoder, first, visible_index)  # [B, 1 + K, D]
        reference = self.encode_full(second)  # [B, 1 + N, D]
        pred = self.decode(visible[:, 1:], visible_index, reference[:, 1:], grid)
        target = patchify(first.detach().float(), self.encoder.config.patch_size)
        if self.config.norm_pix_loss:
            target = normalized_pixel_targets(target)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        m = mask.float()
        loss = (per_patch * m).sum() / m.sum()
        metrics = {"reconstruction_loss": loss.detach(), "mask_fraction": m.mean().detach()}
        if synthetic_pair is not None:
            metrics["synthetic_pair_fraction"] = torch.as_tensor(synthetic_pair).float().mean().detach()
        output = SSLOutput(loss=loss, embeddings=pool_vit_tokens(reference, self.config.feature_pooling).detach(),
                           logits=pred, metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["CroCoForSelfSupervisedPretraining", "CroCoDecoderBlock"]
