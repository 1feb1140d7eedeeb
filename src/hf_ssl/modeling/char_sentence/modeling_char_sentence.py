"""Character-level caption encoder (character embeddings -> bidirectional GRU -> vectorial self-attention)
trained by image-caption retrieval with the hinge ranking loss (VSE family)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import initialization as init

from ..base import SSLPreTrainedModel
from ..vse.modeling_vse import VSEPPForSelfSupervisedPretraining
from .configuration_char_sentence import CharSentenceConfig


class VectorialSelfAttention(nn.Module):
    """Attention pooling with one weight per time step *and* feature: `a = softmax_t(W2 tanh(W1 h_t))`,
    `out = sum_t a_t * h_t` (element-wise); padded steps get zero weight."""

    def __init__(self, size: int, hidden_size: int):
        super().__init__()
        self.hidden = nn.Linear(size, hidden_size)
        self.out = nn.Linear(hidden_size, size)

    def weights(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        scores = self.out(torch.tanh(self.hidden(states)))  # [B, T, D]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, :, None], float("-inf"))
        return torch.softmax(scores, dim=1)

    def forward(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return (self.weights(states, mask) * states).sum(dim=1)


class CharSentenceEncoder(nn.Module):
    """Characters -> embeddings -> (bi)GRU over the real characters (packed) -> vectorial self-attention."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = True, attention_hidden_size: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.GRU(embedding_dim, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional)
        self.attention = VectorialSelfAttention(hidden_size * (2 if bidirectional else 1), attention_hidden_size)

    def states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).clamp(min=1).long()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.clone()
        mask[:, 0] = 1  # an empty caption still attends to its first (start) token
        return self.attention(self.states(input_ids, mask), mask)


class CharSentenceForSelfSupervisedPretraining(VSEPPForSelfSupervisedPretraining):
    """Merkx & Frank's visually grounded sentence encoder: `get_text_features(input_ids)` gives the L2-normalised
    sentence embedding (character input), `get_joint_image_features` the image side of the joint space."""

    config_class = CharSentenceConfig

    def _build_text_tower(self, config):
        encoder = CharSentenceEncoder(config.text_config.vocab_size, config.char_embedding_dim, config.rnn_hidden_size,
                                      config.num_rnn_layers, config.bidirectional, config.attention_hidden_size)
        return encoder, nn.Identity()

    def _init_weights(self, module):
        SSLPreTrainedModel._init_weights(self, module)
        if module is getattr(self, "visual_projection", None):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)

    def text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask)
