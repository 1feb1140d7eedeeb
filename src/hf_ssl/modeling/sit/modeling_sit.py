"""SiT: one ViT with a contrastive token (the ViT's CLS token), an extra rotation token and a patch-token
reconstruction head, trained with rotation prediction + contrastive + l1 reconstruction of corrupted views."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import unpatchify, vit_embed_patches, vit_forward_tokens
from ..base import SSLPreTrainedModel
from ..losses import all_gather, rank
from ..outputs import SSLOutput
from .configuration_sit import SiTConfig


def sit_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Official SiT form: `c(q, k) = CE(norm(q) @ gather(norm(k)).T / t, own index) * 2t`, symmetrised
    `c(z1, z2) + c(z2, z1)`. Keys of all processes are the negatives, gathered with gradient."""
    def one_way(q, k):
        q = F.normalize(q, dim=1)
        k = all_gather(F.normalize(k, dim=1), with_grad=True)
        logits = q @ k.t() / temperature
        labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return F.cross_entropy(logits, labels) * (2 * temperature)

    return one_way(z1, z2) + one_way(z2, z1)


class SiTForSelfSupervisedPretraining(SSLPreTrainedModel):
    config_class = SiTConfig

    def __init__(self, config: SiTConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = config.backbone_config.hidden_size
        patch = config.backbone_config.patch_size
        self.rotation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_head = nn.Sequential(
            nn.Linear(dim, config.projection_hidden_dim), nn.GELU(),
            nn.Linear(config.projection_hidden_dim, config.projection_dim))
        self.reconstruction_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, patch * patch * config.num_channels))
        # learned log-variances s_i of the uncertainty weighting (rotation, contrastive, reconstruction)
        self.log_vars = nn.Parameter(torch.zeros(3))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SiTForSelfSupervisedPretraining):
            init.trunc_normal_(module.rotation_token, std=self.config.initializer_range)
            init.zeros_(module.log_vars)

    def frozen_parameter_prefixes(self) -> tuple:
        prefixes = super().frozen_parameter_prefixes()
        if self.config.loss_weighting != "uncertainty":
            prefixes = prefixes + ("log_vars",)
        if not self.config.rotation:
            prefixes = prefixes + ("rotation_token", "rotation_head.")
        return prefixes

    # ------------------------------------------------------------------------------------------------
    def encode_tokens(self, pixel_values: torch.Tensor):
        """Returns (contrastive/CLS token `[B, D]`, rotation token `[B, D]`, patch tokens `[B, N, D]`)."""
        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        rot = self.rotation_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        h = vit_forward_tokens(self.encoder, torch.cat([cls, rot, tokens], dim=1))
        return h[:, 0], h[:, 1], h[:, 2:]

    def reconstruct(self, patch_tokens: torch.Tensor, image_shape) -> torch.Tensor:
        p = self.config.backbone_config.patch_size
        grid = (image_shape[-2] // p, image_shape[-1] // p)
        return unpatchify(self.reconstruction_head(patch_tokens), p, grid, self.config.num_channels)

    def reconstruction_loss(self, recon: torch.Tensor, clean: torch.Tensor,
                            mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """l1 over every pixel (paper), or over the corrupted pixels only (`reconstruction_region="corrupted"`)."""
        err = (recon - clean).abs()
        if self.config.reconstruction_region == "corrupted":
            if mask is None:
                raise ValueError("reconstruction_region='corrupted' needs corruption_mask in the batch")
            m = mask.to(err.dtype).unsqueeze(1).expand_as(err)
            return (err * m).sum() / m.sum().clamp_min(1.0)
        return err.mean()

    def combine_losses(self, losses: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """Uncertainty weighting `sum_i exp(-s_i) L_i + s_i` or fixed weights; `None` terms are skipped."""
        total = 0.0
        if self.config.loss_weighting == "uncertainty":
            for i, value in enumerate(losses):
                if value is not None:
                    total = total + torch.exp(-self.log_vars[i]) * value + self.log_vars[i]
            return total
        weights = (self.config.rotation_weight, self.config.contrastive_weight, self.config.reconstruction_weight)
        for w, value in zip(weights, losses):
            if value is not None:
                total = total + w * value
        return total

    @staticmethod
    def _as_views(value, name) -> Optional[List[torch.Tensor]]:
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            if value.dim() == 5:
                return list(value.unbind(1))
            return [value]
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return list(value)
        raise ValueError(f"{name} must be a tensor or a list of tensors")

    def forward(self, pixel_values=None, clean_pixel_values=None, rotation_labels=None, corruption_mask=None,
                return_dict: bool = True, **kwargs):
        """`pixel_values`: list of 2 corrupted views `[B, C, H, W]` (a single tensor gives embeddings only);
        `clean_pixel_values`: the clean targets (default: `pixel_values`); `rotation_labels [B, 2]` (0..3);
        `corruption_mask`: list of `[B, H, W]` bool masks (needed for `reconstruction_region="corrupted"`)."""
        views = self._as_views(pixel_values, "pixel_values")
        if not views:
            raise ValueError("SiT needs pixel_values")
        for v in views:
            self.check_pixel_values(v)
        if len(views) == 1:
            cls, _, _ = self.encode_tokens(views[0])
            return SSLOutput(embeddings=cls.detach())
        if len(views) != 2:
            raise ValueError(f"SiT takes 2 views, got {len(views)}")
        if views[0].shape != views[1].shape:
            raise ValueError("the two SiT views must have the same shape")
        b = views[0].shape[0]
        cleans = self._as_views(clean_pixel_values, "clean_pixel_values") or views
        if len(cleans) != 2 or any(c.shape != views[0].shape for c in cleans):
            raise ValueError("clean_pixel_values must be 2 tensors shaped like pixel_values")
        x = torch.cat(views)
        cls, rot, patches = self.encode_tokens(x)

        rot_logits = self.rotation_head(rot)
        rot_loss = None
        if self.config.rotation and rotation_labels is not None:
            labels = rotation_labels if isinstance(rotation_labels, torch.Tensor) else torch.stack(
                list(rotation_labels), dim=1)
            if labels.shape != (b, 2):
                raise ValueError(f"rotation_labels must be [batch, 2], got {tuple(labels.shape)}")
            if labels.min() < 0 or labels.max() > 3:
                raise ValueError("rotation_labels must be in {0, 1, 2, 3}")
            rot_loss = F.cross_entropy(rot_logits, labels.t().reshape(-1).to(rot_logits.device))

        z = self.contrastive_head(cls)
        con_loss = sit_contrastive_loss(z[:b], z[b:], self.config.contrastive_temperature)

        recon = self.reconstruct(patches, x.shape)
        mask = None
        masks = self._as_views(corruption_mask, "corruption_mask")
        if masks is not None:
            mask = torch.cat([m.reshape(b, *x.shape[-2:]) for m in masks]).to(x.device)
        rec_loss = self.reconstruction_loss(recon, torch.cat(cleans).to(recon.dtype), mask)

        loss = self.combine_losses([rot_loss, con_loss, rec_loss])
        metrics = {"contrastive_loss": con_loss.detach(), "reconstruction_loss": rec_loss.detach()}
        if rot_loss is not None:
            metrics["rotation_loss"] = rot_loss.detach()
            metrics["rotation_accuracy"] = (rot_logits.argmax(-1) == labels.t().reshape(-1)).float().mean()
        if self.config.loss_weighting == "uncertainty":
            for i, n in enumerate(("rotation", "contrastive", "reconstruction")):
                metrics[f"log_var_{n}"] = self.log_vars[i].detach()
        out = SSLOutput(loss=loss, embeddings=cls[:b].detach(), logits=rot_logits, metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["SiTForSelfSupervisedPretraining", "sit_contrastive_loss"]
