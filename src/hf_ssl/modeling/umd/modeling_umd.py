"""UMD model: a ViT masked auto-encoder whose decoder is a timestep-conditioned diffusion denoiser.

One training step on a batch of B images x0 (pixels in [-1, 1]):

    n0 = int(B * no_noise_prob) samples take the *mask step*: t = 0, no noise, mask_ratio_no_noise of the patches
        hidden; loss L_{t=0} = MSE(x0_hat, x0) over the pixels of masked patches.
    the other B - n0 samples take a *noise step*: index i ~ U{0..T-1}, x_t = sqrt(a_i) x0 + sqrt(1 - a_i) eps,
        conditioning t = i + 1, mask_ratio of the patches of x_t hidden; the decoder predicts x0 and eps for every
        patch and L_{t>=1} = (MSE(eps_hat, eps) over visible pixels + MSE(x0_hat, x0) over masked pixels) / 2.
    loss = (n0 / B) * L_{t=0} + (1 - n0 / B) * L_{t>=1}

The encoder (stock transformers ViT) only ever runs on the visible tokens; the decoder
(`heads.MaskedAutoencoderDecoder`, adaLN-conditioned on the timestep embedding) gets the encoder's CLS token as
a prefix, a mask token at each hidden position, and predicts `2 * patch**2 * C` values per patch (x0 then eps).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import patchify, pool_vit_tokens, vit_embed_patches, vit_forward_tokens, gather_tokens, vit_grid
from ..base import SSLPreTrainedModel
from ..heads import MaskedAutoencoderDecoder
from ..masking import mask_to_index, num_masked, random_mask_torch
from ..outputs import SSLOutput
from .configuration_umd import UMDConfig
from .diffusion_umd import alphas_cumprod, q_sample, timestep_embedding


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of integer t followed by the official `EmbeddingTrunk` (Linear(d, 2d), SiLU,
    Linear(2d, d))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class UMDForSelfSupervisedPretraining(SSLPreTrainedModel):
    """UMD pretraining model. See the package docstring (`hf_ssl.modeling.umd`) for the method and deviations.

    Attributes:
        encoder: stock transformers ViT (exported); it runs on visible tokens only.
        time_embed: :class:`TimestepEmbedder` (width = encoder width).
        encoder_time_proj: Linear map of the time embedding added to every encoder input token relative to t = 0
            (`None` when `encoder_time_conditioning=False`).
        decoder: `heads.MaskedAutoencoderDecoder` conditioned on `SiLU(time embedding)` (adaLN) or on a prepended
            time token.
    """

    config_class = UMDConfig

    def __init__(self, config: UMDConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        bb = config.backbone_config
        enc_dim = bb.hidden_size
        dim = config.resolved_decoder_hidden_size
        patch = bb.patch_size
        grid = vit_grid(bb, (config.image_size, config.image_size))
        self.time_embed = TimestepEmbedder(enc_dim)
        self.encoder_time_proj = nn.Linear(enc_dim, enc_dim) if config.encoder_time_conditioning else None
        adaln = config.time_conditioning == "adaln"
        self.time_token_proj = None if adaln else nn.Linear(enc_dim, dim)
        self.decoder = MaskedAutoencoderDecoder(
            in_dim=enc_dim, dim=dim, depth=config.decoder_depth, num_heads=config.resolved_decoder_num_heads,
            out_dim=2 * patch * patch * config.num_channels, mlp_ratio=config.decoder_mlp_ratio,
            num_prefix_tokens=1 if adaln else 2, pos_embed=config.decoder_pos_embed,
            num_patches=grid[0] * grid[1], embed=True, cond_dim=enc_dim if adaln else None,
        )
        self.post_init()

    # -- initialisation -------------------------------------------------------------------------------------
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
            # adaLN-Zero modulations (every decoder block starts as the identity, final shift/scale at 0)
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, MaskedAutoencoderDecoder):
            init.normal_(module.mask_token, std=0.02)
            if module.pos_embed_table is not None:
                init.normal_(module.pos_embed_table, std=module.pos_embed_table.shape[1] ** -0.5)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _grid(self, pixel_values: torch.Tensor) -> Tuple[int, int]:
        patch = self.config.backbone_config.patch_size
        h, w = pixel_values.shape[-2:]
        if h % patch or w % patch:
            raise ValueError(f"pixel_values size {(h, w)} is not divisible by the ViT patch size {patch}")
        grid = vit_grid(self.encoder.config, (h, w))
        if self.config.decoder_pos_embed == "learned":
            expected = vit_grid(self.encoder.config, (self.config.image_size, self.config.image_size))
            if tuple(grid) != tuple(expected):
                raise ValueError(f"UMD with learned decoder positions needs {self.config.image_size}px inputs, "
                                 f"got {(h, w)}")
        return grid

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return alphas_cumprod(self.config.noise_schedule, self.config.num_timesteps, self.encoder.device)

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        """Time embedding `[B, D]` of integer conditioning timesteps t (0 = clean image)."""
        return self.time_embed(t)

    def encode(self, pixel_values: torch.Tensor, visible_index: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Visible-token encoder pass `[B, 1 + K, D]` conditioned (additively, relative to t = 0) on t."""
        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        x = torch.cat([cls, gather_tokens(tokens, visible_index)], dim=1)
        if self.encoder_time_proj is not None:
            c = self.encoder_time_proj(self.condition(t)) - self.encoder_time_proj(self.condition(torch.zeros_like(t)))
            x = x + c.unsqueeze(1).to(x.dtype)
        return vit_forward_tokens(self.encoder, x)

    def denoise(self, pixel_values: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, grid: Tuple[int, int]):
        """Encoder + decoder on (possibly noised) `pixel_values` with patch mask `mask` `[B, N]` at conditioning
        timesteps `t` `[B]`. Returns (predicted x0 patches `[B, N, P]`, predicted eps patches `[B, N, P]`,
        encoder tokens `[B, 1 + K, D]`)."""
        visible_index, _ = mask_to_index(mask)
        encoded = self.encode(pixel_values, visible_index, t)
        cond = self.condition(t)
        n = grid[0] * grid[1]
        if self.time_token_proj is None:
            out = self.decoder(encoded, visible_index, n, grid, cond=F.silu(cond))[:, 1:]
        else:  # time token (projected to the decoder width) prepended after the decoder's input embedding
            out = self._decode_with_time_token(encoded, visible_index, n, grid, cond)
        p = out.shape[-1] // 2
        return out[..., :p], out[..., p:], encoded

    def _decode_with_time_token(self, encoded, visible_index, n, grid, cond):
        dec = self.decoder
        x = dec.embed(encoded)
        b, d = x.shape[0], x.shape[-1]
        full = dec.mask_token.to(x.dtype).expand(b, n, d)
        full = full.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])
        full = full + dec.positions(n, grid, x.device, x.dtype)
        x = torch.cat([self.time_token_proj(cond).unsqueeze(1).to(x.dtype), x[:, :1], full], dim=1)
        for block in dec.blocks:
            x = block(x)
        return dec.head(dec.norm(x))[:, 2:]

    def _mask(self, bool_masked_pos: Optional[torch.Tensor], rows: torch.Tensor, ratio: float, n: int,
              device, generator=None) -> torch.Tensor:
        if bool_masked_pos is not None:
            mask = bool_masked_pos[rows].to(device=device, dtype=torch.bool)
            counts = mask.sum(1)
            if mask.numel() and not bool((counts == counts[0]).all()):
                raise ValueError("bool_masked_pos must mask the same number of patches within the no-noise group and "
                                 f"within the noised group, got counts {counts.tolist()}")
            if mask.numel() and int(counts[0]) == n:
                raise ValueError("bool_masked_pos must leave at least one patch visible")
            return mask
        if num_masked(n, ratio) >= n:
            raise ValueError(f"mask ratio {ratio} leaves no visible patch of {n}")
        return random_mask_torch(len(rows), n, ratio, device=device, generator=generator)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, timesteps: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None, bool_masked_pos: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` images normalised to [-1, 1] (the clean x0).
            timesteps: optional `[B]` integer conditioning timesteps: 0 = the noise-free mask step, t in 1..T = the
                noise step with noising index t - 1. Drawn as in the official trainer when omitted (the last
                `int(B * no_noise_prob)` samples take t = 0, the others t ~ U{1..T}).
            noise: optional `[B, C, H, W]` Gaussian noise for the noised samples (drawn when omitted).
            bool_masked_pos: optional `[B, N]` masks (True = hidden); counts must agree within each group. Random
                exact-count masks with `mask_ratio_no_noise` / `mask_ratio` are drawn when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `embeddings` = pooled (detached) encoder tokens of each
            sample's own pass (visible tokens of its clean or noised input), `logits` = predicted x0 patches `[B, N, P]`.
        """
        self.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        grid = self._grid(pixel_values)
        n = grid[0] * grid[1]
        device = pixel_values.device
        cfg = self.config
        if timesteps is None:
            n0 = int(b * cfg.no_noise_prob)
            timesteps = torch.randint(1, cfg.num_timesteps + 1, (b,), device=device)
            if n0:
                timesteps[b - n0:] = 0
        else:
            timesteps = torch.as_tensor(timesteps, device=device).long().view(-1)
            if timesteps.shape[0] != b:
                raise ValueError(f"timesteps must have one entry per image ({b}), got {timesteps.shape[0]}")
            if int(timesteps.min()) < 0 or int(timesteps.max()) > cfg.num_timesteps:
                raise ValueError(f"timesteps must lie in [0, {cfg.num_timesteps}]")
        if bool_masked_pos is not None:
            bool_masked_pos = torch.as_tensor(bool_masked_pos, device=device)
            if bool_masked_pos.dim() == 3:
                bool_masked_pos = bool_masked_pos.flatten(1)
            if bool_masked_pos.shape != (b, n):
                raise ValueError(f"bool_masked_pos must have shape [batch, num_patches] = {[b, n]}, "
                                 f"got {list(bool_masked_pos.shape)}")
        clean_rows = torch.nonzero(timesteps == 0).flatten()
        noisy_rows = torch.nonzero(timesteps > 0).flatten()
        patch = cfg.backbone_config.patch_size
        x0_patches = patchify(pixel_values.float(), patch)
        predictions = pixel_values.new_zeros(b, n, x0_patches.shape[-1], dtype=torch.float32)
        zero = pixel_values.new_zeros((), dtype=torch.float32)
        mask_loss, diffusion_loss, eps_loss, x0_loss = zero, zero, zero, zero
        embeddings = []

        if len(clean_rows):
            mask = self._mask(bool_masked_pos, clean_rows, cfg.mask_ratio_no_noise, n, device)
            x0_hat, _, encoded = self.denoise(pixel_values[clean_rows], mask, timesteps[clean_rows], grid)
            mask_loss = self._masked_mse(x0_hat, x0_patches[clean_rows], mask)
            predictions = predictions.index_copy(0, clean_rows, x0_hat.float())
            embeddings.append((clean_rows, encoded))
        if len(noisy_rows):
            mask = self._mask(bool_masked_pos, noisy_rows, cfg.mask_ratio, n, device)
            x0 = pixel_values[noisy_rows]
            eps = torch.randn_like(x0) if noise is None else torch.as_tensor(noise, device=device)[noisy_rows]
            if eps.shape != x0.shape:
                raise ValueError(f"noise must have the shape of pixel_values {list(pixel_values.shape)}")
            x_t = q_sample(x0, timesteps[noisy_rows] - 1, eps.to(x0.dtype), self.alphas_cumprod)
            x0_hat, eps_hat, encoded = self.denoise(x_t, mask, timesteps[noisy_rows], grid)
            eps_patches = patchify(eps.float(), patch)
            if bool(mask.any()):
                eps_loss = self._masked_mse(eps_hat, eps_patches, ~mask)
                x0_loss = self._masked_mse(x0_hat, x0_patches[noisy_rows], mask)
            else:  # no masking in the noise step: both terms over every pixel (official)
                eps_loss = F.mse_loss(eps_hat.float(), eps_patches)
                x0_loss = F.mse_loss(x0_hat.float(), x0_patches[noisy_rows])
            diffusion_loss = (eps_loss + x0_loss) / 2
            predictions = predictions.index_copy(0, noisy_rows, x0_hat.float())
            embeddings.append((noisy_rows, encoded))
        r = len(clean_rows) / b
        loss = r * mask_loss + (1 - r) * diffusion_loss

        pooled = pixel_values.new_zeros(b, cfg.backbone_config.hidden_size)
        for rows, tokens in embeddings:
            pooled = pooled.index_copy(0, rows, pool_vit_tokens(tokens, cfg.feature_pooling).detach().to(pooled.dtype))
        output = SSLOutput(
            loss=loss,
            embeddings=pooled,
            logits=predictions,
            metrics={"mask_step_loss": mask_loss.detach(), "diffusion_loss": diffusion_loss.detach(),
                     "eps_loss": eps_loss.detach(), "x0_loss": x0_loss.detach(),
                     "no_noise_fraction": torch.tensor(r)},
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _masked_mse(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the pixels of the patches where `where` `[B, N]` is True."""
        se = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, N] mean over the pixels of each patch
        w = where.float()
        return (se * w).sum() / w.sum().clamp_min(1.0)


__all__ = ["UMDForSelfSupervisedPretraining", "TimestepEmbedder"]
