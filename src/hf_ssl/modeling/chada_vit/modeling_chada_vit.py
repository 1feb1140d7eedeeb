"""ChAda-ViT pretraining model: channel-adaptive ViT tokens trained with the shared DINO self-distillation core."""

from __future__ import annotations

import copy
import json
import os
from typing import Optional, Union

import torch
from torch import nn

from ..backbones import check_pixel_values, vit_forward_tokens
from ..base import SSLPreTrainedModel
from ..distillation import DINOHead, SelfDistillationLoss
from ..momentum import cosine_schedule, ema_update_, warmup_then_constant, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_chada_vit import ChAdaViTConfig


def channel_adaptive_tokens(vit: nn.Module, channel_embeddings: torch.Tensor, pixel_values: torch.Tensor,
                            channel_mask: Optional[torch.Tensor] = None):
    """ChAda-ViT tokenization (official `channel_aware_tokenization`): every channel of `pixel_values [B, C, H, W]`
    is patchified by the encoder's single-channel patch embedding, gets the same 2-D position embeddings and the
    learned embedding of its channel slot; all channels' tokens form one sequence after one CLS token. Returns
    `(tokens [B, 1 + C*N, D], key_keep [B, 1 + C*N] bool)`; tokens of absent channels (`channel_mask` False) are
    zeroed and excluded as attention keys."""
    b, c, h, w = pixel_values.shape
    emb = vit.embeddings
    x = pixel_values.reshape(b * c, 1, h, w).to(emb.patch_embeddings.projection.weight.dtype)
    patches = emb.patch_embeddings(x)  # [B*C, N, D] (any size; positions are interpolated below)
    n, d = patches.shape[1], patches.shape[2]
    cls = emb.cls_token
    pos = emb.interpolate_pos_encoding(torch.cat([cls, patches[:1]], dim=1), h, w)  # [1, 1 + N, D]
    tokens = (patches + pos[:, 1:]).reshape(b, c, n, d) + channel_embeddings[:c].to(patches.dtype)[None, :, None, :]
    if channel_mask is None:
        channel_mask = torch.ones(b, c, dtype=torch.bool, device=pixel_values.device)
    channel_mask = channel_mask.to(torch.bool).to(pixel_values.device)
    tokens = tokens * channel_mask[:, :, None, None].to(tokens.dtype)
    seq = torch.cat([(cls + pos[:, :1]).expand(b, -1, -1), tokens.reshape(b, c * n, d)], dim=1)
    keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=seq.device), channel_mask.repeat_interleave(n, dim=1)],
                     dim=1)
    return seq, keep


def encode_channels(vit: nn.Module, channel_embeddings: torch.Tensor, pixel_values: torch.Tensor,
                    channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All output tokens `[B, 1 + C*N, D]` of the stock ViT layers run on the channel-adaptive sequence with padded
    channels masked out of the attention (additive key mask)."""
    seq, keep = channel_adaptive_tokens(vit, channel_embeddings, pixel_values, channel_mask)
    mask = torch.zeros(keep.shape, dtype=seq.dtype, device=seq.device)
    mask = mask.masked_fill(~keep, torch.finfo(seq.dtype).min)[:, None, None, :]
    return vit_forward_tokens(vit, seq, attention_mask=mask)


def pool_channel_tokens(tokens: torch.Tensor, keep: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return tokens[:, 0]
    w = keep[:, 1:].to(tokens.dtype).unsqueeze(-1)
    return (tokens[:, 1:] * w).sum(1) / w.sum(1).clamp_min(1.0)


class ChAdaViTForSelfSupervisedPretraining(SSLPreTrainedModel):
    """ChAda-ViT + DINO (see `hf_ssl.modeling.chada_vit`).

    Attributes:
        encoder / channel_embeddings / head: student (stock single-channel ViT, `[max_channels, D]` channel table,
            :class:`~hf_ssl.modeling.distillation.DINOHead`).
        teacher_encoder / teacher_channel_embeddings / teacher_head: EMA teacher (no gradients); the teacher is what
            `get_image_features` and `export_encoder` use, as in DINO.
        distillation: :class:`~hf_ssl.modeling.distillation.SelfDistillationLoss` (its center is a saved buffer).
    """

    config_class = ChAdaViTConfig
    export_attribute = "teacher_encoder"

    def __init__(self, config: ChAdaViTConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = config.backbone_config.hidden_size
        self.channel_embeddings = nn.Parameter(torch.zeros(config.max_channels, dim))
        self.head = DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim)
        self.teacher_encoder = self._build_encoder()
        self.teacher_channel_embeddings = nn.Parameter(torch.zeros(config.max_channels, dim))
        self.teacher_head = copy.deepcopy(self.head)
        self.distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                 config.center_momentum)
        self.register_buffer("teacher_temperature_now", torch.tensor(float(config.teacher_temperature_warmup)))
        self.apply_frozen_parameters_()
        self.post_init()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_channel_embeddings", "teacher_head.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.trunc_normal_(self.channel_embeddings, std=0.02)  # official: trunc_normal_(channel_token, std=.02)
            pairs = ((self.teacher_encoder, self.encoder), (self.teacher_head, self.head))
            init_teacher_from_student_(*pairs)
            init.copy_(self.teacher_channel_embeddings, self.channel_embeddings.detach())

    # -- features -------------------------------------------------------------------------------------
    def check_pixel_values(self, pixel_values, name="pixel_values"):
        check_pixel_values(pixel_values, self.config.num_channels, name)

    def _features(self, vit, table, pixel_values, channel_mask, pooling):
        seq, keep = channel_adaptive_tokens(vit, table, pixel_values, channel_mask)
        mask = torch.zeros(keep.shape, dtype=seq.dtype, device=seq.device)
        mask = mask.masked_fill(~keep, torch.finfo(seq.dtype).min)[:, None, None, :]
        tokens = vit_forward_tokens(vit, seq, attention_mask=mask)
        return pool_channel_tokens(tokens, keep, pooling)

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None,
                           channel_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher features `[B, D]` of `pixel_values [B, C, H, W]` (C channel slots; `channel_mask` marks present
        channels, default all). A single-channel input uses channel slot 0."""
        if pixel_values.dim() != 4 or not 1 <= pixel_values.shape[1] <= self.config.num_channels:
            raise ValueError(f"pixel_values must be [batch, channels <= {self.config.num_channels}, H, W] "
                             f"(channel slots of this ChAda-ViT), got {list(pixel_values.shape)}")
        return self._features(self.teacher_encoder, self.teacher_channel_embeddings, pixel_values, channel_mask,
                              pooling or self.config.feature_pooling)

    def export_check_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The input layout the exported (vanilla, single-channel) encoder reproduces: channel slot 0 alone."""
        return pixel_values[:, :1]

    def export_encoder(self, save_directory: Union[str, os.PathLike], image_processor=None,
                       attribute: Optional[str] = None, push_to_hub: bool = False, **push_kwargs) -> str:
        """A vanilla single-channel `ViTModel`: the teacher with channel slot 0's embedding folded into the patch
        projection bias, so `ViTModel(pixel_values=x[:, :1])` equals `get_image_features(x[:, :1])` without hf_ssl.
        Multi-channel inputs need hf_ssl (the channel-adaptive sequence is not a stock ViT input)."""
        from ..base import SSLImageProcessor

        attribute = attribute or self.export_attribute
        vit = copy.deepcopy(getattr(self, attribute))
        table = self.teacher_channel_embeddings if attribute == "teacher_encoder" else self.channel_embeddings
        with torch.no_grad():
            proj = vit.embeddings.patch_embeddings.projection
            if proj.bias is None:
                raise ValueError("cannot fold the channel embedding into a patch projection without bias")
            proj.bias.add_(table[0].to(proj.bias.dtype))
        processor = image_processor or SSLImageProcessor.from_ssl_config(
            self.config, image_mean=self.config.image_mean[:1], image_std=self.config.image_std[:1],
            do_convert_rgb=False)
        self.__dict__["_export_vit"] = vit
        try:
            out = super().export_encoder(save_directory, image_processor=processor, attribute="_export_vit",
                                         push_to_hub=push_to_hub, **push_kwargs)
        finally:
            self.__dict__.pop("_export_vit", None)
        meta_path = os.path.join(save_directory, "hf_ssl_export.json")
        meta = json.load(open(meta_path))
        meta.update(exported_attribute=attribute, channel_slot=0,
                    note="channel-adaptive encoder exported for single-channel inputs (channel slot 0)")
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
        return out

    # -- training ---------------------------------------------------------------------------------------
    def forward(self, pixel_values, channel_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: list of crops (the first `num_global` are global), each `[B, C, h, w]`, or one tensor.
            channel_mask: `[B, C]` bool, True where the image has that channel (default: all present).

        Returns:
            `SSLOutput(loss, embeddings, metrics)`; `embeddings` = student CLS features of the first global crop.
        """
        views = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else [pixel_values]
        for i, v in enumerate(views):
            self.check_pixel_values(v, f"pixel_values[{i}]")
        n_global = min(int(self.config.augmentation.get("num_global", 2)), len(views))
        pooling = self.config.feature_pooling
        student = [self._features(self.encoder, self.channel_embeddings, v, channel_mask, pooling) for v in views]
        student_logits = [self.head(f) for f in student]
        loss = None
        metrics = {}
        if len(views) >= 2:
            with torch.no_grad():
                teacher_logits = [self.teacher_head(self._features(self.teacher_encoder, self.teacher_channel_embeddings,
                                                                   v, channel_mask, pooling))
                                  for v in views[:n_global]]
            loss = self.distillation(student_logits, teacher_logits, float(self.teacher_temperature_now))
            metrics["distillation_loss"] = loss.detach()
            metrics["teacher_temperature"] = self.teacher_temperature_now.detach()
            if channel_mask is not None:
                metrics["channels_per_image"] = channel_mask.float().sum(1).mean().detach()
        output = SSLOutput(loss=loss, embeddings=student[0].detach(), metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA teacher (DINO: momentum 0.996 -> 1 by a half-cosine) and the teacher-temperature warm-up."""
        m = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_head, self.head, m)
        self.teacher_channel_embeddings.lerp_(self.channel_embeddings.detach(), 1.0 - m)
        self.teacher_temperature_now.fill_(warmup_then_constant(step, self.config.teacher_temperature_warmup_steps,
                                                                self.config.teacher_temperature_warmup,
                                                                self.config.teacher_temperature))


__all__ = ["ChAdaViTForSelfSupervisedPretraining", "channel_adaptive_tokens", "encode_channels"]
