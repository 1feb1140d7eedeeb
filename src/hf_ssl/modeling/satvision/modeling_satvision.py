"""SatVision-TOA / SimMIM model: mask token on masked patch embeddings, SwinV2 (or ViT) encoder, linear pixel head.

    pixel_values [B, C, H, W] (any band count) + bool_masked_pos [B, N] (coarse random mask upsampled to patches)
      -> encoder(use_mask_token=True): masked patch embeddings replaced by a learned token -> last feature map
      -> 1x1 conv (D -> stride**2 * C) + pixel shuffle(stride) -> reconstruction [B, C, H, W]
    loss = sum(|x - x_rec| * pixel_mask) / (sum(pixel_mask) + 1e-5) / C        (L1 on masked pixels only)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from ..backbones import encoder_feature_map, feature_dim
from ..base import SSLPreTrainedModel
from ..masking import upsampled_random_mask_torch
from ..outputs import SSLOutput
from .configuration_satvision import SatVisionConfig


def patch_mask_to_pixels(mask: torch.Tensor, grid: Tuple[int, int], patch_size: int) -> torch.Tensor:
    """`[B, gh * gw]` patch mask -> `[B, 1, gh * p, gw * p]` float pixel mask."""
    m = mask.reshape(mask.shape[0], grid[0], grid[1]).float()
    return m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def simmim_l1_loss(pixel_values: torch.Tensor, reconstruction: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's loss: L1 averaged over masked pixels and channels (official `(l1 * mask).sum() / (mask.sum() + 1e-5)
    / in_chans`)."""
    l1 = F.l1_loss(reconstruction.float(), pixel_values.float(), reduction="none")
    return (l1 * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / pixel_values.shape[1]


class SatVisionForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SimMIM pretraining as in SatVision-TOA (see `hf_ssl.modeling.satvision`).

    Attributes:
        encoder: stock transformers `Swinv2Model` / `ViTModel` built with `use_mask_token=True` (its
            `embeddings.mask_token` replaces masked patch embeddings before position embeddings).
        decoder: `Conv2d(D, stride**2 * C, 1)` + `PixelShuffle(stride)` (official `MiMModel.decoder`).
    """

    config_class = SatVisionConfig

    def __init__(self, config: SatVisionConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        stride = config.encoder_stride
        self.decoder = nn.Sequential(
            nn.Conv2d(feature_dim(config.backbone_config), stride**2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        self.post_init()

    def _build_encoder(self) -> nn.Module:
        cfg = self.config.backbone_config
        kwargs = {"use_mask_token": True}
        if cfg.model_type == "vit":
            kwargs["add_pooling_layer"] = False
        return AutoModel.from_config(cfg, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.trunc_normal_(self.encoder.embeddings.mask_token, std=0.02)  # official trunc_normal_(std=.02)

    # -- masks ---------------------------------------------------------------------------------------------
    def generate_mask(self, batch_size: int, image_size: Optional[Tuple[int, int]] = None, device=None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """`[B, N]` SimMIM masks on the encoder's patch grid: `ceil(n * mask_ratio)` of the coarse
        `mask_patch_size` cells masked, each covering `(mask_patch_size / patch_size)**2` patches."""
        cfg = self.config
        size = image_size or (cfg.image_size, cfg.image_size)
        grid = (size[0] // cfg.model_patch_size, size[1] // cfg.model_patch_size)
        return upsampled_random_mask_torch(batch_size, grid, cfg.mask_patch_size // cfg.model_patch_size,
                                           cfg.mask_ratio, device=device, generator=generator)

    def _prepare_mask(self, bool_masked_pos, pixel_values) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, _, h, w = pixel_values.shape
        p = self.config.model_patch_size
        grid = (h // p, w // p)
        if bool_masked_pos is None:
            return self.generate_mask(b, (h, w), device=pixel_values.device), grid
        m = torch.as_tensor(bool_masked_pos, device=pixel_values.device)
        if m.dim() == 3:
            m = m.flatten(1)
        if m.shape != (b, grid[0] * grid[1]):
            raise ValueError(f"bool_masked_pos must be [batch, num_patches] = {[b, grid[0] * grid[1]]} (or [batch, "
                             f"{grid[0]}, {grid[1]}]), got {list(m.shape)}")
        return m.bool(), grid

    # -- forward -------------------------------------------------------------------------------------------
    def reconstruct(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        features = encoder_feature_map(self.encoder, pixel_values, bool_masked_pos=bool_masked_pos)
        return self.decoder(features), features

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` per-band normalized images (C = `config.num_channels`).
            bool_masked_pos: `[B, N]` (or `[B, gh, gw]`) bool over the encoder's patch grid, True = masked; drawn with
                `generate_mask` when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = reconstruction `[B, C, H, W]`; `embeddings` =
            spatial mean of the masked-input feature map (detached).
        """
        self.check_pixel_values(pixel_values)
        h, w = pixel_values.shape[-2:]
        stride = self.config.encoder_stride
        if h % stride or w % stride:
            raise ValueError(f"pixel_values size {(h, w)} is not divisible by the encoder stride {stride}")
        mask, grid = self._prepare_mask(bool_masked_pos, pixel_values)
        reconstruction, features = self.reconstruct(pixel_values, mask)
        pixel_mask = patch_mask_to_pixels(mask, grid, self.config.model_patch_size)
        loss = simmim_l1_loss(pixel_values, reconstruction, pixel_mask)
        output = SSLOutput(loss=loss, embeddings=features.detach().float().mean(dim=(2, 3)), logits=reconstruction,
                           metrics={"l1_loss": loss.detach(), "mask_fraction": mask.float().mean().detach()})
        return output if return_dict else output.to_tuple()


__all__ = ["SatVisionForSelfSupervisedPretraining", "patch_mask_to_pixels", "simmim_l1_loss"]
