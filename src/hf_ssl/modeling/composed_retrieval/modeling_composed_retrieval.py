"""SPRC-style composed image retrieval on the hf_ssl CLIP dual encoder: a sentence-level prompt generated from the
reference image and the relative caption, the prompted text encoder as the composed query, target retrieval with
an in-batch (DDP-gathered) contrastive loss, plus the text-only learnable-prompt loss and the prompt alignment
loss."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..backbones import encoder_feature_map
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from ..heads import Attention
from ..outputs import SSLOutput
from ..prompting import encode_text_with_prompts, token_embeddings
from .configuration_composed_retrieval import ComposedRetrievalConfig


def composed_contrastive_loss(queries: torch.Tensor, targets: torch.Tensor, logit_scale: torch.Tensor,
                              gather: bool = True):
    """One-directional InfoNCE of L2-normalised composed `queries` `[B, D]` against `targets` `[B, D]` (row i of
    each is a triplet): `CE(s * q T^T, i)`. Under DDP every process scores its queries against the targets of all
    processes (`losses.all_gather(with_grad=True)`, targets offset by `rank * B`), which equals one process on the
    global batch. Returns (loss, logits `[B, N*B]`)."""
    all_targets = losses.all_gather(targets, with_grad=True) if gather else targets
    logits = logit_scale * queries @ all_targets.t()
    b = queries.shape[0]
    offset = losses.rank() * b if gather else 0
    labels = torch.arange(b, device=queries.device) + offset
    return F.cross_entropy(logits.float(), labels), logits


class PromptGeneratorLayer(nn.Module):
    """Q-Former-style layer: queries and caption tokens share (pre-norm) self-attention (caption padding masked
    as keys), the queries alone cross-attend to the reference image tokens, then an MLP on every token."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm_q, self.norm_img, self.norm2 = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = Attention(dim, num_heads)
        self.cross_attn = Attention(dim, num_heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, num_queries: int, image_tokens: torch.Tensor,
                key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), attn_mask=key_mask)
        q = x[:, :num_queries]
        q = q + self.cross_attn(self.norm_q(q), self.norm_img(image_tokens))
        x = torch.cat([q, x[:, num_queries:]], dim=1)
        return x + self.mlp(self.norm2(x))


class SentencePromptGenerator(nn.Module):
    """Reference image tokens `[B, M, C]` + caption token embeddings `[B, L, H]` -> sentence-level prompt
    `[B, N, H]` in the text encoder's token-embedding space."""

    def __init__(self, image_dim: int, dim: int, num_queries: int, num_layers: int, num_heads: int, mlp_ratio: float,
                 max_caption_length: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.caption_pos = nn.Parameter(torch.zeros(1, max_caption_length, dim))
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.layers = nn.ModuleList([PromptGeneratorLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, image_tokens, caption_embeds, caption_mask=None):
        b, n = caption_embeds.shape[0], self.queries.shape[1]
        img = self.image_proj(image_tokens)
        x = torch.cat([self.queries.expand(b, -1, -1), caption_embeds + self.caption_pos[:, :caption_embeds.shape[1]]],
                      dim=1)
        key_mask = None
        if caption_mask is not None:
            keep = torch.cat([caption_mask.new_ones(b, n), caption_mask], dim=1).bool()
            key_mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
            key_mask = key_mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, n, img, key_mask)
        return self.out(self.norm(x[:, :n]))


class ComposedRetrievalForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    """SPRC (Bai et al., ICLR 2024) on an hf_ssl CLIP dual encoder; see the package docstring.

    `compose(pixel_values, input_ids, attention_mask)` gives composed query embeddings, `encode_image` gallery
    embeddings; `from_clip_pretrained` starts from a trained hf_ssl CLIP checkpoint."""

    config_class = ComposedRetrievalConfig

    def __init__(self, config: ComposedRetrievalConfig):
        super().__init__(config)
        from ..backbones import feature_dim

        width = getattr(config.text_config, "hidden_size", None) or config.text_config.d_model
        self.prompt_generator = SentencePromptGenerator(
            feature_dim(config.backbone_config), width, config.num_prompt_tokens, config.prompt_generator_layers,
            config.prompt_generator_heads, config.prompt_generator_mlp_ratio, config.caption_length)
        # the text-only branch's learnable prompt (official `prompt_tokens`, normal std = initializer range)
        self.prompt_tokens = nn.Parameter(torch.zeros(1, config.num_prompt_tokens, width))
        self.post_init()
        with torch.no_grad():  # the top module was initialised by the CLIP constructor already
            self.prompt_tokens.normal_(0.0, config.initializer_range)
            self.prompt_generator.queries.normal_(0.0, config.initializer_range)
            self.prompt_generator.caption_pos.normal_(0.0, config.initializer_range)
        self.apply_frozen_parameters_()

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ComposedRetrievalForSelfSupervisedPretraining) and hasattr(module, "prompt_tokens"):
            init.normal_(module.prompt_tokens, std=std)
        if isinstance(module, SentencePromptGenerator):
            init.normal_(module.queries, std=std)
            init.normal_(module.caption_pos, std=std)

    def frozen_parameter_prefixes(self) -> tuple:
        prefixes = super().frozen_parameter_prefixes()
        if self.config.freeze_image_encoder:
            prefixes += ("encoder.",)
        return prefixes

    @classmethod
    def from_clip_pretrained(cls, clip_path: str, **config_overrides):
        """Image/text encoders, projections and logit scale from a saved hf_ssl CLIP checkpoint; the prompt
        generator and learnable prompt freshly initialised."""
        from transformers import AutoModel

        import hf_ssl  # noqa: F401

        clip = AutoModel.from_pretrained(clip_path)
        if not isinstance(clip, CLIPForSelfSupervisedPretraining):
            raise ValueError(f"{clip_path} is a {type(clip).__name__}, not an hf_ssl CLIP dual encoder")
        keys = ("backbone_config", "text_config", "image_size", "num_channels", "projection_dim", "init_temperature",
                "max_logit_scale", "tokenizer_name_or_path", "tokenizer_vocab_size", "class_names",
                "caption_templates", "text_column", "feature_pooling", "image_mean", "image_std")
        kwargs = {k: getattr(clip.config, k) for k in keys}
        kwargs.update(config_overrides)
        model = cls(cls.config_class(**kwargs))
        missing, unexpected = model.load_state_dict(clip.state_dict(), strict=False)
        bad = [k for k in missing if not k.startswith(("prompt_generator.", "prompt_tokens"))]
        if unexpected or bad:
            raise ValueError(f"not a compatible CLIP checkpoint (missing {bad[:5]}, unexpected {unexpected[:5]})")
        model.apply_frozen_parameters_()
        return model

    # -- the composed query --------------------------------------------------------------------------------
    def reference_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Reference image tokens `[B, 1 + hw, C]`: the pooled feature followed by the last feature-map cells."""
        self.check_pixel_values(pixel_values)
        fmap = encoder_feature_map(self.encoder, pixel_values)
        cells = fmap.flatten(2).transpose(1, 2)
        return torch.cat([cells.mean(1, keepdim=True), cells], dim=1)

    def _check_caption(self, input_ids, attention_mask, batch):
        if input_ids is None:
            raise ValueError("composed retrieval needs the relative caption (input_ids)")
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(f"input_ids must be [{batch}, length], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.caption_length:
            raise ValueError(f"caption length {input_ids.shape[1]} > caption_length {self.config.caption_length}")
        vocab = self.config.text_config.vocab_size
        if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
            raise ValueError(f"input_ids out of range for text vocab size {vocab} (tokenizer/model mismatch)")

    def sentence_prompt(self, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
        """The sentence-level prompt `[B, N, H]` generated from the reference image and the relative caption."""
        caption = token_embeddings(self.text_encoder, input_ids)
        return self.prompt_generator(self.reference_tokens(pixel_values), caption, attention_mask)

    def _prompted_query(self, input_ids, attention_mask, prompt) -> torch.Tensor:
        pooled = encode_text_with_prompts(self.text_encoder, input_ids, attention_mask, prompt)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def compose(self, pixel_values, input_ids, attention_mask=None, return_prompt: bool = False):
        """L2-normalised composed query embeddings `[B, D]` (text encoder on `[SOS] prompt caption [EOS]`)."""
        self._check_caption(input_ids, attention_mask, pixel_values.shape[0])
        prompt = self.sentence_prompt(pixel_values, input_ids, attention_mask)
        query = self._prompted_query(input_ids, attention_mask, prompt)
        return (query, prompt) if return_prompt else query

    def text_only_query(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The text-only branch: the caption with the learnable prompt (no reference image)."""
        return self._prompted_query(input_ids, attention_mask, self.prompt_tokens)

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor = None, target_pixel_values: torch.Tensor = None,
                input_ids: torch.Tensor = None, attention_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or target_pixel_values is None:
            raise ValueError("composed retrieval needs pixel_values (reference) and target_pixel_values (use the "
                             "'composed_triplet' view policy)")
        if target_pixel_values.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} reference images but {target_pixel_values.shape[0]} targets")
        query, prompt = self.compose(pixel_values, input_ids, attention_mask, return_prompt=True)
        target, pooled = self.encode_image(target_pixel_values, return_pooled=True)
        scale = self.clamped_logit_scale()
        gather = self.config.gather_negatives
        loss_itc, logits = composed_contrastive_loss(query, target, scale, gather)
        text_only = self.text_only_query(input_ids, attention_mask)
        loss_rtc, _ = composed_contrastive_loss(text_only, target, scale, gather)
        # text prompt alignment: the generated prompt is pulled towards the (stop-gradient) learnable prompt
        loss_align = F.mse_loss(prompt.mean(1), self.prompt_tokens.detach().mean(1).expand(prompt.shape[0], -1))
        loss = loss_itc + self.config.rtc_loss_weight * loss_rtc + self.config.align_loss_weight * loss_align
        with torch.no_grad():
            b = query.shape[0]
            labels = torch.arange(b, device=logits.device) + (losses.rank() * b if gather else 0)
            acc = (logits.argmax(-1) == labels).float().mean()
        metrics = {"loss_itc": loss_itc.detach(), "loss_rtc": loss_rtc.detach(), "loss_align": loss_align.detach(),
                   "logit_scale": scale.detach(), "recall@1_in_batch": acc}
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)


__all__ = ["ComposedRetrievalForSelfSupervisedPretraining", "SentencePromptGenerator", "composed_contrastive_loss"]
