"""NeRF-MAE model: a stock 3-D ViT (VideoMAEModel over depth) encodes the visible 3-D patches of a voxel grid, a
transformer decoder with mask tokens and fixed 3-D sin-cos positions predicts every patch; the loss is the
opacity-aware reconstruction of the masked patches (sigmoid alpha MSE + colour MSE where the target is occupied),
or masked-patch MSE for generic intensity volumes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..backbones import (patchify_3d, sincos_pos_embed_3d, video_forward_visible,
                         video_patch_grid, volume_to_video)
from ..base import SSLPreTrainedModel
from ..heads import TransformerBlock
from ..losses import normalized_pixel_targets
from ..masking import mask_to_index, random_mask_torch, resolve_patch_mask
from ..outputs import SSLOutput
from ..video_base import VolumeInputsMixin
from .configuration_nerf_mae import NeRFMAEConfig


class VolumeMAEDecoder(nn.Module):
    """MAE decoder over a 3-D patch grid: linear embed of the visible tokens, a shared learned mask token at every
    masked position, fixed 3-D sin-cos positions, pre-norm transformer blocks, LayerNorm, linear patch head."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int, grid: tuple):
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_3d(dim, self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, visible_tokens: torch.Tensor, visible_index: torch.Tensor) -> torch.Tensor:
        x = self.embed(visible_tokens)
        b, _, d = x.shape
        n = self.pos_embed.shape[1]
        full = self.mask_token.to(x.dtype).expand(b, n, d)
        full = full.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, d), x)
        x = full + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class NeRFMAEForSelfSupervisedPretraining(VolumeInputsMixin, SSLPreTrainedModel):
    """NeRF-MAE pretraining model (see `hf_ssl.modeling.nerf_mae`). Main input `pixel_values_volumes
    [B, C, D, H, W]`; `get_input_features` = mean of the encoder's tokens on the whole volume."""

    config_class = NeRFMAEConfig
    main_input_name = "pixel_values_volumes"
    input_modalities = ("video",)
    input_channel_dim = 1

    def __init__(self, config: NeRFMAEConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        bb = config.backbone_config
        self.grid = video_patch_grid(bb)
        self.patch = (bb.tubelet_size, bb.patch_size, bb.patch_size)
        out_dim = self.patch[0] * self.patch[1] * self.patch[2] * config.num_channels
        self.decoder = VolumeMAEDecoder(bb.hidden_size, config.decoder_hidden_size, config.decoder_depth,
                                        config.decoder_num_heads, out_dim, self.grid)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.normal_(self.decoder.mask_token, std=0.02)  # MAE / NeRF-MAE: normal(std=0.02)

    # -- inputs -----------------------------------------------------------------------------------------
    def generate_mask(self, batch_size: int, num_patches: int, device=None, generator=None) -> torch.Tensor:
        return random_mask_torch(batch_size, num_patches, self.config.mask_ratio, device=device, generator=generator)

    def _normalization(self, device, dtype) -> tuple:
        """The config's per-channel `image_mean` / `image_std` as `[1, C, 1, 1, 1]` tensors (raw = x * std + mean)."""
        shape = (1, self.config.num_channels, 1, 1, 1)
        return (torch.tensor(self.config.image_mean, device=device, dtype=dtype).view(shape),
                torch.tensor(self.config.image_std, device=device, dtype=dtype).view(shape))

    # -- loss -------------------------------------------------------------------------------------------
    def reconstruction_loss(self, pred: torch.Tensor, volumes: torch.Tensor, mask: torch.Tensor) -> dict:
        """`pred [B, N, V*C]` (V voxels per patch), `volumes` the (normalised) input, `mask [B, N]` True = masked.
        Returns the loss terms; targets are the un-normalised input (raw colour / density)."""
        cfg = self.config
        c = cfg.num_channels
        mean, std = self._normalization(volumes.device, torch.float32)
        raw = volumes.detach().float() * std + mean
        target = patchify_3d(raw, self.patch)  # [B, N, V*C], voxel-major, channel-last
        b, n, _ = target.shape
        pred = pred.float()
        m = mask.float()
        if cfg.density_channel is None:
            if cfg.norm_pix_loss:
                target = normalized_pixel_targets(target)
            per_patch = ((pred - target) ** 2).mean(dim=-1)
            loss = (per_patch * m).sum() / m.sum()
            return {"loss": loss, "reconstruction_loss": loss}
        target = target.view(b, n, -1, c)
        pred = pred.view(b, n, -1, c)
        dc = cfg.density_channel
        colour = [i for i in range(c) if i != dc]
        alpha_t = target[..., dc]
        alpha_p = torch.sigmoid(pred[..., dc])  # official `alpha_activation = nn.Sigmoid()`
        voxel_mask = m.unsqueeze(-1).expand_as(alpha_t)
        alpha_loss = (((alpha_p - alpha_t) ** 2) * voxel_mask).sum() / voxel_mask.sum()
        occupied = (alpha_t > cfg.alpha_threshold).float()
        region = occupied * voxel_mask if cfg.color_loss_region == "masked" else occupied
        if colour:
            err = ((pred[..., colour] - target[..., colour]) ** 2).sum(dim=-1)  # summed over colour channels
            color_loss = (err * region).sum() / (region.sum() * len(colour)).clamp_min(1.0)
        else:
            color_loss = alpha_loss.new_zeros(())
        return {"loss": color_loss + alpha_loss, "color_loss": color_loss, "alpha_loss": alpha_loss}

    # -- task metric ------------------------------------------------------------------------------------
    @torch.no_grad()
    def geometry_only(self, volumes: torch.Tensor, grey: float = 0.5) -> torch.Tensor:
        """Normalised radiance grids `[B, C, D, H, W]` -> the same grids with their colour replaced by a uniform
        `grey * alpha` (the density channel is kept), normalised again: the scene's geometry without its colours."""
        cfg = self.config
        if cfg.density_channel is None:
            raise ValueError("geometry_only needs radiance grids with a density channel (config.density_channel)")
        self.check_volumes(volumes)
        c = cfg.num_channels
        mean, std = self._normalization(volumes.device, volumes.dtype)
        raw = volumes * std + mean
        alpha = raw[:, cfg.density_channel: cfg.density_channel + 1]
        colour = [i for i in range(c) if i != cfg.density_channel]
        raw = raw.clone()
        raw[:, colour] = (grey * alpha).expand(-1, len(colour), -1, -1, -1)
        return (raw - mean) / std

    def task_metrics(self, dataset: str, split: str = "test", max_samples: Optional[int] = None, k: int = 20,
                     temperature: float = 0.07, **kwargs) -> dict:
        """Geometry k-NN: the weighted k-NN accuracy of the pooled encoder features on the density field alone
        (colour replaced by uniform grey where occupied, :meth:`geometry_only`), bank = the `train` split, queries
        = `split`. It measures shape-class retrieval from geometry, what NeRF-MAE's downstream 3-D tasks (boxes,
        voxel labels) rely on; scene colours (in the built-in grids a random hue and texture per volume, independent
        of the class) are left out. `{}` without a density channel or labelled splits. `hf-ssl pretrain` reports it
        for the random-init and the trained model."""
        from ...training.data import labeled_eval_dataset
        from ...training.evaluation import extract_features, knn_and_linear_metrics

        if self.config.density_channel is None or self.config.num_channels < 2:
            return {}
        try:
            bank = labeled_eval_dataset(dataset, "train", self.config, max_samples=max_samples)
            queries = labeled_eval_dataset(dataset, split, self.config, max_samples=max_samples)
        except (ValueError, FileNotFoundError):
            return {}

        def features(x):
            return self.get_input_features(self.geometry_only(x))

        train = extract_features(self, bank, desc="geometry k-NN bank", feature_fn=features)
        test = extract_features(self, queries, desc="geometry k-NN queries", feature_fn=features)
        out = knn_and_linear_metrics(train, test, k=k, temperature=temperature)
        return {"geometry_knn_accuracy": out["knn_accuracy"]}

    def forward(self, pixel_values_volumes: torch.Tensor = None, bool_masked_pos: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_volumes: `[B, C, D, H, W]` voxel grids (radiance: RGB + density; or C-channel volumes).
            bool_masked_pos: `[B, N]` 3-D patch mask (True = masked, same count per sample, (d, h, w) row-major);
                drawn with `config.mask_ratio` when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = predictions for all N patches
            `[B, N, tubelet * patch^2 * C]` (the loss covers masked ones); `embeddings` = mean of visible tokens.
        """
        volumes = pixel_values_volumes if pixel_values_volumes is not None else kwargs.pop("pixel_values", None)
        if volumes is None:
            raise ValueError("NeRF-MAE needs pixel_values_volumes [batch, channels, depth, height, width]")
        self.check_volumes(volumes)
        b = volumes.shape[0]
        n = self.grid[0] * self.grid[1] * self.grid[2]
        mask = resolve_patch_mask(bool_masked_pos, b, n, self.generate_mask, device=volumes.device)
        visible_index, _ = mask_to_index(mask)
        tokens = video_forward_visible(self.encoder, volume_to_video(volumes), visible_index)
        pred = self.decoder(tokens, visible_index)
        terms = self.reconstruction_loss(pred, volumes, mask)
        metrics = {k: v.detach() for k, v in terms.items() if k != "loss"}
        metrics["mask_fraction"] = mask.float().mean().detach()
        output = SSLOutput(loss=terms["loss"], embeddings=tokens.mean(dim=1).detach(), logits=pred, metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["NeRFMAEForSelfSupervisedPretraining", "VolumeMAEDecoder"]
