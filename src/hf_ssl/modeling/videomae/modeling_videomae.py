"""VideoMAE model: a stock VideoMAEModel encodes only the visible tubes of a clip (90% tube masking); a light decoder
reconstructs the masked tubes; MSE to per-tube normalized pixels on masked tubes only.

    mask           [B, N]       tube (or random) mask, True = masked, same count per clip
    visible        [B, K, D]    encoder(clip, bool_masked_pos=mask)   (stock VideoMAEModel visible-token forward)
    pred           [B, M, t*p*p*C]  decoder([visible + pos; mask_token + pos])[masked part]
    loss = mean((pred - targets[mask]) ** 2)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import initialization as init

from ..masking import mask_to_index, random_mask_torch, resolve_patch_mask, tube_mask_torch
from ..outputs import SSLOutput
from ..video_base import VideoMAEPixelDecoder, VideoSSLPreTrainedModel, video_pixel_targets
from .configuration_videomae import SSLVideoMAEConfig


class VideoMAEForSelfSupervisedPretraining(VideoSSLPreTrainedModel):
    """VideoMAE pretraining (see `hf_ssl.modeling.videomae`). `encoder` is a stock `VideoMAEModel`."""

    config_class = SSLVideoMAEConfig

    def __init__(self, config: SSLVideoMAEConfig):
        super().__init__(config)
        bc = config.backbone_config
        self.encoder = self._build_encoder()
        out_dim = bc.tubelet_size * bc.patch_size ** 2 * config.num_channels
        self.decoder = VideoMAEPixelDecoder(bc.hidden_size, config.decoder_hidden_size, config.decoder_depth,
                                            config.decoder_num_heads, out_dim, config.decoder_mlp_ratio)
        self.post_init()

    def _init_weights(self, module):
        # official `_init_weights`: xavier-uniform linear layers with zero bias, LayerNorm (1, 0); mask token
        # trunc-normal(0.02); the Conv3d tubelet embedding keeps PyTorch's default init
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if module is self:
            init.trunc_normal_(self.decoder.mask_token, std=0.02)

    def generate_mask(self, batch_size: int, num_tokens: int = None, device=None, generator=None) -> torch.Tensor:
        cfg = self.config
        if cfg.mask_type == "tube":
            return tube_mask_torch(batch_size, cfg.token_grid, cfg.mask_ratio, device=device, generator=generator)
        return random_mask_torch(batch_size, cfg.num_tokens, cfg.mask_ratio, device=device, generator=generator)

    def forward(self, pixel_values_videos: torch.Tensor = None, bool_masked_pos: Optional[torch.Tensor] = None,
                synthetic_clip: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_videos: `[B, T, C, H, W]` normalized clips (`num_frames` frames at `image_size`).
            bool_masked_pos: `[B, N]` token mask (True = masked; N = T/tubelet * (H/p) * (W/p), (t, h, w) order), the
                same count per clip; drawn with `mask_type` / `mask_ratio` when omitted.
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = predictions of the masked tubes `[B, M, t*p*p*C]`
            (ascending token order); `embeddings` = mean of the visible tokens (detached).
        """
        if pixel_values_videos is None:
            raise ValueError("VideoMAE needs pixel_values_videos [batch, frames, channels, height, width]")
        self.check_video_values(pixel_values_videos)
        cfg, bc = self.config, self.config.backbone_config
        b = pixel_values_videos.shape[0]
        mask = resolve_patch_mask(bool_masked_pos, b, cfg.num_tokens, lambda n, _t, device=None:
                                  self.generate_mask(n, device=device), device=pixel_values_videos.device)
        mask_to_index(mask)  # same number of masked tokens in every clip (clear error otherwise)
        visible = self.encoder(pixel_values=pixel_values_videos, bool_masked_pos=mask).last_hidden_state
        pred = self.decoder(visible, mask)
        targets = video_pixel_targets(pixel_values_videos, cfg.image_mean, cfg.image_std, bc.tubelet_size,
                                      bc.patch_size, normalize=cfg.norm_pix_loss)
        targets = targets[mask].reshape(b, -1, targets.shape[-1])
        loss = ((pred.float() - targets) ** 2).mean()
        metrics = {"reconstruction_loss": loss.detach(), "mask_fraction": mask.float().mean().detach(),
                   **self.synthetic_metric(synthetic_clip, loss.device)}
        out = SSLOutput(loss=loss, embeddings=visible.mean(dim=1).detach(), logits=pred, metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["VideoMAEForSelfSupervisedPretraining"]
