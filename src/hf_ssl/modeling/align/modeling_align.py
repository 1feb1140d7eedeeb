"""ALIGN dual encoder: EfficientNet-style (any stock) image encoder whose globally pooled feature is the image
embedding, BERT-style text encoder pooled at [CLS] + linear projection, normalized softmax with a learnable
temperature and label smoothing over the DDP-gathered batch."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from .. import losses
from ..backbones import encode, init_efficientnet_from_scratch_
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from ..outputs import SSLOutput
from .configuration_align import ALIGNConfig


def align_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                           label_smoothing: float = 0.1, gather: bool = True):
    """ALIGN's loss: `(L_i2t + L_t2i) / 2` where each term is the label-smoothed cross entropy of
    `cos / temperature` over the (gathered) batch; `logit_scale = 1 / temperature`."""
    return losses.symmetric_contrastive_loss(image_embeds, text_embeds, logit_scale, label_smoothing=label_smoothing,
                                             gather=gather)


class ALIGNForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    config_class = ALIGNConfig

    def __init__(self, config: ALIGNConfig):
        super().__init__(config)
        # BERT-style text towers are pooled at [CLS]: build them without the (unused) tanh pooler
        try:
            self.text_encoder = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        except TypeError:
            pass
        text_dim = getattr(config.text_config, "hidden_size", None) or config.text_config.d_model
        # "a fully-connected layer with linear activation on top of the BERT [CLS] token embedding"
        self.text_projection = nn.Linear(text_dim, config.projection_dim, bias=True)
        if not config.image_projection:
            self.visual_projection = nn.Identity()
        self.post_init()
        if config.backbone_config.model_type == "efficientnet":
            init_efficientnet_from_scratch_(self.encoder)

    def encode_image(self, pixel_values: torch.Tensor, return_pooled: bool = False):
        self.check_pixel_values(pixel_values)
        pooled = encode(self.encoder, pixel_values, self.config.feature_pooling)
        joint = F.normalize(self.visual_projection(pooled), dim=-1)
        return (joint, pooled) if return_pooled else joint

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[CLS] (first-token) embedding of the last layer -> linear projection -> L2 normalisation (BERT's tanh
        pooler is not used, as in ALIGN)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        vocab = self.config.text_config.vocab_size
        if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
            raise ValueError(f"input_ids out of range for text vocab size {vocab} (tokenizer/model mismatch)")
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"input_ids length {input_ids.shape[1]} > context length {self.config.context_length}")
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.text_projection(out.last_hidden_state[:, 0]), dim=-1)

    def forward(self, pixel_values: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None:
            raise ValueError("ALIGN needs both pixel_values and input_ids (use the 'image_text' view policy)")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {input_ids.shape[0]} captions")
        image_embeds, pooled = self.encode_image(pixel_values, return_pooled=True)
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.clamped_logit_scale()
        loss, logits = align_contrastive_loss(image_embeds, text_embeds, scale, self.config.label_smoothing)
        with torch.no_grad():
            b = image_embeds.shape[0]
            targets = torch.arange(b, device=logits.device) + losses.rank() * b
            acc = (logits.argmax(-1) == targets).float().mean()
        metrics = {"temperature": (1.0 / scale).detach(), "i2t_accuracy": acc}
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
