"""DreamLIP: CLIP dual encoder trained on a raw caption + K sub-captions of a long caption per image with
(1) per-text contrastive losses, (2) a multi-positive image-to-texts circle loss and (3) the subcaption-specific
grouping loss between sub-captions and the patch tokens they select."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses
from ..backbones import backbone_family, encode
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss
from ..outputs import SSLOutput
from .configuration_dreamlip import DreamLIPConfig


def circle_loss(similarity: torch.Tensor, is_positive: torch.Tensor, margin: float = 0.25,
                gamma: float = 32.0) -> torch.Tensor:
    """Circle loss (Sun et al., CVPR 2020) per row of `similarity` `[N, M]` (cosines) with a boolean `is_positive`
    `[N, M]`: `softplus(logsumexp_p(-gamma a_p (s_p - (1 - m))) + logsumexp_n(gamma a_n (s_n - m)))`, with the
    stop-gradient weights `a_p = relu(1 + m - s_p)`, `a_n = relu(s_n + m)`; mean over rows (DreamLIP's
    `pairwise_circleloss`)."""
    sim = similarity.float()
    pos = is_positive.bool()
    alpha_p = (1 + margin - sim.detach()).clamp_min(0)
    alpha_n = (sim.detach() + margin).clamp_min(0)
    logit_p = (-gamma * alpha_p * (sim - (1 - margin))).masked_fill(~pos, -1e9)
    logit_n = (gamma * alpha_n * (sim - margin)).masked_fill(pos, -1e9)
    return F.softplus(torch.logsumexp(logit_p, dim=1) + torch.logsumexp(logit_n, dim=1)).mean()


def multi_positive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, margin: float = 0.25,
                        gamma: float = 32.0, gather: bool = True) -> torch.Tensor:
    """Image-to-texts multi-positive loss: image i `[B, D]` against every text of the global batch
    (`text_embeds` `[B, T, D]`, gathered with gradient); positives are the T texts of image i."""
    b, t, d = text_embeds.shape
    all_text = losses.all_gather(text_embeds, with_grad=True) if gather else text_embeds  # [N*B, T, D]
    sim = image_embeds @ all_text.reshape(-1, d).t()  # [B, N*B*T], image-major order
    owner = torch.arange(all_text.shape[0], device=sim.device).repeat_interleave(t)
    rows = torch.arange(b, device=sim.device) + (losses.rank() * b if gather else 0)
    return circle_loss(sim, owner[None] == rows[:, None], margin, gamma)


def group_patches(text_embeds: torch.Tensor, patch_embeds: torch.Tensor, threshold: float = 0.0,
                  norm: str = "minmax") -> torch.Tensor:
    """Subcaption-specific grouping: for every text t of an image, the patch-to-text cosine similarities are
    normalised over the patches (min-max or softmax), values below `threshold` (negative: 1 / num patches) are
    zeroed, and the patch embeddings averaged with the remaining weights. `text_embeds` `[B, T, D]`,
    `patch_embeds` `[B, P, D]` (both L2-normalised) -> grouped embeddings `[B, T, D]` (L2-normalised)."""
    sim = torch.einsum("btd,bpd->btp", text_embeds, patch_embeds)
    if norm == "minmax":
        lo, hi = sim.min(-1, keepdim=True).values, sim.max(-1, keepdim=True).values
        weights = (sim - lo) / (hi - lo + 1e-10)
    else:
        weights = sim.softmax(-1)
    thr = 1.0 / patch_embeds.shape[1] if threshold < 0 else threshold
    weights = torch.where(weights < thr, torch.zeros_like(weights), weights)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-10)
    return F.normalize(torch.einsum("btp,bpd->btd", weights, patch_embeds), dim=-1)


def grouping_loss(text_embeds: torch.Tensor, patch_embeds: torch.Tensor, logit_scale, threshold: float = 0.0,
                  norm: str = "minmax", gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE between every text and its grouped visual embedding over all (image, text) pairs of the
    global batch (the other sub-captions of the same image are negatives, as in the official loss)."""
    grouped = group_patches(text_embeds, patch_embeds, threshold, norm)
    d = text_embeds.shape[-1]
    loss, _ = losses.symmetric_contrastive_loss(text_embeds.reshape(-1, d), grouped.reshape(-1, d), logit_scale,
                                                gather=gather)
    return loss


class DreamLIPForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    config_class = DreamLIPConfig

    def encode_image_with_patches(self, pixel_values: torch.Tensor):
        """(global joint embedding `[B, D']`, local joint embeddings `[B, P, D']`, pooled backbone feature): patch
        tokens (ViT, without CLS) or feature-map cells (ConvNets) through the same visual projection."""
        self.check_pixel_values(pixel_values)
        pooled, tokens = encode(self.encoder, pixel_values, self.config.feature_pooling, return_tokens=True)
        if backbone_family(self.config.backbone_config) == "vit":
            patches = tokens[:, 1:]
        else:
            patches = tokens.flatten(2).transpose(1, 2) if tokens.dim() == 4 else tokens
        image = F.normalize(self.visual_projection(pooled), dim=-1)
        local = F.normalize(self.visual_projection(patches), dim=-1)
        return image, local, pooled

    def forward(self, pixel_values: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None:
            raise ValueError("DreamLIP needs pixel_values and input_ids (use the 'long_caption' view policy)")
        if input_ids.dim() == 2:  # one caption per image
            input_ids = input_ids[:, None]
            attention_mask = attention_mask[:, None] if attention_mask is not None else None
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be [batch, texts, length], got shape {tuple(input_ids.shape)}")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {input_ids.shape[0]} caption groups")
        b, t, length = input_ids.shape
        image, local, pooled = self.encode_image_with_patches(pixel_values)
        text = self.encode_text(input_ids.reshape(b * t, length),
                                None if attention_mask is None else attention_mask.reshape(b * t, length))
        text = text.reshape(b, t, -1)
        scale = self.clamped_logit_scale()
        cfg = self.config
        # (1) a CLIP loss per text (raw caption + each sub-caption), averaged over the texts
        per_text = [clip_contrastive_loss(image, text[:, i], scale) for i in range(t)]
        contrastive = sum(l for l, _ in per_text) / t
        # (2) image -> all its texts as positives
        multi = multi_positive_loss(image, text, cfg.circle_margin, cfg.circle_gamma)
        # (3) sub-caption <-> grouped patches
        group = (grouping_loss(text, local, scale, cfg.grouping_threshold, cfg.grouping_norm)
                 if cfg.grouping_loss_weight > 0 else contrastive.new_zeros(()))
        loss = (cfg.contrastive_loss_weight * contrastive + cfg.multi_positive_loss_weight * multi
                + cfg.grouping_loss_weight * group)
        logits = per_text[0][1]
        with torch.no_grad():
            targets = torch.arange(b, device=logits.device) + losses.rank() * b
            acc = (logits.argmax(-1) == targets).float().mean()
        metrics = {"contrastive_loss": contrastive.detach(), "multi_positive_loss": multi.detach(),
                   "grouping_loss": group.detach(), "logit_scale": scale.detach(), "i2t_accuracy": acc}
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
