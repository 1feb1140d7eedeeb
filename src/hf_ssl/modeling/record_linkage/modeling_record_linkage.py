"""Multimodal record linkage (CLIPPINGS): pooled image+text record embeddings, supervised-contrastive linkage of
noisy observations of the same entity + CLIP image-text alignment."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss
from ..outputs import SSLOutput
from .configuration_record_linkage import RecordLinkageConfig


def supervised_contrastive_loss(embeddings: torch.Tensor, entity_ids: torch.Tensor, temperature: float = 0.1,
                                gather: bool = True) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on L2-normalised `embeddings` `[N, D]` with integer
    `entity_ids` `[N]`: for every anchor, `-mean_{p in P(i)} log( exp(s_ip / T) / sum_{a != i} exp(s_ia / T) )`
    where P(i) are the other rows of the same entity; averaged over anchors that have a positive. Under DDP anchors
    are local and candidates are the gathered rows of all processes (with gradient), so N processes with equal
    local batches give the single-process loss and (after DDP averaging) gradients."""
    n = embeddings.shape[0]
    offset = losses.rank() * n if gather else 0
    all_emb = losses.all_gather(embeddings, with_grad=True) if gather else embeddings
    all_ids = losses.all_gather(entity_ids) if gather else entity_ids
    logits = embeddings @ all_emb.t() / temperature
    self_mask = F.one_hot(torch.arange(n, device=embeddings.device) + offset, all_emb.shape[0]).bool()
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (entity_ids[:, None] == all_ids[None, :]) & ~self_mask
    counts = positive.sum(1)
    has_pos = counts > 0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(1)) / counts.clamp(min=1)
    # anchors without positives are left out (mean over the others; a global mean under DDP needs equal counts,
    # which holds for the two-observation batches this model trains on)
    return per_anchor[has_pos].mean() if bool(has_pos.any()) else embeddings.sum() * 0.0


class RecordLinkageForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    config_class = RecordLinkageConfig

    # -- record embeddings -------------------------------------------------------------------------------
    def pool_record(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """CLIPPINGS' pooled embedding: weighted mean of the normalised image and text embeddings, normalised."""
        w = self.config.image_weight
        return F.normalize(w * image_embeds + (1 - w) * text_embeds, dim=-1)

    def encode_record(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None, return_parts: bool = False):
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} record images but {input_ids.shape[0]} record texts")
        image, pooled = self.encode_image(pixel_values, return_pooled=True)
        text = self.encode_text(input_ids, attention_mask)
        record = self.pool_record(image, text)
        return (record, image, text, pooled) if return_parts else record

    @torch.no_grad()
    def get_record_features(self, pixel_values, input_ids, attention_mask=None) -> torch.Tensor:
        """L2-normalised pooled image+text record embeddings `[B, projection_dim]` (linkage by cosine similarity)."""
        return self.encode_record(pixel_values, input_ids, attention_mask)

    # -- training ---------------------------------------------------------------------------------------
    @staticmethod
    def _as_views(value, name):
        if torch.is_tensor(value):
            return [value]
        if isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
            return list(value)
        raise ValueError(f"{name} must be a tensor or a list of tensors (one per observation), got {type(value)}")

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, entity_ids: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> SSLOutput:
        if pixel_values is None or input_ids is None:
            raise ValueError("record linkage needs pixel_values and input_ids (use the 'record_pair' view policy)")
        images = self._as_views(pixel_values, "pixel_values")
        texts = self._as_views(input_ids, "input_ids")
        masks = self._as_views(attention_mask, "attention_mask") if attention_mask is not None else [None] * len(texts)
        if not (len(images) == len(texts) == len(masks)):
            raise ValueError(f"got {len(images)} image views, {len(texts)} text views and {len(masks)} masks: each "
                             "observation needs an image and a text")
        b = images[0].shape[0]
        if any(v.shape[0] != b for v in images + texts):
            raise ValueError("every observation must hold the same records (equal batch sizes)")
        cfg = self.config
        if entity_ids is None:  # instance-level linkage: the observations of one row are one entity
            entity_ids = torch.arange(b, device=images[0].device) + losses.rank() * b
        elif entity_ids.shape != (b,):
            raise ValueError(f"entity_ids must have shape ({b},), got {tuple(entity_ids.shape)}")
        scale = self.clamped_logit_scale()
        records, alignment, pooled0, logits = [], 0.0, None, None
        for x, ids, mask in zip(images, texts, masks):
            record, image, text, pooled = self.encode_record(x, ids, mask, return_parts=True)
            records.append(record)
            align, lg = clip_contrastive_loss(image, text, scale)
            alignment = alignment + align / len(images)
            if pooled0 is None:
                pooled0, logits = pooled, lg
        metrics = {"logit_scale": scale.detach(), "alignment_loss": alignment.detach()}
        loss = cfg.alignment_weight * alignment
        if len(records) > 1 and cfg.linkage_weight > 0:
            link = supervised_contrastive_loss(torch.cat(records), entity_ids.repeat(len(records)),
                                               cfg.linkage_temperature)
            loss = loss + cfg.linkage_weight * link
            with torch.no_grad():
                sims = records[0] @ losses.all_gather(records[1]).t()
                all_ids = losses.all_gather(entity_ids)
                metrics.update(linkage_loss=link.detach(),
                               link_recall_at_1=(all_ids[sims.argmax(1)] == entity_ids).float().mean())
        elif cfg.linkage_weight > 0 and len(records) == 1:
            raise ValueError("the linkage loss needs at least two observations per record (lists of 2 views)")
        return SSLOutput(loss=loss, embeddings=pooled0.detach(), logits=logits.detach(), metrics=metrics)
