"""CAE model: visible-patch ViT encoder, latent contextual regressor, alignment and reconstruction decoder.

Data flow of one step (B images, N patches, M masked, K = N - M visible; all masks exact-count):

    visible patches --encoder (ViT, visible tokens only)--> Z_v [B, K, D]  (CLS dropped for the regressor)
    mask tokens + sincos pos(masked)  --regressor (cross-attn, keys/values = [Z_v ; current queries])--> Z_m_hat
    masked patches --encoder under no_grad (or EMA teacher)--> Z_m                 (alignment target, stop-grad)
    Z_m_hat + sincos pos(masked) --decoder (self-attn over masked tokens only) + linear head--> Y_hat [B, M, P]
    loss = reconstruction(Y_hat, targets of masked patches) + alignment_weight * MSE(Z_m_hat, Z_m)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import (
    gather_tokens,
    init_sincos_position_embeddings_,
    patchify,
    pool_vit_tokens,
    sincos_pos_embed_2d,
    unpatchify,
    vit_forward_visible,
    vit_grid,
)
from ..base import SSLPreTrainedModel
from ..heads import Attention, TransformerBlock, TransformerDecoder
from ..losses import normalized_pixel_targets
from ..masking import block_mask_torch, mask_to_index, num_masked, random_mask_torch
from ..momentum import ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_cae import CAEConfig

_LN_EPS = 1e-6  # official norm_layer = partial(nn.LayerNorm, eps=1e-6)
_PIXEL_NORM_EPS = 1e-6

# fixed 2-D sin-cos tables, cached per (dim, grid, device, dtype) so nothing is rebuilt or copied every step
_POS_CACHE: Dict[tuple, torch.Tensor] = {}


def _sincos_table(dim: int, grid: Tuple[int, int], device, dtype) -> torch.Tensor:
    key = (dim, tuple(grid), str(device), dtype)
    table = _POS_CACHE.get(key)
    if table is None:
        table = sincos_pos_embed_2d(dim, grid[0], grid[1]).to(device=device, dtype=dtype)
        _POS_CACHE[key] = table
    return table


def _uniform_xavier_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Xavier-uniform with explicit fans (to reproduce the bound of the official fused qkv matrices)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    init.uniform_(weight, -bound, bound)


class CAERegressorBlock(nn.Module):
    """One block of the latent contextual regressor (official `RegressorBlock`).

    Queries are the current masked-patch estimates plus their position embeddings; keys are
    `LN([visible latents ; current estimates] + positions)`; values are the same tokens *without*
    positions. The cross-attention residual is followed by a LayerNorm and a residual MLP; both residual
    branches carry per-channel gains initialised to `layer_scale`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float = 0.1):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm_key = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm_value = nn.LayerNorm(dim, eps=_LN_EPS)
        self.cross_attn = Attention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim, eps=_LN_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, queries: torch.Tensor, context: torch.Tensor, query_pos: torch.Tensor,
                context_pos: torch.Tensor) -> torch.Tensor:
        attn = self.cross_attn(
            self.norm_query(queries + query_pos),
            self.norm_key(context + context_pos),
            value_context=self.norm_value(context),
        )
        x = queries + (attn if self.gamma_1 is None else self.gamma_1 * attn)
        x = self.norm_cross(x)
        mlp = self.mlp(x)
        return x + (mlp if self.gamma_2 is None else self.gamma_2 * mlp)


class CAELatentRegressor(nn.Module):
    """Stack of :class:`CAERegressorBlock` + final LayerNorm (official `LatentRegresser`). Each block attends
    from the masked queries to the visible latents concatenated with the current masked estimates."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(
            [CAERegressorBlock(dim, num_heads, mlp_ratio, layer_scale) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, mask_queries: torch.Tensor, visible_latents: torch.Tensor, masked_pos: torch.Tensor,
                visible_pos: torch.Tensor) -> torch.Tensor:
        x = mask_queries
        context_pos = torch.cat([visible_pos, masked_pos], dim=1)
        for block in self.blocks:
            x = block(x, torch.cat([visible_latents, x], dim=1), masked_pos, context_pos)
        return self.norm(x)


class CAEForSelfSupervisedPretraining(SSLPreTrainedModel):
    """CAE pretraining model. See the package docstring (`hf_ssl.modeling.cae`) for the method and deviations.

    Attributes:
        encoder: stock transformers ViT (what `export_encoder` writes); it only ever sees visible patches in
            the gradient path.
        regressor: :class:`CAELatentRegressor` (cross-attention, depth `regressor_depth`).
        decoder: `heads.TransformerDecoder` (self-attention over masked tokens, depth `decoder_depth`, then
            LayerNorm and a linear head to `patch_size**2 * num_channels` pixels or `vocab_size` logits).
        mask_token: learned query `[1, 1, decoder width]` shared by all masked positions.
        teacher_encoder: EMA copy of the encoder when `teacher_momentum > 0`, else `None` (official behaviour:
            targets come from the encoder itself under `torch.no_grad`).
    """

    config_class = CAEConfig

    def __init__(self, config: CAEConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        enc_dim = config.backbone_config.hidden_size
        dim = config.regressor_hidden_size
        heads = config.regressor_num_heads
        layer_scale = config.decoder_layer_scale or None
        if dim != enc_dim:
            self.encoder_to_regressor = nn.Linear(enc_dim, dim)
            self.encoder_to_regressor_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        else:
            self.encoder_to_regressor = None
            self.encoder_to_regressor_norm = None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.regressor = CAELatentRegressor(dim, config.regressor_depth, heads, config.decoder_mlp_ratio,
                                            config.decoder_layer_scale)
        patch = config.backbone_config.patch_size
        out_dim = config.vocab_size if config.target == "tokens" else patch * patch * config.num_channels
        self.decoder = TransformerDecoder(dim, config.decoder_depth, heads, out_dim, config.decoder_mlp_ratio,
                                          layer_scale=layer_scale)
        self.teacher_encoder = self._build_encoder() if config.teacher_momentum > 0 else None
        self.apply_frozen_parameters_()
        self.__dict__["_visual_tokenizer"] = None  # plain attribute: never registered, never saved
        self.post_init()

    # -- initialisation (official: xavier-uniform linears, LN 1/0, trunc-normal mask token) ----------------
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
        if isinstance(module, (TransformerBlock, CAERegressorBlock)) and module.gamma_1 is not None:
            init.constant_(module.gamma_1, float(module.layer_scale))
            init.constant_(module.gamma_2, float(module.layer_scale))
        if isinstance(module, TransformerBlock) and not module.cross_attention:
            # official decoder blocks use one fused qkv matrix: xavier bound of a [3D, D] matrix
            d = module.attn.q.in_features
            _uniform_xavier_(module.attn.q.weight, d, 3 * d)
            _uniform_xavier_(module.attn.kv.weight, d, 3 * d)
        if isinstance(module, CAERegressorBlock):
            # official regressor has separate q/k/v [D, D] matrices; our k and v share one [2D, D] Linear
            d = module.cross_attn.q.in_features
            _uniform_xavier_(module.cross_attn.kv.weight, d, d)
        if module is self:
            init.trunc_normal_(self.mask_token, std=std)
            self._init_encoder_weights(self.encoder)
            if self.teacher_encoder is not None:
                init_teacher_from_student_((self.teacher_encoder, self.encoder))

    def _init_encoder_weights(self, encoder: nn.Module) -> None:
        """The stock ViT initialises itself (trunc-normal); the official CAE re-initialises every encoder
        linear with xavier-uniform (q/k/v with the bound of its fused qkv matrix) and uses fixed sin-cos
        positions (zero for CLS)."""
        qkv = set()
        for m in encoder.modules():
            for names in (("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):  # transformers 5 / 4 names
                if all(isinstance(getattr(m, n, None), nn.Linear) for n in names):
                    qkv.update(id(getattr(m, n)) for n in names)
        for m in encoder.modules():
            if isinstance(m, nn.Linear):
                if id(m) in qkv:
                    _uniform_xavier_(m.weight, m.in_features, 3 * m.out_features)
                else:
                    init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    init.zeros_(m.bias)
        if self.config.encoder_sincos_pos_embed:
            init_sincos_position_embeddings_(encoder)

    # -- visual tokenizer for target="tokens" -------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Register a callable `pixel_values [B, C, H, W] -> LongTensor [B, N]` (or `[B, gh, gw]`) of visual-token
        ids in `[0, vocab_size)` (e.g. a wrapped DALL-E d-VAE encoder's argmax), used for `target="tokens"`
        when `forward` gets no `visual_tokens`. It is not saved with the model."""
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError("tokenizer must be callable")
        self.__dict__["_visual_tokenizer"] = tokenizer

    # -- masks ---------------------------------------------------------------------------------------------
    def generate_mask(self, batch_size: int, grid: Tuple[int, int], device=None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Exact-count `[B, N]` bool mask (True = masked) following `config.augmentation["mask"]` (block-wise
        by default, `min_block_patches` from the augmentation policy) and `config.mask_ratio`."""
        aug = self.config.augmentation
        if aug.get("mask", "block") == "random":
            return random_mask_torch(batch_size, grid[0] * grid[1], self.config.mask_ratio, device=device,
                                     generator=generator)
        return block_mask_torch(batch_size, grid, self.config.mask_ratio, device=device, generator=generator,
                                min_block_patches=int(aug.get("min_block_patches", 16)))

    def _grid(self, pixel_values: torch.Tensor) -> Tuple[int, int]:
        patch = self.config.backbone_config.patch_size
        h, w = pixel_values.shape[-2:]
        if h % patch or w % patch:
            raise ValueError(f"pixel_values size {(h, w)} is not divisible by the ViT patch size {patch}")
        return vit_grid(self.encoder.config, (h, w))

    def _prepare_mask(self, bool_masked_pos: Optional[torch.Tensor], batch_size: int, grid: Tuple[int, int],
                      device) -> torch.Tensor:
        n = grid[0] * grid[1]
        if bool_masked_pos is None:
            return self.generate_mask(batch_size, grid, device=device)
        if not isinstance(bool_masked_pos, torch.Tensor):
            bool_masked_pos = torch.as_tensor(bool_masked_pos)
        if bool_masked_pos.dim() == 3:  # [B, gh, gw] as produced by 2-D mask generators
            bool_masked_pos = bool_masked_pos.flatten(1)
        if bool_masked_pos.dim() != 2 or bool_masked_pos.shape != (batch_size, n):
            raise ValueError(
                f"bool_masked_pos must have shape [batch, num_patches] = {[batch_size, n]} (or [batch, {grid[0]}, "
                f"{grid[1]}]), got {list(bool_masked_pos.shape)}"
            )
        mask = bool_masked_pos.to(device=device, dtype=torch.bool)
        counts = mask.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(
                "bool_masked_pos must mask the same number of patches in every sample (visible tokens are batched), "
                f"got counts {counts.tolist()}"
            )
        m = int(counts[0])
        if m == 0 or m == n:
            raise ValueError(f"bool_masked_pos must mask at least one and at most {n - 1} of {n} patches, got {m}")
        return mask

    # -- building blocks of the forward pass --------------------------------------------------------------
    def _to_regressor(self, latents: torch.Tensor) -> torch.Tensor:
        if self.encoder_to_regressor is None:
            return latents
        return self.encoder_to_regressor_norm(self.encoder_to_regressor(latents))

    def _alignment_targets(self, pixel_values: torch.Tensor, masked_index: torch.Tensor) -> torch.Tensor:
        """Representations of the masked patches by the encoder (or EMA teacher), stop-gradient: the masked
        patches are encoded on their own (with the CLS token, which is then dropped), as in the official
        `alignment_encoder(x, bool_masked_pos=~bool_masked_pos)`."""
        encoder = self.teacher_encoder if self.teacher_encoder is not None else self.encoder
        with torch.no_grad():
            target = vit_forward_visible(encoder, pixel_values, masked_index)[:, 1:]
            target = self._to_regressor(target)
        return target.detach()

    def _regress(self, visible_latents: torch.Tensor, visible_index: torch.Tensor, masked_index: torch.Tensor,
                 grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masked-patch latents predicted from visible latents; also returns the masked positions."""
        b, _, dim = visible_latents.shape
        table = _sincos_table(dim, grid, visible_latents.device, visible_latents.dtype)
        table = table.unsqueeze(0).expand(b, -1, -1)
        visible_pos = gather_tokens(table, visible_index)
        masked_pos = gather_tokens(table, masked_index)
        queries = self.mask_token.to(visible_latents.dtype).expand(b, masked_index.shape[1], -1)
        return self.regressor(queries, visible_latents, masked_pos, visible_pos), masked_pos

    def _reconstruction_targets(self, pixel_values: torch.Tensor, visual_tokens: Optional[torch.Tensor],
                                grid: Tuple[int, int]) -> torch.Tensor:
        """Targets of every patch, `[B, N, P]` floats or `[B, N]` token ids; always without gradient."""
        target = self.config.target
        if target == "tokens":
            if visual_tokens is None:
                if self._visual_tokenizer is None:
                    raise ValueError(
                        "target='tokens' needs `visual_tokens` [batch, num_patches] (d-VAE codebook ids) in the "
                        "batch or a tokenizer registered with `model.set_tokenizer(callable)`."
                    )
                with torch.no_grad():
                    visual_tokens = self._visual_tokenizer(pixel_values)
            tokens = torch.as_tensor(visual_tokens, device=pixel_values.device).long()
            if tokens.dim() == 3:
                tokens = tokens.flatten(1)
            if tokens.shape != (pixel_values.shape[0], grid[0] * grid[1]):
                raise ValueError(
                    f"visual_tokens must be [batch, num_patches] = {[pixel_values.shape[0], grid[0] * grid[1]]}, "
                    f"got {list(tokens.shape)}"
                )
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.vocab_size):
                raise ValueError(f"visual_tokens must be ids in [0, {self.config.vocab_size})")
            return tokens.detach()
        patches = patchify(pixel_values.detach().float(), self.config.backbone_config.patch_size)
        if target == "pixel_norm":
            patches = normalized_pixel_targets(patches, eps=_PIXEL_NORM_EPS)
        return patches

    def _loss_terms(self, predictions: torch.Tensor, targets: torch.Tensor, masked_index: torch.Tensor,
                    latent_pred: Optional[torch.Tensor], latent_target: Optional[torch.Tensor]):
        """(reconstruction loss over masked patches only, alignment MSE). `targets` covers all N patches;
        only the rows at `masked_index` enter the loss."""
        if targets.dim() < 2 or targets.shape[0] != predictions.shape[0]:
            raise ValueError(f"targets must be [batch, num_patches, ...], got {list(targets.shape)}")
        if self.config.target == "tokens":
            if targets.dim() != 2:
                raise ValueError(f"visual_tokens must be [batch, num_patches], got {list(targets.shape)}")
            masked_targets = torch.gather(targets, 1, masked_index)
            recon = F.cross_entropy(predictions.float().reshape(-1, predictions.shape[-1]),
                                    masked_targets.reshape(-1))
        else:
            masked_targets = gather_tokens(targets, masked_index)
            recon = F.mse_loss(predictions.float(), masked_targets.float())
        if latent_pred is None or latent_target is None:
            align = predictions.new_zeros((), dtype=torch.float32)
        else:
            align = F.mse_loss(latent_pred.float(), latent_target.float())
        return recon, align

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.Tensor] = None,
                visual_tokens: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` normalized images.
            bool_masked_pos: `[B, N]` (or `[B, gh, gw]`) bool, True = masked; every sample must mask the same
                number of patches. Drawn with `generate_mask` (block-wise, `mask_ratio`) when omitted.
            visual_tokens: `[B, N]` visual-token ids, only for `target="tokens"`.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = pooled (`feature_pooling`) output of the
            visible-token encoder pass (detached; no extra forward); `logits` = predictions for the masked patches
            `[B, M, patch**2 * C]` (or `[B, M, vocab_size]`), in ascending patch order of each sample's mask.
        """
        self.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        grid = self._grid(pixel_values)
        mask = self._prepare_mask(bool_masked_pos, b, grid, pixel_values.device)
        visible_index, masked_index = mask_to_index(mask)

        # encoder on visible patches only (gradient path)
        visible_tokens = vit_forward_visible(self.encoder, pixel_values, visible_index)  # [B, 1 + K, D]
        visible_latents = self._to_regressor(visible_tokens[:, 1:])

        latent_pred, masked_pos = self._regress(visible_latents, visible_index, masked_index, grid)
        latent_target = None
        if self.config.alignment_weight > 0:
            latent_target = self._alignment_targets(pixel_values, masked_index)

        predictions = self.decoder(latent_pred + masked_pos)
        targets = self._reconstruction_targets(pixel_values, visual_tokens, grid)
        recon, align = self._loss_terms(predictions, targets, masked_index, latent_pred, latent_target)
        loss = recon + self.config.alignment_weight * align

        embeddings = pool_vit_tokens(visible_tokens, self.config.feature_pooling).detach()
        output = SSLOutput(
            loss=loss,
            embeddings=embeddings,
            logits=predictions,
            metrics={"reconstruction_loss": recon.detach(), "alignment_loss": align.detach()},
        )
        return output if return_dict else output.to_tuple()

    def on_step_end(self, step: int, max_steps: int) -> None:
        if self.teacher_encoder is not None:
            ema_update_(self.teacher_encoder, self.encoder, self.config.teacher_momentum)

    # -- pictures ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.Tensor] = None,
                    unnormalize: bool = False) -> torch.Tensor:
        """Image `[B, C, H, W]` whose masked patches are replaced by the decoder's predictions and whose visible
        patches are the input. With `target="pixel_norm"` each predicted patch is de-normalized with the mean and
        standard deviation of the true patch (MAE's visualisation convention). Output is in the input's
        (normalized) space, or in [0, 1] image space with `unnormalize=True`."""
        if self.config.target == "tokens":
            raise ValueError("reconstruct() needs pixel targets; token predictions need the d-VAE decoder to render")
        self.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        grid = self._grid(pixel_values)
        mask = self._prepare_mask(bool_masked_pos, b, grid, pixel_values.device)
        visible_index, masked_index = mask_to_index(mask)
        visible_latents = self._to_regressor(vit_forward_visible(self.encoder, pixel_values, visible_index)[:, 1:])
        latent_pred, masked_pos = self._regress(visible_latents, visible_index, masked_index, grid)
        pred = self.decoder(latent_pred + masked_pos).float()
        patch = self.config.backbone_config.patch_size
        patches = patchify(pixel_values.float(), patch)
        if self.config.target == "pixel_norm":
            true = gather_tokens(patches, masked_index)
            mean = true.mean(dim=-1, keepdim=True)
            std = (true.var(dim=-1, keepdim=True) + _PIXEL_NORM_EPS).sqrt()
            pred = pred * std + mean
        out = patches.scatter(1, masked_index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]), pred)
        image = unpatchify(out, patch, grid, self.config.num_channels).to(pixel_values.dtype)
        if unnormalize:
            mean = torch.tensor(self.config.image_mean, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.config.image_std, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
            image = (image * std + mean).clamp(0, 1)
        return image


def expected_num_masked(config: CAEConfig, image_size: Optional[int] = None) -> int:
    """Number of patches the model masks when it draws its own mask."""
    gh, gw = vit_grid(config.backbone_config, image_size)
    return num_masked(gh * gw, config.mask_ratio)


__all__ = ["CAEForSelfSupervisedPretraining", "CAELatentRegressor", "CAERegressorBlock", "expected_num_masked"]
