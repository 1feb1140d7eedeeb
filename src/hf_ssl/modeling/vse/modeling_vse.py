"""VSE++: CNN image embedding + GRU (or stock transformers) caption embedding in a joint space trained with the
bidirectional hinge ranking loss on the hardest in-batch negatives."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init

from .. import losses
from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from ..outputs import SSLOutput
from .configuration_vse import VSEPPConfig


class GRUTextEncoder(nn.Module):
    """VSE++'s caption encoder (official `EncoderText`): token embeddings -> GRU; the caption embedding is the
    last layer's hidden state at the last real (non-padded) token."""

    def __init__(self, vocab_size: int, word_dim: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.embed._vse_word_embedding = True  # initialised uniform(-0.1, 0.1) by the model's _init_weights
        self.rnn = nn.GRU(word_dim, hidden_size, num_layers, batch_first=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        lengths = (attention_mask.sum(1) if attention_mask is not None
                   else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device))
        lengths = lengths.clamp(min=1).long()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.rnn(packed)  # hidden [layers, B, H] at each caption's own last step
        return hidden[-1]


def in_batch_recall_at_1(scores: torch.Tensor) -> torch.Tensor:
    """Fraction of local rows whose paired column (`rank * B + row`) scores highest (a training monitor)."""
    b = scores.shape[0]
    targets = torch.arange(b, device=scores.device) + losses.rank() * b
    return (scores.argmax(dim=1) == targets).float().mean()


class VSEPPForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    """VSE++ on the hf_ssl CLIP core (reuses its tokenizer, `image_text` data path, `get_text_features`,
    `get_joint_image_features`); no temperature: cosine similarities and a margin."""

    config_class = VSEPPConfig

    def __init__(self, config: VSEPPConfig):
        SSLPreTrainedModel.__init__(self, config)  # the CLIP towers / logit scale are replaced below
        self.encoder = self._build_encoder()
        # official `EncoderImageFull.fc`: linear layer (with bias) from the CNN feature to the joint space
        self.visual_projection = nn.Linear(feature_dim(config.backbone_config), config.projection_dim)
        self.text_encoder, self.text_projection = self._build_text_tower(config)
        self.post_init()

    def _build_text_tower(self, config):
        if config.text_encoder == "gru":
            return (GRUTextEncoder(config.text_config.vocab_size, config.word_dim, config.projection_dim,
                                   config.num_gru_layers), nn.Identity())
        text = AutoModel.from_config(config.text_config)
        width = getattr(config.text_config, "hidden_size", None) or config.text_config.d_model
        return text, nn.Linear(width, config.projection_dim)

    def _init_weights(self, module):
        SSLPreTrainedModel._init_weights(self, module)
        if module is getattr(self, "visual_projection", None):  # official Xavier-uniform fc, zero bias
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and getattr(module, "_vse_word_embedding", False):
            init.uniform_(module.weight, -0.1, 0.1)  # official: word embeddings uniform(-0.1, 0.1)

    # -- features ---------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, return_pooled: bool = False):
        self.check_pixel_values(pixel_values)
        pooled = encode(self.encoder, pixel_values, self.config.feature_pooling)
        feats = F.normalize(pooled, dim=-1) if self.config.normalize_image_features else pooled
        joint = F.normalize(self.visual_projection(feats), dim=-1)
        return (joint, pooled) if return_pooled else joint

    def check_input_ids(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> None:
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
            got = getattr(input_ids, "shape", input_ids)
            raise ValueError(f"input_ids must be a [batch, length] tensor, got {got}")
        vocab = self.config.text_config.vocab_size
        if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
            raise ValueError(f"input_ids out of range for text vocab size {vocab} (tokenizer/model mismatch)")
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(f"input_ids length {input_ids.shape[1]} > context length {self.config.context_length}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")

    def text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Un-normalised caption embedding (the text tower's output before the L2 normalisation)."""
        if self.config.text_encoder == "gru":
            return self.text_encoder(input_ids, attention_mask)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
        return self.text_projection(pooled)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_input_ids(input_ids, attention_mask)
        return F.normalize(self.text_features(input_ids, attention_mask), dim=-1)

    @torch.no_grad()
    def zero_shot_classifier(self, tokenizer, class_names: Optional[Sequence[str]] = None,
                             templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Class embeddings `[C, D]`: normalised mean of each class's normalised prompt embeddings."""
        class_names = list(class_names or self.config.class_names)
        templates = list(templates or self.config.caption_templates)
        device = self.visual_projection.weight.device
        weights = []
        for name in class_names:
            enc = tokenizer([t.format(name) for t in templates], padding="max_length", truncation=True,
                            max_length=self.config.context_length, return_tensors="pt")
            emb = self.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            weights.append(F.normalize(emb.mean(0), dim=-1))
        return torch.stack(weights)

    # -- training ---------------------------------------------------------------------------------------
    def ranking_loss(self, image_embeds, text_embeds):
        cfg = self.config
        return losses.hinge_ranking_loss(image_embeds, text_embeds, margin=cfg.margin,
                                         max_violation=cfg.max_violation, reduction=cfg.loss_reduction)

    def forward(self, pixel_values: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None:
            raise ValueError(f"{type(self).__name__} needs both pixel_values and input_ids (use the 'image_text' "
                             "view policy)")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {input_ids.shape[0]} captions")
        if pixel_values.shape[0] < 2:
            raise ValueError("the ranking loss needs at least 2 image-caption pairs per batch (in-batch negatives)")
        image_embeds, pooled = self.encode_image(pixel_values, return_pooled=True)
        text_embeds = self.encode_text(input_ids, attention_mask)
        loss, scores = self.ranking_loss(image_embeds, text_embeds)
        with torch.no_grad():
            metrics = {"i2t_recall@1": in_batch_recall_at_1(scores),
                       "positive_similarity": (image_embeds * text_embeds).sum(1).mean()}
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=scores.detach(), metrics=metrics)
