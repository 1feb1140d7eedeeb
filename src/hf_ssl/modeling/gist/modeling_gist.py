"""GIST on the hf_ssl CLIP dual encoder: image-specific text matching (top-k of a class's candidate texts by CLIP
similarity) and contrastive fine-tuning on the matched (image, "<class>: <text>") pairs with the CLIP loss."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from .configuration_gist import GISTConfig

CLIP_CONFIG_KEYS = ("backbone_config", "text_config", "image_size", "num_channels", "projection_dim",
                    "init_temperature", "max_logit_scale", "tokenizer_name_or_path", "tokenizer_vocab_size",
                    "class_names", "caption_templates", "feature_pooling", "image_mean", "image_std")


def match_texts_topk(image_embeds: torch.Tensor, text_embeds: torch.Tensor, k: int, logit_scale: float = 100.0,
                     text_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """GIST's matching step on L2-normalised embeddings: per image, the softmax of `logit_scale * cos` over its
    candidate texts and the indices of the `k` most probable (best first).

    `image_embeds` `[B, D]`; `text_embeds` `[T, D]` (one candidate set shared by all images, e.g. one class) or
    `[B, T, D]` (per image, e.g. each image's class pool); `text_mask` `[T]` / `[B, T]` marks real candidates
    (padding never wins). Returns `(indices [B, k], probabilities [B, k])`."""
    if image_embeds.dim() != 2:
        raise ValueError(f"image_embeds must be [B, D], got shape {tuple(image_embeds.shape)}")
    if text_embeds.dim() == 2:
        text_embeds = text_embeds.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)
        if text_mask is not None and text_mask.dim() == 1:
            text_mask = text_mask.unsqueeze(0).expand(image_embeds.shape[0], -1)
    if text_embeds.dim() != 3 or text_embeds.shape[0] != image_embeds.shape[0] \
            or text_embeds.shape[2] != image_embeds.shape[1]:
        raise ValueError(f"text_embeds must be [T, D] or [B, T, D] matching image_embeds {tuple(image_embeds.shape)}, "
                         f"got {tuple(text_embeds.shape)}")
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
    num = text_embeds.shape[1] if text_mask is None else int(text_mask.sum(1).min())
    if k < 1 or k > num:
        raise ValueError(f"k must be in [1, {num}] (the smallest number of candidates), got {k}")
    logits = logit_scale * torch.einsum("bd,btd->bt", image_embeds.float(), text_embeds.float())
    if text_mask is not None:
        logits = logits.masked_fill(~text_mask.bool(), float("-inf"))
    probs = logits.softmax(dim=-1)
    top = probs.topk(k, dim=-1)
    return top.indices, top.values


class GISTForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    """GIST (Lewis, Mu et al. 2023) on an hf_ssl CLIP dual encoder; see the package docstring.

    Training is the CLIP core's symmetric InfoNCE over (image, matched caption) pairs (`forward` inherited, the
    captions come from the `gist_text` view policy). `match_captions` is the matching step; `from_clip_pretrained`
    starts from a trained hf_ssl CLIP checkpoint; `gist_evaluate` (evaluation_gist) gives linear-probe and zero-shot
    accuracy."""

    config_class = GISTConfig

    @classmethod
    def from_clip_pretrained(cls, clip_path: str, **config_overrides) -> "GISTForSelfSupervisedPretraining":
        """All weights (encoders, projections, logit scale) from a saved hf_ssl CLIP checkpoint (a folder or Hub id
        of `CLIPForSelfSupervisedPretraining`); `config_overrides` set GIST options (e.g. `num_captions`)."""
        from transformers import AutoModel

        import hf_ssl  # noqa: F401  (registers the Auto classes)

        clip = AutoModel.from_pretrained(clip_path)
        if not isinstance(clip, CLIPForSelfSupervisedPretraining):
            raise ValueError(f"{clip_path} is a {type(clip).__name__}, not an hf_ssl CLIP dual encoder")
        kwargs = {key: getattr(clip.config, key) for key in CLIP_CONFIG_KEYS}
        kwargs.update(config_overrides)
        model = cls(cls.config_class(**kwargs))
        missing, unexpected = model.load_state_dict(clip.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"not a compatible CLIP checkpoint (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.apply_frozen_parameters_()
        return model

    def _tokenize(self, tokenizer, texts: Sequence[str]):
        enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.config.context_length,
                        return_tensors="pt")
        device = self.logit_scale.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    @torch.no_grad()
    def match_captions(self, pixel_values: torch.Tensor, candidates: Sequence[Sequence[str]], tokenizer=None,
                       k: Optional[int] = None, batch_texts: int = 256) -> List[List[Tuple[str, float]]]:
        """GIST's matching step with this dual encoder as the matcher (the paper: a pretrained CLIP): for image i,
        the `k` (default `config.match_top_k`) texts of `candidates[i]` (its class's generated texts) with the
        highest `softmax(match_logit_scale * cos)`, best first, as `(text, probability)` pairs.

        Run it once over a dataset with a pretrained matcher and store the texts as the dataset's text column."""
        from ...training.text import load_tokenizer

        if len(candidates) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {len(candidates)} candidate lists")
        cfg = self.config
        k = int(k or cfg.match_top_k)
        tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                                context_length=cfg.context_length)
        was_training = self.training
        self.eval()
        try:
            images = self.encode_image(pixel_values.to(self.logit_scale.device))
            cache: Dict[str, torch.Tensor] = {}
            unique = sorted({t for texts in candidates for t in texts})
            for start in range(0, len(unique), batch_texts):
                chunk = unique[start:start + batch_texts]
                emb = self.encode_text(*self._tokenize(tokenizer, chunk))
                cache.update(zip(chunk, emb))
            out = []
            for i, texts in enumerate(candidates):
                if len(texts) < k:
                    raise ValueError(f"image {i} has {len(texts)} candidate texts, fewer than k={k}")
                emb = torch.stack([cache[t] for t in texts])
                idx, prob = match_texts_topk(images[i: i + 1], emb, k, cfg.match_logit_scale)
                out.append([(texts[int(j)], float(p)) for j, p in zip(idx[0], prob[0])])
        finally:
            self.train(was_training)
        return out


__all__ = ["GISTForSelfSupervisedPretraining", "match_texts_topk"]
