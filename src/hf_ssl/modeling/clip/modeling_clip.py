"""CLIP dual encoder: stock image backbone + stock text transformer, linear projections, learnable logit scale,
symmetric InfoNCE over the DDP-gathered batch."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from .. import losses
from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..outputs import SSLOutput
from .configuration_clip import CLIPSSLConfig


def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                          gather: bool = True):
    """Symmetric InfoNCE of L2-normalised `image_embeds` / `text_embeds` `[B, D]` (row i of each is a pair).

    Under DDP the local rows are scored against the texts/images of *all* processes (all_gather with gradient),
    with targets `rank * B + arange(B)`, and the loss is averaged over the global batch: N processes on B rows
    give the same loss and gradients as one process on the N*B rows. Returns (loss, logits_per_image [B, N*B])."""
    all_text = losses.all_gather(text_embeds, with_grad=True) if gather else text_embeds
    all_image = losses.all_gather(image_embeds, with_grad=True) if gather else image_embeds
    logits_per_image = logit_scale * image_embeds @ all_text.t()
    logits_per_text = logit_scale * text_embeds @ all_image.t()
    b = image_embeds.shape[0]
    offset = losses.rank() * b if gather else 0
    targets = torch.arange(b, device=image_embeds.device) + offset
    loss = (F.cross_entropy(logits_per_image.float(), targets) + F.cross_entropy(logits_per_text.float(), targets)) / 2
    return loss, logits_per_image


class CLIPForSelfSupervisedPretraining(SSLPreTrainedModel):
    config_class = CLIPSSLConfig
    input_modalities = ("image", "text")

    def __init__(self, config: CLIPSSLConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.text_encoder = AutoModel.from_config(config.text_config)
        text_dim = getattr(config.text_config, "hidden_size", None) or config.text_config.d_model
        # the official code uses bias-free projections (ViT `proj`, `text_projection`)
        self.visual_projection = nn.Linear(feature_dim(config.backbone_config), config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.post_init()

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, CLIPForSelfSupervisedPretraining):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.init_temperature))

    # -- features ---------------------------------------------------------------------------------------
    def clamped_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at `max_logit_scale` (official: clamp of the parameter to log(100))."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    def encode_image(self, pixel_values: torch.Tensor, return_pooled: bool = False):
        self.check_pixel_values(pixel_values)
        pooled = encode(self.encoder, pixel_values, self.config.feature_pooling)
        joint = F.normalize(self.visual_projection(pooled), dim=-1)
        return (joint, pooled) if return_pooled else joint

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        vocab = self.config.text_config.vocab_size
        if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
            raise ValueError(f"input_ids out of range for text vocab size {vocab} (tokenizer/model mismatch)")
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"input_ids length {input_ids.shape[1]} > context length {self.config.context_length}")
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
        return F.normalize(self.text_projection(pooled), dim=-1)

    @torch.no_grad()
    def get_text_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """L2-normalised joint-space text embeddings `[B, projection_dim]`."""
        return self.encode_text(input_ids, attention_mask)

    @torch.no_grad()
    def get_joint_image_features(self, pixel_values) -> torch.Tensor:
        """L2-normalised joint-space image embeddings (zero-shot / retrieval); `get_image_features` stays the
        backbone's pooled feature (k-NN, export)."""
        return self.encode_image(pixel_values)

    @torch.no_grad()
    def zero_shot_classifier(self, tokenizer, class_names: Optional[Sequence[str]] = None,
                             templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Class embeddings `[C, D]`: per class the normalised mean of its normalised prompt embeddings
        (the paper's prompt ensembling), renormalised."""
        class_names = list(class_names or self.config.class_names)
        templates = list(templates or self.config.caption_templates)
        device = next(self.parameters()).device
        weights = []
        for name in class_names:
            enc = tokenizer([t.format(name) for t in templates], padding="max_length", truncation=True,
                            max_length=self.config.context_length, return_tensors="pt")
            emb = self.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            weights.append(F.normalize(emb.mean(0), dim=-1))
        return torch.stack(weights)

    # -- training ---------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None:
            raise ValueError("CLIP needs both pixel_values and input_ids (use the 'image_text' view policy)")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {input_ids.shape[0]} captions")
        image_embeds, pooled = self.encode_image(pixel_values, return_pooled=True)
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.clamped_logit_scale()
        loss, logits = clip_contrastive_loss(image_embeds, text_embeds, scale)
        with torch.no_grad():
            b = image_embeds.shape[0]
            targets = torch.arange(b, device=logits.device) + losses.rank() * b
            acc = (logits.argmax(-1) == targets).float().mean()
        metrics = {"logit_scale": scale.detach(), "i2t_accuracy": acc}
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
