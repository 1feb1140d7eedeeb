"""RSPNet model (official `MoCoDiffLossTwoFc` + `Loss`): a query encoder with two L2-normalised linear heads (A: appearance
/ video instance discrimination, M: relative speed), an EMA key encoder with the same heads, a MoCo queue of A-keys.

    q_A, q_M       = heads(encoder(query clip at speed a))                              gradient
    k_A, k_M       = key heads(key encoder(second window at speed a))                   no gradient
    n_A, n_M       = key heads(key encoder(second window at speed b != a))              no gradient
    A-VID: CE([q_A.k_A, q_A.queue] / tau, 0) + CE([q_A.n_A, q_A.queue] / tau, 0)      (same video = positive at any speed)
    RSP:   max(0, margin - (q_M.k_M - q_M.n_M) / tau)                                  (same speed more similar)
    loss = A * A-VID + M * RSP;  queue <- all_gather(n_A) (FIFO);  on_step_end: EMA of encoder + heads.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import feature_dim
from ..losses import all_gather
from ..momentum import ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from ..video_base import VideoSSLPreTrainedModel
from .configuration_rspnet import RSPNetConfig


class RSPNetHeads(nn.Module):
    """The two linear heads of the official `MultiTaskWrapper(fc_type='linear')` on globally pooled features."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.appearance = nn.Linear(dim, out_dim)
        self.speed = nn.Linear(dim, out_dim)

    def forward(self, features: torch.Tensor):
        return F.normalize(self.appearance(features), dim=1), F.normalize(self.speed(features), dim=1)


def rsp_avid_losses(q_a, q_m, k_a, k_m, n_a, n_m, queue, temperature: float, margin: float):
    """(A-VID loss, RSP loss, logits of the first A-VID term) for L2-normalised features (official formulas)."""
    neg = q_a @ queue.t() / temperature
    pos1 = (q_a * k_a).sum(dim=1, keepdim=True) / temperature
    pos2 = (q_a * n_a).sum(dim=1, keepdim=True) / temperature
    target = torch.zeros(q_a.shape[0], dtype=torch.long, device=q_a.device)
    logits1 = torch.cat([pos1, neg], dim=1)
    avid = F.cross_entropy(logits1.float(), target) + F.cross_entropy(torch.cat([pos2, neg], dim=1).float(), target)
    same = (q_m * k_m).sum(dim=1) / temperature
    other = (q_m * n_m).sum(dim=1) / temperature
    rsp = F.margin_ranking_loss(same.float(), other.float(), torch.ones_like(same), margin=margin)
    return avid, rsp, logits1


class RSPNetForSelfSupervisedPretraining(VideoSSLPreTrainedModel):
    """RSPNet (see `hf_ssl.modeling.rspnet`): `encoder` / `heads` (query), `teacher_encoder` / `teacher_heads` (EMA
    keys, frozen), `queue [queue_size, projection_dim]` of A-VID keys from all processes."""

    config_class = RSPNetConfig

    def __init__(self, config: RSPNetConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        self.heads = RSPNetHeads(dim, config.projection_dim)
        self.teacher_encoder = self._build_encoder()
        self.teacher_heads = RSPNetHeads(dim, config.projection_dim)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.projection_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.post_init()
        self.apply_frozen_parameters_()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_heads.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # MoCo: the key encoder starts as a copy; random unit-norm queue
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_heads, self.heads))
            init.copy_(self.queue, F.normalize(torch.randn_like(self.queue), dim=1))
            init.zeros_(self.queue_ptr)

    @torch.no_grad()
    def keys(self, clips: torch.Tensor):
        return self.teacher_heads(self.encode_clips(clips, self.teacher_encoder))

    def forward(self, pixel_values_videos=None, clip_speeds: Optional[torch.Tensor] = None,
                synthetic_clip: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_videos: `[query, positive_key, negative_key]`, three `[B, T, C, H, W]` clip batches (query and
                positive at the same speed from two windows of one video, negative = the positive's window at the
                other speed), or one tensor (embeddings only).
            clip_speeds: optional `[B, 2]` speeds (query / positive, negative), logged.
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` = the first A-VID term's `[B, 1 + queue_size]`
            logits (positive first, divided by the temperature).
        """
        if isinstance(pixel_values_videos, torch.Tensor):
            self.check_video_values(pixel_values_videos)
            out = SSLOutput(embeddings=self.encode_clips(pixel_values_videos))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values_videos, (list, tuple)) or len(pixel_values_videos) != 3:
            raise ValueError("RSPNet needs pixel_values_videos = [query, positive_key, negative_key] clip batches")
        for i, v in enumerate(pixel_values_videos):
            self.check_video_values(v, f"pixel_values_videos[{i}]")
        if len({v.shape[0] for v in pixel_values_videos}) != 1:
            raise ValueError("query, positive and negative clips need the same batch size")
        cfg = self.config
        query, positive, negative = pixel_values_videos
        features = self.encode_clips(query)
        q_a, q_m = self.heads(features)
        k_a, k_m = self.keys(positive)
        n_a, n_m = self.keys(negative)
        queue = self.queue.detach().clone().to(q_a.dtype)
        avid, rsp, logits = rsp_avid_losses(q_a, q_m, k_a.to(q_a.dtype), k_m.to(q_a.dtype), n_a.to(q_a.dtype),
                                            n_m.to(q_a.dtype), queue, cfg.contrastive_temperature, cfg.ranking_margin)
        loss = cfg.avid_weight * avid + cfg.rsp_weight * rsp
        with torch.no_grad():
            same = (q_m * k_m).sum(dim=1)
            other = (q_m * n_m).sum(dim=1)
            metrics = {"avid_loss": avid.detach(), "rsp_loss": rsp.detach(),
                       "speed_ranking_accuracy": (same > other).float().mean(),
                       **self.synthetic_metric(synthetic_clip, loss.device)}
            if clip_speeds is not None:
                metrics["fast_query_fraction"] = (torch.as_tensor(clip_speeds)[:, 0] > 1).float().mean().to(loss.device)
        if self.training:
            with torch.no_grad():
                self._enqueue(all_gather(n_a))  # official: the negative-speed A-keys enter the queue
        out = SSLOutput(loss=loss, embeddings=features.detach(), logits=logits.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: the global batch of keys (rank order) overwrites the oldest entries at the pointer (MoCo)."""
        n, length = keys.shape[0], self.config.queue_size
        if n > length:
            raise ValueError(f"the global batch ({n}) is larger than queue_size ({length})")
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=keys.device)) % length
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % length)

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        m = self.config.teacher_momentum
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_heads, self.heads, m)


__all__ = ["RSPNetForSelfSupervisedPretraining", "RSPNetHeads", "rsp_avid_losses"]
