"""Output dataclass shared by every self-supervised method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


@dataclass
class SSLOutput(ModelOutput):
    """Output of every `XxxForSelfSupervisedPretraining.forward`.

    Args:
        loss: scalar training loss (present when the method can compute it from the inputs).
        embeddings: pooled encoder embeddings of the first (global) view, `[batch, hidden]`; this is what
            k-NN monitoring and retrieval use.
        logits: method-specific scores (prototype scores, contrastive logits, reconstructions...).
        metrics: detached scalar tensors worth logging (loss terms, entropies, schedule values). They are
            averaged by `SSLTrainer` between logging steps without forcing a host sync every step.
    """

    loss: Optional[torch.FloatTensor] = None
    embeddings: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    metrics: Optional[dict] = None
