"""CrossVideoMAE model: a video MAE on two augmentations of one clip, an image MAE on a frame sampled from that clip,
and contrastive terms in a shared feature space between the two clips (intra-modal) and between each clip and the
frame (cross-modal).

    v, v'            two augmentations of one sampled window [B, T, C, H, W], each with its own tube mask
    f                one frame of the window [B, C, H, W] with a random patch mask
    h_v = encoder(v, visible only)           h_f = image_encoder(f, visible only)
    z_v = proj_video(mean h_v)               z_f = proj_image(mean of visible patch tokens of h_f)
    L = mean(L_rec(v), L_rec(v')) + w_img L_rec(f)
        + w_intra NT-Xent(z_v, z_v') + w_cross (NT-Xent(z_v, z_f) + NT-Xent(z_v', z_f)) / 2
NT-Xent negatives come from the global batch (`losses.nt_xent`: all_gather with gradient), so N DDP processes
compute the single-process loss on the concatenated batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import build_backbone, patchify, vit_forward_visible, vit_grid
from ..heads import MaskedAutoencoderDecoder, MLPHead
from ..losses import normalized_pixel_targets, nt_xent
from ..masking import mask_to_index, random_mask_torch, resolve_patch_mask, tube_mask_torch
from ..outputs import SSLOutput
from ..video_base import VideoMAEPixelDecoder, VideoSSLPreTrainedModel, video_pixel_targets
from .configuration_crossvideomae import CrossVideoMAEConfig


@torch.no_grad()
def pair_top1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of rows `a[i]` whose most cosine-similar row of `b` (same local batch) is `b[i]`: the retrieval
    accuracy of the contrastive pairing (chance 1 / batch), logged as `intra_modal_top1` / `cross_modal_top1`."""
    a, b = F.normalize(a.detach().float(), dim=1), F.normalize(b.detach().float(), dim=1)
    target = torch.arange(a.shape[0], device=a.device)
    return ((a @ b.t()).argmax(dim=1) == target).float().mean()


class CrossVideoMAEForSelfSupervisedPretraining(VideoSSLPreTrainedModel):
    """CrossVideoMAE (see `hf_ssl.modeling.crossvideomae`). `encoder`: stock VideoMAEModel (exported);
    `image_encoder`: stock ViTModel for the sampled frames."""

    config_class = CrossVideoMAEConfig

    def __init__(self, config: CrossVideoMAEConfig):
        super().__init__(config)
        bc, ib = config.backbone_config, config.image_backbone_config
        self.encoder = self._build_encoder()
        self.image_encoder = build_backbone(ib)
        self.decoder = VideoMAEPixelDecoder(bc.hidden_size, config.decoder_hidden_size, config.decoder_depth,
                                            config.decoder_num_heads,
                                            bc.tubelet_size * bc.patch_size ** 2 * config.num_channels)
        self.image_decoder = MaskedAutoencoderDecoder(ib.hidden_size, config.image_decoder_hidden_size,
                                                      config.image_decoder_depth, config.image_decoder_num_heads,
                                                      ib.patch_size ** 2 * config.num_channels)
        self.video_projection = MLPHead(bc.hidden_size, config.projection_hidden_dim, config.projection_dim,
                                        num_layers=2, batch_norm=False)
        self.image_projection = MLPHead(ib.hidden_size, config.projection_hidden_dim, config.projection_dim,
                                        num_layers=2, batch_norm=False)
        self.post_init()
        self.apply_frozen_parameters_()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("image_encoder.", "image_decoder.") if self.config.freeze_image_encoder else ()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):  # MAE / VideoMAE: xavier-uniform linear layers, zero bias
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)
        if module is self:
            init.trunc_normal_(self.decoder.mask_token, std=0.02)

    # -- masks ----------------------------------------------------------------------------------------
    def generate_video_mask(self, batch_size: int, num_tokens: int = None, device=None) -> torch.Tensor:
        cfg = self.config
        if cfg.video_mask_type == "tube":
            return tube_mask_torch(batch_size, cfg.token_grid, cfg.video_mask_ratio, device=device)
        return random_mask_torch(batch_size, cfg.num_tokens, cfg.video_mask_ratio, device=device)

    def generate_image_mask(self, batch_size: int, num_patches: int, device=None) -> torch.Tensor:
        return random_mask_torch(batch_size, num_patches, self.config.image_mask_ratio, device=device)

    # -- branches -------------------------------------------------------------------------------------
    def video_branch(self, clips: torch.Tensor, mask: torch.Tensor):
        """(reconstruction loss, pooled visible features [B, D]) of one masked clip batch."""
        cfg, bc = self.config, self.config.backbone_config
        b = clips.shape[0]
        visible = self.encoder(pixel_values=clips, bool_masked_pos=mask).last_hidden_state
        pred = self.decoder(visible, mask)
        targets = video_pixel_targets(clips, cfg.image_mean, cfg.image_std, bc.tubelet_size, bc.patch_size,
                                      normalize=cfg.norm_pix_loss)
        targets = targets[mask].reshape(b, -1, targets.shape[-1])
        return ((pred.float() - targets) ** 2).mean(), visible.mean(dim=1)

    def image_branch(self, frames: torch.Tensor, mask: torch.Tensor):
        """(reconstruction loss or None, pooled visible patch features [B, D]) of the masked frames."""
        cfg, ib = self.config, self.config.image_backbone_config
        visible_index, _ = mask_to_index(mask)
        tokens = vit_forward_visible(self.image_encoder, frames, visible_index)  # [B, 1 + K, D]
        pooled = tokens[:, 1:].mean(dim=1)
        if cfg.freeze_image_encoder or cfg.image_reconstruction_weight == 0:
            return None, pooled
        grid = vit_grid(ib, tuple(frames.shape[-2:]))
        pred = self.image_decoder(tokens, visible_index, grid[0] * grid[1], grid)[:, 1:]
        target = patchify(frames.detach().float(), ib.patch_size)
        if cfg.norm_pix_loss:
            target = normalized_pixel_targets(target)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        m = mask.float()
        return (per_patch * m).sum() / m.sum(), pooled

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, pixel_values_videos=None, bool_masked_pos=None, pixel_values: Optional[torch.Tensor] = None,
                image_mask: Optional[torch.Tensor] = None, synthetic_clip: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_videos: `[clip, clip_aug]`, two `[B, T, C, H, W]` augmentations of the same window.
            bool_masked_pos: `[mask, mask_aug]` token masks `[B, N]` (drawn when omitted).
            pixel_values: `[B, C, H, W]` frames sampled from the window (the image branch).
            image_mask: `[B, N_img]` patch mask of the frames (drawn when omitted).
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).
        """
        if isinstance(pixel_values_videos, torch.Tensor):
            raise ValueError("CrossVideoMAE needs pixel_values_videos = [clip, clip_aug] (two augmentations of one "
                             "window) and pixel_values = the sampled frames")
        if not isinstance(pixel_values_videos, (list, tuple)) or len(pixel_values_videos) != 2:
            raise ValueError("pixel_values_videos must be a list of two [B, T, C, H, W] clip batches")
        if pixel_values is None:
            raise ValueError("CrossVideoMAE needs pixel_values: one [B, C, H, W] frame per clip")
        for i, v in enumerate(pixel_values_videos):
            self.check_video_values(v, f"pixel_values_videos[{i}]")
        self.check_pixel_values(pixel_values)
        cfg = self.config
        b = pixel_values_videos[0].shape[0]
        if pixel_values_videos[1].shape[0] != b or pixel_values.shape[0] != b:
            raise ValueError("both clips and the frames need the same batch size")
        if tuple(pixel_values.shape[-2:]) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"frames must be {cfg.image_size}x{cfg.image_size}, got {tuple(pixel_values.shape[-2:])}")
        masks = list(bool_masked_pos) if isinstance(bool_masked_pos, (list, tuple)) else [bool_masked_pos] * 2
        if len(masks) != 2:
            raise ValueError("bool_masked_pos must hold one mask per clip")
        device = pixel_values.device
        masks = [resolve_patch_mask(m, b, cfg.num_tokens, self.generate_video_mask, device=device) for m in masks]
        n_img = vit_grid(cfg.image_backbone_config, (cfg.image_size, cfg.image_size))
        image_mask = resolve_patch_mask(image_mask, b, n_img[0] * n_img[1], self.generate_image_mask, device=device)

        rec1, h1 = self.video_branch(pixel_values_videos[0], masks[0])
        rec2, h2 = self.video_branch(pixel_values_videos[1], masks[1])
        rec_img, hf = self.image_branch(pixel_values, image_mask)
        z1, z2 = self.video_projection(h1), self.video_projection(h2)
        zf = self.image_projection(hf)
        tau = cfg.contrastive_temperature
        intra = nt_xent(z1.float(), z2.float(), tau)
        cross = (nt_xent(z1.float(), zf.float(), tau) + nt_xent(z2.float(), zf.float(), tau)) / 2
        rec = (rec1 + rec2) / 2
        loss = rec + cfg.intra_weight * intra + cfg.cross_weight * cross
        if rec_img is not None:
            loss = loss + cfg.image_reconstruction_weight * rec_img
        metrics = {"video_reconstruction_loss": rec.detach(), "intra_modal_loss": intra.detach(),
                   "cross_modal_loss": cross.detach(), "intra_modal_top1": pair_top1(z1, z2),
                   "cross_modal_top1": (pair_top1(z1, zf) + pair_top1(z2, zf)) / 2,
                   **self.synthetic_metric(synthetic_clip, loss.device)}
        if rec_img is not None:
            metrics["image_reconstruction_loss"] = rec_img.detach()
        out = SSLOutput(loss=loss, embeddings=h1.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["CrossVideoMAEForSelfSupervisedPretraining", "pair_top1"]
