"""Prompt learning on stock transformers text encoders: run a text encoder on token embeddings with learned
(or generated) prompt vectors spliced into the sequence.

Shared by the vision-language methods that put continuous prompts into the text tower of a dual encoder:
CoOp-style learnable contexts (DenseCLIP: ``[SOS] [ctx_1 .. ctx_M] class-name tokens [EOS]``) and generated
sentence-level prompts (SPRC: ``[SOS] [prompt_1 .. prompt_N] caption tokens [EOS]``).

:func:`encode_text_with_prompts` returns the encoder's pooled output exactly as the stock forward would compute
it for the lengthened sequence: for ``CLIPTextModel`` the final-norm hidden state at the EOS position (shifted by
the prompt length) under the causal mask; for BERT-like encoders (``inputs_embeds`` support) the pooler output
(or the first token). With zero prompt vectors inserted it equals ``text_encoder(input_ids, attention_mask)``'s
pooled output.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def token_embeddings(text_encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The (position-free) token embeddings `[B, L, H]` of `input_ids`."""
    return text_encoder.get_input_embeddings()(input_ids)


def splice_prompts(embeds: torch.Tensor, attention_mask: Optional[torch.Tensor], prompts: torch.Tensor,
                   position: int = 1):
    """Insert `prompts` `[B or 1, M, H]` into `embeds` `[B, L, H]` after the first `position` tokens; the attention
    mask gets M ones there. Returns (embeds `[B, L+M, H]`, mask `[B, L+M]` or None)."""
    b = embeds.shape[0]
    if prompts.dim() != 3 or prompts.shape[-1] != embeds.shape[-1]:
        raise ValueError(f"prompts must be [B, M, {embeds.shape[-1]}], got shape {tuple(prompts.shape)}")
    prompts = prompts.expand(b, -1, -1).to(embeds.dtype)
    out = torch.cat([embeds[:, :position], prompts, embeds[:, position:]], dim=1)
    if attention_mask is not None:
        ones = attention_mask.new_ones(b, prompts.shape[1])
        attention_mask = torch.cat([attention_mask[:, :position], ones, attention_mask[:, position:]], dim=1)
    return out, attention_mask


def _clip_eos_index(text_encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Where CLIPTextModel pools (same rule as its forward: argmax of ids for legacy eos id 2, else first EOS)."""
    eos = getattr(text_encoder, "eos_token_id", None)
    if eos == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids.to(torch.int) == eos).int().argmax(dim=-1)


def encode_text_with_prompts(text_encoder: nn.Module, input_ids: torch.Tensor,
                             attention_mask: Optional[torch.Tensor], prompts: Optional[torch.Tensor],
                             position: int = 1) -> torch.Tensor:
    """Pooled output `[B, H]` of `text_encoder` on `input_ids` with `prompts` `[B or 1, M, H]` inserted after the
    first `position` tokens (after the start token by default). `prompts=None` or M = 0 is the plain forward."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    m = 0 if prompts is None else prompts.shape[1]
    max_len = getattr(text_encoder.config, "max_position_embeddings", None)
    if max_len is not None and input_ids.shape[1] + m > max_len:
        raise ValueError(f"{input_ids.shape[1]} tokens + {m} prompt vectors exceed the text encoder's context "
                         f"length {max_len}; shorten the token length or the prompt")
    embeds = token_embeddings(text_encoder, input_ids)
    if m:
        embeds, attention_mask = splice_prompts(embeds, attention_mask, prompts, position)
    if text_encoder.config.model_type == "clip_text_model":
        from transformers.masking_utils import create_causal_mask

        hidden = text_encoder.embeddings(inputs_embeds=embeds)  # adds the position embeddings
        mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None)
        out = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        last = text_encoder.final_layer_norm(out.last_hidden_state)
        eos = _clip_eos_index(text_encoder, input_ids)
        eos = torch.where(eos >= position, eos + m, eos)  # an EOS after the insertion point moves by m
        return last[torch.arange(last.shape[0], device=last.device), eos]
    out = text_encoder(inputs_embeds=embeds, attention_mask=attention_mask)
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out.last_hidden_state[:, 0]


__all__ = ["token_embeddings", "splice_prompts", "encode_text_with_prompts"]
